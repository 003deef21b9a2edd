"""Checkpoints of a run: `save`, `load`, and `restore` (a run's Distiller at its newest checkpoint).

A checkpoint is the folder <run_dir>/checkpoints/iter_XXXXXXX/ holding

    generator.safetensors, fake_score.safetensors[, discriminator.safetensors]   full (unsharded) weights
    optimizers.pt                                                             the optimizers' state
    trainer.json            {"iteration", "processes", ...the training loop's own state (senseflow.train)}

It is written into a temp folder and renamed, so a kill leaves either the old checkpoint or the new one.
`restore` builds the Distiller from the run's saved config and the given components and loads the
newest checkpoint into it without writing anything; the training loop resumes with `load`,
`senseflow eval`, the sweep's intermediate evaluations and `load_student` restore through here.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from senseflow import config as config_mod
from senseflow import run_folder
from senseflow.config import RunConfig
from senseflow.distill import Distiller
from senseflow.errors import UserError

PREFIX = "iter_"
TRAINER_FILE = "trainer.json"
# Tests only: seconds `save` sleeps between writing a checkpoint's temp folder and renaming it, so that a
# kill -9 test can land inside a checkpoint write (tests/test_resume.py). Unset in real runs.
PAUSE_ENV = "SENSEFLOW_TEST_CHECKPOINT_PAUSE"


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete checkpoint folders, oldest first."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / TRAINER_FILE).is_file())


def save(run_dir: Path, distiller: Distiller, iteration: int, keep: int, extra: dict | None = None) -> Path:
    """Atomic: written into a temp folder, then renamed; older ones beyond `keep` are removed. Full
    (unsharded) tensors: with several processes every rank takes part in gathering them and rank 0 writes."""
    final = Path(run_dir) / "checkpoints" / f"{PREFIX}{iteration:07d}"
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
            (tmp / TRAINER_FILE).write_text(json.dumps({"iteration": iteration, "processes": ctx.world_size,
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


def load(path: Path, distiller: Distiller) -> int:
    """Load a checkpoint's weights and optimizer state into `distiller`; returns its iteration.
    Every rank reads the full tensors; sharded modules keep their own shards of them."""
    where = "cpu" if distiller.parallel.distributed else str(distiller.device)
    state = {}
    for name in ("generator", "fake_score", "discriminator"):
        f = Path(path) / f"{name}.safetensors"
        if f.is_file():
            state[name] = load_file(str(f), device=where)
    distiller.load_trainable_state(state)
    distiller.load_optimizer_state(torch.load(Path(path) / "optimizers.pt", map_location=where, weights_only=True))
    return int(trainer_state(path)["iteration"])


def trainer_state(path: Path) -> dict[str, Any]:
    """The loop's own state saved with a checkpoint (trainer.json): iteration, the open logging window, ..."""
    return json.loads((Path(path) / TRAINER_FILE).read_text())


def load_generator_weights(path: Path) -> dict[str, torch.Tensor]:
    """The student's weights from a checkpoint folder (safetensors, no pickle)."""
    return load_file(str(Path(path) / "generator.safetensors"))


def check_same_optimizer(run_dir: Path, cfg: RunConfig, distiller: Distiller) -> None:
    """A checkpoint's optimizer state only loads into the optimizer class that wrote it (optim.eight_bit=auto
    may choose differently on another machine)."""
    before = run_folder.read_status(run_dir).get("optimizer") or {}
    now = distiller.optimizer_info["class"]
    if before.get("class") and before["class"] != now:
        raise UserError(f"{run_dir} was trained with {before['class']} and would resume with {now} "
                        f"(optim.eight_bit={cfg.optim.eight_bit!r}); resume where the same optimizer is available "
                        "(bitsandbytes for the 8-bit one) or start a new run folder")


def run_config(run_dir: Path) -> RunConfig:
    """The config a run was trained with (its config.yaml)."""
    return config_mod.build(config_mod.load_yaml(Path(run_dir) / run_folder.CONFIG_FILE))


@dataclass
class Restored:
    cfg: RunConfig
    distiller: Distiller
    iteration: int                   # the checkpoint's
    path: Path                       # the checkpoint folder


def restore(run_dir: str | Path, components, *, cfg: RunConfig | None = None, checkpoint: Path | None = None,
            device: str | None = None) -> Restored:
    """The run's Distiller at its newest checkpoint (or at `checkpoint`), built as training builds it
    (precision, the process group's sharding, the device) from `cfg` (default: the run's config.yaml) and
    `components` (senseflow.train.Components), with its weights and optimizer state loaded. Writes nothing.

    device: default CUDA when available, else CPU (as in training)."""
    from senseflow import parallel as parallel_mod

    run_dir = Path(run_dir)
    cfg = cfg if cfg is not None else run_config(run_dir)
    if checkpoint is None:
        found = checkpoints(run_dir)
        if not found:
            raise UserError(f"{run_dir} has no checkpoints yet; train it first (senseflow train ...)")
        checkpoint = found[-1]
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ctx = parallel_mod.setup(cfg.train.parallel, cfg.train.shard_group, target,
                             cfg.train.mixed_precision if target.type == "cuda" else "no")

    def prepare(d: Distiller) -> None:  # before the optimizers exist: shard, place
        parallel_mod.shard_distiller(d, ctx)
        d.to(target)

    torch.manual_seed(cfg.train.seed)
    b = components.bundle
    distiller = Distiller(cfg, b.teacher, b.text_encoder, b.codec, b.sigma_table,
                          make_discriminator=components.make_discriminator, prepare=prepare, parallel=ctx)
    check_same_optimizer(run_dir, cfg, distiller)
    iteration = load(checkpoint, distiller)
    return Restored(cfg, distiller, iteration, Path(checkpoint))
