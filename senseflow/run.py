"""One run, end to end: world/model -> distill -> evaluate -> record (docs/ARCHITECTURE.md, "The path of one
experiment").

`execute(cfg, run_dir)` is what every executor (in-process, local subprocess, SLURM job) calls. It is
idempotent: a finished run returns its recorded result at once; an interrupted one resumes from its
last checkpoint; a failure is recorded in status.json with its reason and re-raised.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from senseflow.config import RunConfig
from senseflow.run_folder import State, read_status, run_path, write_status


def run_id_for(cfg: RunConfig) -> str:
    """A run's identity: the hash of its resolved config (seed included, output location excluded)."""
    return cfg.identity_hash()


def run_dir_for(cfg: RunConfig) -> Path:
    return run_path(cfg.output.root, cfg.output.grid, run_id_for(cfg))


def execute(cfg: RunConfig, run_dir: str | Path | None = None, *, progress: bool = True,
            stop_after: int | None = None, evaluate: bool = True) -> dict[str, Any]:
    """Train (or resume) and evaluate one run; returns its final status dict."""
    from senseflow.components import build_components
    from senseflow.evaluate import evaluate_run
    from senseflow.parallel import launch_rank
    from senseflow.train import train

    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(cfg)
    run_id = run_dir.name
    status = read_status(run_dir)
    if status.get("state") == State.COMPLETED:
        return status
    try:
        from senseflow.distill import eight_bit_choice

        eight_bit_choice(cfg.optim)  # a missing optimizer package stops the run before any weight loads
        components = build_components(cfg, progress=progress)

        def evaluate_at(distiller, iteration: int) -> None:  # train.eval_every: every rank, rank 0 records
            evaluate_run(cfg, run_dir, distiller, components, progress=False, label=f"iter_{iteration}",
                         iteration=iteration, previews=False, main=distiller.parallel.is_main)

        result = train(cfg, run_dir, components, run_id=run_id, progress=progress, stop_after=stop_after,
                       evaluate_at=evaluate_at)
        ctx = result.distiller.parallel
        if result.state != State.COMPLETED or not evaluate:
            return read_status(run_dir)
        if ctx.is_main:
            write_status(run_dir, State.EVALUATING, cfg, run_id=run_id)
        t0 = time.time()
        # every rank evaluates (the student may be sharded); rank 0 records
        evaluate_run(cfg, run_dir, result.distiller, components, progress=progress, main=ctx.is_main)
        if ctx.is_main:
            write_status(run_dir, State.COMPLETED, cfg, run_id=run_id, finished=time.time(),
                         eval_seconds=round(time.time() - t0, 2))
        ctx.barrier()
    except KeyboardInterrupt:
        if launch_rank() == 0:
            write_status(run_dir, State.STOPPED, cfg, run_id=run_id, reason="interrupted")
        raise
    except Exception as e:
        if launch_rank() != 0:
            raise
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(traceback.format_exc())
            write_status(run_dir, State.FAILED, cfg, run_id=run_id, reason=f"{type(e).__name__}: {e}"[:500],
                         finished=time.time())
        except OSError:
            pass  # a full disk or read-only folder: the original error is the one to report
        raise
    return read_status(run_dir)
