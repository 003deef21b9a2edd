"""The training loop around a `Distiller`: devices, checkpoints with exact resume, divergence
detection, metrics, sample grids and a progress bar.

Reads top to bottom: `train(cfg, run_dir, components)`.
Exact resume: a checkpoint holds the weights, the optimizers and the loop's own state (the logging window
still open and the divergence count), and lines logged after it are dropped on resume, so a run killed at
any moment and resumed ends with the same weights and the same metrics.jsonl lines (all but `time`) as
one that never stopped (tests/test_resume.py).
Run folder (see evals.store): config.yaml, status.json, metrics.jsonl, checkpoints/iter_XXXXXXX/,
samples/iter_XXXXXXX.png.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from senseflow import config as config_mod
from senseflow import precision
from senseflow.config import RunConfig
from senseflow.distill import Batch, Distiller, finite, step_generator
from senseflow.world import Components

CHECKPOINT_PREFIX = "iter_"
# Tests only: seconds save_checkpoint sleeps between writing a checkpoint's temp folder and renaming it, so
# that a kill -9 test can land inside a checkpoint write (tests/test_resume.py). Unset in real runs.
PAUSE_ENV = "SENSEFLOW_TEST_CHECKPOINT_PAUSE"


@dataclass
class TrainResult:
    state: str                       # completed | diverged | stopped
    iteration: int                   # iterations done
    run_dir: Path
    distiller: Distiller
    reason: str = ""
    seconds: float = 0.0


# ----------------------------------------------------------------------------- files
def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def checkpoints(run_dir: Path) -> list[Path]:
    d = run_dir / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
                  and (p / "trainer.json").is_file())


def save_checkpoint(run_dir: Path, distiller: Distiller, iteration: int, keep: int, extra: dict | None = None) -> Path:
    """Atomic: written into a temp folder, then renamed; older ones beyond `keep` are removed. Full
    (unsharded) tensors: with several processes every rank takes part in gathering them and rank 0 writes."""
    final = run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{iteration:07d}"
    weights = distiller.trainable_state()
    optimizers = distiller.optimizer_state()
    ctx = distiller.parallel
    if ctx.is_main:
        tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            for name, sd in weights.items():
                save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(tmp / f"{name}.safetensors"))
            torch.save(optimizers, tmp / "optimizers.pt")
            (tmp / "trainer.json").write_text(json.dumps({"iteration": iteration, "processes": ctx.world_size,
                                                          **(extra or {})}))
        except BaseException as e:
            # a full disk or read-only folder: drop the partial copy (the last checkpoint stays as it was)
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) or not isinstance(e, Exception):
                raise
            # safetensors and torch.save report failed writes as their own error types, not OSError
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OSError(errno.EIO, f"writing the checkpoint failed ({type(e).__name__}: {text})", str(tmp)) from e
        pause = float(os.environ.get(PAUSE_ENV) or 0)
        if pause > 0:  # tests only: widen the window in which a kill lands inside the write
            time.sleep(pause)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    ctx.barrier()
    return final


def load_checkpoint(path: Path, distiller: Distiller) -> int:
    """Every rank reads the full tensors; sharded modules keep their own shards of them."""
    where = "cpu" if distiller.parallel.distributed else str(distiller.device)
    state = {}
    for name in ("generator", "fake_score", "discriminator"):
        f = path / f"{name}.safetensors"
        if f.is_file():
            state[name] = load_file(str(f), device=where)
    distiller.load_trainable_state(state)
    distiller.load_optimizer_state(torch.load(path / "optimizers.pt", map_location=where, weights_only=True))
    return int(json.loads((path / "trainer.json").read_text())["iteration"])


def trainer_state(path: Path) -> dict[str, Any]:
    """The loop's own state saved with a checkpoint (trainer.json): iteration, the open logging window, ..."""
    return json.loads((Path(path) / "trainer.json").read_text())


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


def load_generator_weights(path: Path) -> dict[str, torch.Tensor]:
    """The student's weights from a checkpoint folder (safetensors, no pickle)."""
    return load_file(str(Path(path) / "generator.safetensors"))


def code_version() -> str:
    import subprocess

    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def write_status(run_dir: Path, cfg: RunConfig, run_id: str, **fields) -> None:
    path = run_dir / "status.json"
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update({"run_id": run_id, "grid": cfg.output.grid, "variant": cfg.name, "seed": cfg.train.seed,
                    "method": cfg.method, "code_version": code_version(), "host": os.uname().nodename}, **fields)
    _write_json(path, current)


# ----------------------------------------------------------------------------- samples
def sample_grid(distiller: Distiller, components: Components, cfg: RunConfig, n_per_prompt: int = 8) -> np.ndarray | None:
    """uint8 image (H, W, C): one row per sample prompt, fixed seeds, the configured sampler."""
    if components.render is None or not components.sample_prompts:
        return None
    prompts = [p for p in components.sample_prompts for _ in range(n_per_prompt)]
    cond = components.bundle.text_encoder.encode(prompts).to(distiller.device)
    g = torch.Generator().manual_seed(cfg.eval.seed)
    noise = torch.randn((len(prompts), *components.bundle.latent_shape), generator=g).to(distiller.device)
    x0 = distiller.sample(cond, noise, cfg.generator.sampler, generator=g)
    imgs = components.render(x0)  # (N, H, W, C)
    from torchvision.utils import make_grid

    grid = make_grid(torch.from_numpy(imgs).permute(0, 3, 1, 2), nrow=n_per_prompt, padding=0)
    return grid.permute(1, 2, 0)[..., :imgs.shape[-1]].numpy()  # make_grid repeats one channel to three


