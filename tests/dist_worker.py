"""Run by tests/test_distributed.py under `torch.distributed.run` (2 CPU processes, gloo): train a tiny
preset in a run folder. Not a test module itself.

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_worker.py RUN_DIR PRESET MODE [STOP_AFTER] -- OVERRIDES...

MODE "same": every rank gets rank 0's data and noise streams, so the averaged gradients equal one
process's and the weights must match a one-process run; "own": the normal per-rank streams;
"grads": one iteration on each rank's own data with every learning rate 0, capturing the gradients each
optimizer steps with; rank 0 also runs the same iteration unsharded for rank 0's and rank 1's data and
writes RUN_DIR/grads.json with the largest difference between the synchronised gradients and the
average of the two unsharded ones (and how much those two differ from each other). The process group's
backend is SENSEFLOW_DIST_BACKEND: gloo (default, CPU processes) or nccl (one GPU per process, for
scripts/gpu-smoke.sh).
"""

import json
import os
from pathlib import Path


import sys

import torch


def main() -> None:
    args = sys.argv[1:]
    sep = args.index("--") if "--" in args else len(args)
    run_dir, preset, mode, *rest = args[:sep]
    overrides = args[sep + 1:]
    stop_after = int(rest[0]) if rest else None
    torch.set_num_threads(1)
    if mode == "same":
        import senseflow.distill as distill
        import senseflow.train as train_mod

        plain = distill.step_rng

        def rank_blind(seed, iteration, stream=0, rank=0):
            return plain(seed, iteration, stream, 0)

        distill.step_rng = rank_blind
        train_mod.step_rng = rank_blind
    from senseflow import config as C
    from senseflow.components import build_components
    from senseflow.train import train

    cfg = C.resolve(preset, overrides)
    if mode == "grads":
        compare_gradients(cfg, Path(run_dir))
        return
    result = train(cfg, run_dir, build_components(cfg), progress=False, stop_after=stop_after)
    print(f"rank {result.distiller.parallel.rank}/{result.distiller.parallel.world_size}: {result.state} "
          f"{result.iteration}", flush=True)


def _capture(distiller, into: dict) -> None:
    """Wrap each optimizer's step to record the (full) gradients it is about to apply, by parameter name."""
    parts = [("generator", distiller.generator, distiller.opt_g), ("fake_score", distiller.fake_score, distiller.opt_f)]
    if distiller.discriminator is not None:
        parts.append(("discriminator", distiller.discriminator, distiller.opt_d))
    for name, module, opt in parts:
        for group in opt.param_groups:
            group["lr"] = 0.0

        def step(*a, _name=name, _module=module, _orig=opt.step, **k):
            into[_name] = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().clone()
                           for n, p in _module.named_parameters() if p.grad is not None}
            return _orig(*a, **k)

        opt.step = step


def compare_gradients(cfg, out: Path) -> None:
    from accelerate import Accelerator

    from senseflow import parallel
    from senseflow.components import build_components
    from senseflow.distill import Distiller, step_rng

    backend = os.environ.get("SENSEFLOW_DIST_BACKEND", "gloo")
    if backend not in ("gloo", "nccl"):
        raise SystemExit(f"SENSEFLOW_DIST_BACKEND={backend!r}: use gloo or nccl")
    if backend == "nccl":  # fp32 kernels on the GPU, so the sharded gradients compare with the CPU references
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    accelerator = Accelerator(cpu=backend == "gloo")
    ctx = parallel.setup(cfg.train.parallel, cfg.train.shard_group, accelerator.device)
    assert torch.distributed.get_backend() == backend, torch.distributed.get_backend()
    comps = build_components(cfg, progress=False)
    b = comps.bundle

    def make(sharded: bool, rank: int) -> Distiller:
        torch.manual_seed(cfg.train.seed)  # D's heads: the same initial weights everywhere
        return Distiller(cfg, b.teacher, b.text_encoder, b.codec, b.sigma_table,
                         make_discriminator=comps.make_discriminator, rank=rank,
                         prepare=(lambda d: parallel.shard_distiller(d, ctx)) if sharded else None,
                         parallel=ctx if sharded else None)

    def batch(rank: int):
        return comps.data.batch(0, cfg.train.batch_size, step_rng(cfg.train.seed, 0, stream=2, rank=rank))

    # rank 0's unsharded references first (sharding later changes modules shared through `comps` in place)
    per_rank = []
    if ctx.is_main:
        for r in range(ctx.world_size):
            ref = make(False, r)  # a fresh unsharded copy per rank: same seed, same initial weights
            grads: dict = {}
            _capture(ref, grads)
            ref.step(0, batch(r))
            per_rank.append(grads)
    ctx.barrier()
    synced: dict = {}
    sharded = make(True, ctx.rank)
    _capture(sharded, synced)
    sharded.step(0, batch(ctx.rank))
    if ctx.is_main:
        report = {}
        for part, got in synced.items():
            want = {n: sum(g[part][n] for g in per_rank) / len(per_rank) for n in got}
            scale = max(float(w.abs().max()) for w in want.values())
            report[part] = {
                "params": len(got),
                "same_names": sorted(got) == sorted(per_rank[0][part]),
                "max_abs_diff": max(float((got[n] - want[n]).abs().max()) for n in got),
                "ranks_differ_by": max(float((per_rank[0][part][n] - per_rank[1][part][n]).abs().max()) for n in got),
                "scale": scale,
            }
        (out).mkdir(parents=True, exist_ok=True)
        (out / "grads.json").write_text(json.dumps(report, indent=1))
    ctx.barrier()


if __name__ == "__main__":
    main()
