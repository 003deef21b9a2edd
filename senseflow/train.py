"""The training loop around a `Distiller`: devices, checkpoints with exact resume, divergence
detection, metrics, sample grids and a progress bar.

Reads top to bottom: `train(cfg, run_dir, components)`.
Exact resume: a checkpoint holds the weights, the optimizers and the loop's own state (the logging window
still open and the divergence count), and lines logged after it are dropped on resume, so a run killed at
any moment and resumed ends with the same weights and the same metrics.jsonl lines (all but `time`) as
one that never stopped (tests/test_resume.py).
Writes the run folder's files through senseflow.run_folder (status.json, metrics.jsonl,
samples/iter_XXXXXXX.png) and senseflow.checkpoint (checkpoints/iter_XXXXXXX/).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from senseflow import checkpoint
from senseflow import config as config_mod
from senseflow import precision
from senseflow.config import RunConfig
from senseflow.distill import Distiller, finite, step_rng
from senseflow.run_folder import METRICS_FILE, PREVIEW_SIDE, State, save_png, write_status
from senseflow.world import Components


@dataclass
class TrainResult:
    state: State                     # COMPLETED (all iterations done) | DIVERGED | STOPPED
    iteration: int                   # iterations done
    run_dir: Path
    distiller: Distiller
    reason: str = ""
    seconds: float = 0.0


# ----------------------------------------------------------------------------- files
def _metric_lines_up_to(path: Path, iteration: int) -> list[str]:
    """metrics.jsonl lines logged at or before `iteration`; a line cut short by a kill is dropped."""
    keep = []
    for ln in path.read_text().splitlines():
        try:
            row = json.loads(ln)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("iteration", 0) <= iteration:
            keep.append(ln)
    return keep


# ----------------------------------------------------------------------------- samples
def sample_grid(distiller: Distiller, components: Components, cfg: RunConfig, n_per_prompt: int = 8) -> np.ndarray | None:
    """uint8 image (H, W, C): one row per sample prompt, fixed seeds, the configured sampler."""
    if components.render is None or not components.sample_prompts:
        return None
    prompts = [p for p in components.sample_prompts for _ in range(n_per_prompt)]
    cond = components.bundle.text_encoder.encode(prompts).to(distiller.device)
    rng = torch.Generator().manual_seed(cfg.eval.seed)
    noise = torch.randn((len(prompts), *components.bundle.latent_shape), generator=rng).to(distiller.device)
    x0 = distiller.sample(cond, noise, cfg.generator.sampler, rng=rng)
    imgs = components.render(x0)  # (N, H, W, C)
    from torchvision.utils import make_grid

    grid = make_grid(torch.from_numpy(imgs).permute(0, 3, 1, 2), nrow=n_per_prompt, padding=0)
    return grid.permute(1, 2, 0)[..., :imgs.shape[-1]].numpy()  # make_grid repeats one channel to three


# ----------------------------------------------------------------------------- the loop
def train(cfg: RunConfig, run_dir: str | Path, components: Components, *, run_id: str = "",
          progress: bool = True, stop_after: int | None = None, device: str | None = None,
          evaluate_at: Callable[[Distiller, int], Any] | None = None) -> TrainResult:
    """Train (or resume) the run in `run_dir` up to cfg.train.iterations.

    stop_after: stop after this many iterations in this call (for tests of resume and for preemption).
    evaluate_at(distiller, iteration): the evaluation every train.eval_every iterations, on every rank
    (senseflow.run passes senseflow.evaluate's; the loop itself knows no metric). Required when
    train.eval_every is set.
    """
    if cfg.train.eval_every and evaluate_at is None:
        raise ValueError("train.eval_every is set but no evaluate_at was given: train through senseflow.run.execute")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = run_id or run_dir.name
    saved = run_dir / "config.yaml"
    if saved.is_file():
        previous = config_mod.build(config_mod.load_yaml(saved))
        if previous.identity_hash() != cfg.identity_hash():
            raise config_mod.ConfigError(f"{saved} holds a different config than this run's; use a new run folder "
                                         "or delete the old one")
    from senseflow.parallel import launch_rank

    main = launch_rank() == 0
    if main:
        config_mod.save(cfg, saved)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    from senseflow.allocator import keep_freed_memory

    keep_freed_memory()  # reuse freed activation memory instead of faulting in fresh pages every iteration
    torch.manual_seed(cfg.train.seed)

    from accelerate import Accelerator

    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda:
        from senseflow import cuda_kernels

        cuda_kernels.configure()
    trackers = list(cfg.train.trackers)
    for name in trackers:
        import importlib.util

        if importlib.util.find_spec(name) is None:
            from senseflow.errors import UserError

            raise UserError(f"train.trackers includes {name!r} but the package is not installed; "
                            f"pip install {name} or remove it from train.trackers")
    accelerator = Accelerator(cpu=not use_cuda, mixed_precision=cfg.train.mixed_precision if use_cuda else "no",
                              log_with=trackers or None, project_dir=str(run_dir))
    if trackers:
        accelerator.init_trackers(f"{cfg.output.grid}-{run_id}", config={"name": cfg.name, "seed": cfg.train.seed})
    from senseflow import parallel as parallel_mod

    ctx = parallel_mod.setup(cfg.train.parallel, cfg.train.shard_group, accelerator.device,
                             cfg.train.mixed_precision if use_cuda else "no")
    main = ctx.is_main

    def prepare(d: Distiller) -> None:  # before the optimizers exist: checkpoint, shard, place
        if use_cuda and cfg.train.gradient_checkpointing:
            d.generator.enable_gradient_checkpointing()
            d.fake_score.enable_gradient_checkpointing()
        parallel_mod.shard_distiller(d, ctx)  # several processes: shards land on this rank's device
        d.to(accelerator.device)

    bundle = components.bundle
    distiller = Distiller(cfg, bundle.teacher, bundle.text_encoder, bundle.codec, bundle.sigma_table,
                          make_discriminator=components.make_discriminator, prepare=prepare, parallel=ctx)

    start = 0
    # the logging window and the divergence count are part of the state: a resumed run logs the same lines
    window: dict[str, list[float]] = {}
    bad = 0
    ckpts = checkpoint.checkpoints(run_dir)
    if ckpts:
        checkpoint.check_same_optimizer(run_dir, cfg, distiller)
        start = checkpoint.load(ckpts[-1], distiller)
        saved_loop = checkpoint.trainer_state(ckpts[-1])
        window = {k: [float(x) for x in v] for k, v in (saved_loop.get("log_window") or {}).items()}
        bad = int(saved_loop.get("bad_iterations") or 0)
    metrics_path = run_dir / METRICS_FILE
    compute = (f"{cfg.train.mixed_precision} autocast" if use_cuda and cfg.train.mixed_precision != "no"
               else "stored dtype")
    cautions = precision.step_warnings(distiller, cfg)
    if main:
        for line in cautions:
            print(f"warning: {line}", file=sys.stderr, flush=True)
        for stale in (run_dir / "checkpoints").glob(".tmp-*"):  # a write that a kill cut short
            shutil.rmtree(stale, ignore_errors=True)
        write_status(run_dir, State.RUNNING, cfg, run_id=run_id, iteration=start, started=time.time(), reason="",
                     resumed_from=start or None, device=str(accelerator.device), processes=ctx.world_size,
                     parallel=ctx.strategy, precision=precision.describe(distiller, cfg, compute),
                     optimizer=distiller.optimizer_info, warnings=cautions,
                     **({"tiny_mode": cfg.tiny_changes} if cfg.tiny_changes else {}))
        if start == 0 and metrics_path.exists():
            metrics_path.unlink()
        elif metrics_path.exists():  # drop lines logged after the checkpoint we resume from
            keep = _metric_lines_up_to(metrics_path, start)
            metrics_path.write_text("".join(k + "\n" for k in keep))

    end = cfg.train.iterations if stop_after is None else min(cfg.train.iterations, start + stop_after)
    state, reason = State.COMPLETED, ""
    t0 = time.time()

    def loop_state() -> dict[str, Any]:
        return {"log_window": window, "bad_iterations": bad}
    from senseflow.progress import bar as tqdm  # plain lines when not on a terminal

    bar = tqdm(range(start, end), initial=start, total=cfg.train.iterations, disable=not (progress and main),
               desc=f"{cfg.name} seed {cfg.train.seed}", dynamic_ncols=True, leave=False)
    it = start
    with open(metrics_path, "a") if main else open(os.devnull, "w") as mlog:
        for it in bar:
            batch = components.data.batch(it, cfg.train.batch_size, step_rng(cfg.train.seed, it, stream=2,
                                                                                   rank=ctx.rank))
            batch = batch.to(accelerator.device)
            with accelerator.autocast():
                m = distiller.step(it, batch)
            m = ctx.mean_metrics(m)  # every rank sees the same losses and takes the same divergence decision
            norms = [m.get(k, 0.0) for k in ("grad_norm_g", "grad_norm_f", "grad_norm_d")]
            if not finite(m) or max(norms) > cfg.train.divergence_grad_norm:
                bad += 1
                if bad >= cfg.train.divergence_patience:
                    state = State.DIVERGED
                    reason = (f"iteration {it}: non-finite loss or gradient norm above "
                              f"{cfg.train.divergence_grad_norm:g} for {bad} iterations ({_short(m)})")
                    break
            else:
                bad = 0
            for k, v in m.items():
                window.setdefault(k, []).append(v)
            if (it + 1) % cfg.train.log_every == 0 or it + 1 == cfg.train.iterations:
                row = {"iteration": it + 1, "time": round(time.time() - t0, 3)}
                row.update({k: float(np.mean([x for x in v if math.isfinite(x)] or [float("nan")]))
                            for k, v in window.items()})
                mlog.write(json.dumps(row) + "\n")
                mlog.flush()
                if trackers and main:
                    accelerator.log({k: v for k, v in row.items() if k != "iteration"}, step=row["iteration"])
                bar.set_postfix({k: f"{row[k]:.3g}" for k in ("loss_dmd", "loss_fake", "loss_isg", "loss_disc") if k in row})
                window.clear()
            done = it + 1
            if done % cfg.train.checkpoint_every == 0 and done < cfg.train.iterations:
                checkpoint.save(run_dir, distiller, done, cfg.train.keep_checkpoints, loop_state())
                if main:
                    write_status(run_dir, State.RUNNING, cfg, run_id=run_id, iteration=done)
            if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done < cfg.train.iterations:
                evaluate_at(distiller, done)
            if cfg.train.sample_every and done % cfg.train.sample_every == 0:
                grid = sample_grid(distiller, components, cfg)  # every rank: G's forwards are collective
                if grid is not None and main:
                    save_png(run_dir / "samples" / f"iter_{done:07d}.png", grid, min_side=PREVIEW_SIDE)
        else:
            it = end - 1
    bar.close()
    if trackers and main:
        accelerator.end_training()
    elapsed = time.time() - t0
    done = it + 1 if state != State.DIVERGED else it
    if state == State.DIVERGED:
        if main:
            write_status(run_dir, State.DIVERGED, cfg, run_id=run_id, reason=reason, iteration=done,
                         finished=time.time())
        ctx.barrier()
        return TrainResult(State.DIVERGED, done, run_dir, distiller, reason, elapsed)
    if done < cfg.train.iterations:
        checkpoint.save(run_dir, distiller, done, cfg.train.keep_checkpoints, loop_state())
        if main:
            write_status(run_dir, State.STOPPED, cfg, run_id=run_id, iteration=done)
        ctx.barrier()
        return TrainResult(State.STOPPED, done, run_dir, distiller, "", elapsed)
    checkpoint.save(run_dir, distiller, done, cfg.train.keep_checkpoints, {"final": True})
    grid = sample_grid(distiller, components, cfg)
    if grid is not None and main:
        save_png(run_dir / "samples" / "final.png", grid, min_side=PREVIEW_SIDE)
    if main:
        write_status(run_dir, State.TRAINED, cfg, run_id=run_id, iteration=done, train_seconds=round(elapsed, 2))
    ctx.barrier()
    return TrainResult(State.COMPLETED, done, run_dir, distiller, "", elapsed)


def _short(m: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in m.items() if k.startswith(("loss", "grad")))
