"""The DMD-iteration benchmark (`senseflow bench step`): the project's own `Distiller.step`, built as a
training run builds it and timed on the digits world (a benchmark, not a test).

Each timed run is a run-config preset with optional overrides (by default digits-senseflow, digits-dmd2,
and digits-senseflow with gan.kind=none: what G, F and the teacher cost without D). For each run and
thread count n, as `senseflow.train.train` does it:

    cfg = senseflow.config.resolve(preset, overrides + ["train.threads=n"] (+ ["train.batch_size=B"]))
    components = world_components(cfg, world)     # the world given, not built again
    torch.set_num_threads(n); torch.manual_seed(cfg.train.seed)
    distiller = Distiller(cfg, bundle.teacher, bundle.text_encoder, bundle.codec, bundle.sigma_table,
                          make_discriminator=components.make_discriminator)
    for it in range(warmup + periods * ttur):
        batch = components.data.batch(it, cfg.train.batch_size, step_rng(cfg.train.seed, it, stream=2))
        distiller.step(it, batch)                 # timed once it >= warmup

The warm-up is `warmup` iterations (allocator, first-call paths; iteration 0 is a generator one), then
max(2, periods) full TTUR periods are timed. Reported, in milliseconds (means):
`generator_ms` over the generator iterations (it % ttur == 0: G's update with everything the config turns
on, DMD, ISG, the GAN term, IDA, then F's and D's updates), `critic_ms` over the critic-only iterations (G
forward without gradient, then F and D), `ttur_mean_ms` = (generator_ms + (ttur - 1) * critic_ms) / ttur,
the mean cost of one iteration of a run, and `data_ms`, drawing the batch (not in the others). Nothing
else of a run is in the timing: no logging, checkpoints, sample grids or evaluation. Timings on a shared
machine are noisy; they are figures, never test assertions.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch

DEFAULT_RUNS = ("digits-senseflow", "digits-dmd2", "digits-senseflow gan.kind=none")


@contextmanager
def num_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def parse_run(spec: str) -> tuple[str, list[str]]:
    """'digits-senseflow gan.kind=none' -> ('digits-senseflow', ['gan.kind=none'])."""
    parts = spec.split()
    if not parts:
        raise ValueError("an empty bench run; write a preset name, then optional overrides, e.g. "
                         "'digits-senseflow gan.kind=none'")
    return parts[0], parts[1:]


def run_config(spec: str, threads: int, batch_size: int | None = None):
    """The RunConfig a training run of `spec` would use, with train.threads (and train.batch_size) set."""
    from senseflow import config as config_mod

    preset, overrides = parse_run(spec)
    extra = [f"train.threads={threads}"] + ([f"train.batch_size={batch_size}"] if batch_size else [])
    cfg = config_mod.resolve(preset, overrides + extra)
    if cfg.model.family != "digits":
        raise config_mod.ConfigError(f"bench run {spec!r} is a {cfg.model.family} config (model.family); the "
                                     "digits world times digits configs only, e.g. digits-senseflow")
    return cfg


def time_dmd_iteration(world, spec: str = "digits-senseflow", *, threads: int = 1, batch_size: int | None = None,
                       periods: int = 10, warmup: int = 5) -> dict:
    """Time `Distiller.step` of the run `spec` (a preset, then optional overrides) on `world`: a dict of
    plain numbers and strings (see the module docstring)."""
    from senseflow.distill import Distiller, step_rng
    from senseflow.worlds.digits.components import world_components

    cfg = run_config(spec, threads, batch_size)
    ttur = cfg.optim.ttur
    timed = max(2, periods) * ttur
    gen_ms: list[float] = []
    critic_ms: list[float] = []
    data_ms: list[float] = []
    with num_threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        components = world_components(cfg, world)
        bundle = components.bundle
        distiller = Distiller(cfg, bundle.teacher, bundle.text_encoder, bundle.codec, bundle.sigma_table,
                              make_discriminator=components.make_discriminator)
        for it in range(warmup + timed):
            t0 = time.perf_counter()
            batch = components.data.batch(it, cfg.train.batch_size, step_rng(cfg.train.seed, it, stream=2))
            t1 = time.perf_counter()
            distiller.step(it, batch)
            t2 = time.perf_counter()
            if it < warmup:
                continue
            data_ms.append(1000 * (t1 - t0))
            (gen_ms if it % ttur == 0 else critic_ms).append(1000 * (t2 - t1))
    g = statistics.fmean(gen_ms)
    c = statistics.fmean(critic_ms) if critic_ms else g  # ttur = 1: every iteration is a generator one
    disc = distiller.discriminator
    preset, overrides = parse_run(spec)
    return {
        "timing": "senseflow.distill.Distiller.step", "run": spec, "preset": preset, "overrides": overrides,
        "method": cfg.method, "gan": cfg.gan.kind, "discriminator": type(disc).__name__ if disc is not None else "none",
        "threads": threads, "batch_size": cfg.train.batch_size, "ttur": ttur, "warmup": warmup,
        "generator_iterations": len(gen_ms), "critic_iterations": len(critic_ms),
        "generator_ms": round(g, 1), "critic_ms": round(c, 1), "ttur_mean_ms": round((g + (ttur - 1) * c) / ttur, 1),
        "data_ms": round(statistics.fmean(data_ms), 2),
    }


def time_dmd_iterations(world, runs=DEFAULT_RUNS, threads=(1,), batch_size: int | None = 64, periods: int = 10,
                        warmup: int = 5) -> list[dict]:
    """`time_dmd_iteration` for every thread count and every run."""
    return [time_dmd_iteration(world, spec, threads=n, batch_size=batch_size, periods=periods, warmup=warmup)
            for n in threads for spec in runs]
