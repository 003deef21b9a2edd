"""Benchmarks against the physical limit (`senseflow bench [NAME]`): figures, never tests.

    iteration  one training iteration against the network passes it cannot avoid, each timed alone, and
               what the paper's additions cost (IDA, ISG, the VFM discriminator, backward simulation)
               (senseflow.bench.iteration, senseflow.bench.passes)
    sampling   the 4-step student against the teacher at 50 guided steps (senseflow.bench.sampling)
    metrics    images per second of each evaluation metric's network (senseflow.bench.metrics)
    step       Distiller.step on the digits world: G step, critic-only, TTUR mean (senseflow.bench.step)
    scaling    iteration time and peak memory against batch and image size (senseflow.bench.scaling)
    harness    a local grid of N cells against N separate `senseflow train` processes (senseflow.bench.harness)

iteration and sampling run on the digits world and on mid-size random-init SD3 and FLUX (senseflow.bench.setups) and writes
results/bench/<name>.json with the date, machine, thread count, torch version, commit and load average
(senseflow.bench.record, senseflow.bench.suite).
"""