def save_png(img: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = img[..., 0] if img.shape[-1] == 1 else img
    scale = max(1, 256 // max(arr.shape[:2]))
    im = Image.fromarray(arr)
    if scale > 1:
        im = im.resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)
    tmp = path.with_name(f".{path.name}.tmp.png")
    im.save(tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the loop
def train(cfg: RunConfig, run_dir: str | Path, components: Components, *, run_id: str = "",
          progress: bool = True, stop_after: int | None = None, device: str | None = None) -> TrainResult:
    """Train (or resume) the run in `run_dir` up to cfg.train.iterations.

    stop_after: stop after this many iterations in this call (for tests of resume and for preemption).
    """
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
    ckpts = checkpoints(run_dir)
    if ckpts:
        _check_same_optimizer(run_dir, cfg, distiller)
        start = load_checkpoint(ckpts[-1], distiller)
        saved_loop = trainer_state(ckpts[-1])
        window = {k: [float(x) for x in v] for k, v in (saved_loop.get("log_window") or {}).items()}
        bad = int(saved_loop.get("bad_iterations") or 0)
    metrics_path = run_dir / "metrics.jsonl"
    compute = (f"{cfg.train.mixed_precision} autocast" if use_cuda and cfg.train.mixed_precision != "no"
               else "stored dtype")
    cautions = precision.step_warnings(distiller, cfg)
    if main:
        for line in cautions:
            print(f"warning: {line}", file=sys.stderr, flush=True)
        for stale in (run_dir / "checkpoints").glob(".tmp-*"):  # a write that a kill cut short
            shutil.rmtree(stale, ignore_errors=True)
        write_status(run_dir, cfg, run_id, state="running", iteration=start, started=time.time(), reason="",
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
    state, reason = "completed", ""
    t0 = time.time()

    def loop_state() -> dict[str, Any]:
        return {"log_window": window, "bad_iterations": bad}
    from senseflow.progress import bar as tqdm  # plain lines when not on a terminal

    bar = tqdm(range(start, end), initial=start, total=cfg.train.iterations, disable=not (progress and main),
               desc=f"{cfg.name} seed {cfg.train.seed}", dynamic_ncols=True, leave=False)
    it = start
    with open(metrics_path, "a") if main else open(os.devnull, "w") as mlog:
        for it in bar:
            batch = components.data.batch(it, cfg.train.batch_size, step_generator(cfg.train.seed, it, stream=2,
                                                                                   rank=ctx.rank))
            batch = Batch(batch.latents.to(accelerator.device), batch.pixels.to(accelerator.device),
                          batch.cond.to(accelerator.device), batch.prompts)
            with accelerator.autocast():
                m = distiller.step(it, batch)
            m = ctx.mean_metrics(m)  # every rank sees the same losses and takes the same divergence decision
            norms = [m.get(k, 0.0) for k in ("grad_norm_g", "grad_norm_f", "grad_norm_d")]
            if not finite(m) or max(norms) > cfg.train.divergence_grad_norm:
                bad += 1
                if bad >= cfg.train.divergence_patience:
                    state = "diverged"
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
                save_checkpoint(run_dir, distiller, done, cfg.train.keep_checkpoints, loop_state())
                if main:
                    write_status(run_dir, cfg, run_id, state="running", iteration=done)
            if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done < cfg.train.iterations:
                from senseflow.evaluate import evaluate_run

                evaluate_run(cfg, run_dir, distiller, components, progress=False, label=f"iter_{done}",
                             iteration=done, previews=False, main=main)
            if cfg.train.sample_every and done % cfg.train.sample_every == 0:
                grid = sample_grid(distiller, components, cfg)  # every rank: G's forwards are collective
                if grid is not None and main:
                    save_png(grid, run_dir / "samples" / f"iter_{done:07d}.png")
        else:
            it = end - 1
    bar.close()
    if trackers and main:
        accelerator.end_training()
    elapsed = time.time() - t0
    done = it + 1 if state != "diverged" else it
    if state == "diverged":
        if main:
            write_status(run_dir, cfg, run_id, state="diverged", reason=reason, iteration=done, finished=time.time())
        ctx.barrier()
        return TrainResult("diverged", done, run_dir, distiller, reason, elapsed)
    if done < cfg.train.iterations:
        save_checkpoint(run_dir, distiller, done, cfg.train.keep_checkpoints, loop_state())
        if main:
            write_status(run_dir, cfg, run_id, state="stopped", iteration=done)
        ctx.barrier()
        return TrainResult("stopped", done, run_dir, distiller, "", elapsed)
    save_checkpoint(run_dir, distiller, done, cfg.train.keep_checkpoints, {"final": True})
    grid = sample_grid(distiller, components, cfg)
    if grid is not None and main:
        save_png(grid, run_dir / "samples" / "final.png")
    if main:
        write_status(run_dir, cfg, run_id, state="trained", iteration=done, train_seconds=round(elapsed, 2))
    ctx.barrier()
    return TrainResult("completed", done, run_dir, distiller, "", elapsed)


def _check_same_optimizer(run_dir: Path, cfg: RunConfig, distiller: Distiller) -> None:
    """A checkpoint's optimizer state only loads into the optimizer class that wrote it (optim.eight_bit=auto
    may choose differently on another machine)."""
    path = run_dir / "status.json"
    before = (json.loads(path.read_text()).get("optimizer") or {}) if path.is_file() else {}
    now = distiller.optimizer_info["class"]
    if before.get("class") and before["class"] != now:
        from senseflow.errors import UserError

        raise UserError(f"{run_dir} was trained with {before['class']} and would resume with {now} "
                        f"(optim.eight_bit={cfg.optim.eight_bit!r}); resume where the same optimizer is available "
                        "(bitsandbytes for the 8-bit one) or start a new run folder")


def _short(m: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in m.items() if k.startswith(("loss", "grad")))
