"""Evaluate a trained student and record the result in its run folder (eval.json).

A world supplies its own evaluator through `Components.evaluate` (a senseflow.world.Evaluator:
(distiller, cfg, sampler, progress) -> (metrics, intervals, num_samples)); the digits world
measures FID-T, FID, prompt accuracy and diversity in its classifier's feature space. Real teachers use
the evals/ metric modules on generated PNGs (`evaluate_images`).
"""

from __future__ import annotations

from pathlib import Path

from senseflow.config import RunConfig
from senseflow.errors import UserError


def evaluate_run(cfg: RunConfig, run_dir: str | Path, distiller, components, *, progress: bool = True,
                 label: str = "final", iteration: int | None = None, previews: bool = True,
                 main: bool = True) -> dict[str, dict]:
    """Evaluate every configured sampler; metric names get a '@euler' suffix for the Euler sampler.

    main=False (ranks other than 0 of a multi-process run): sample and measure exactly as rank 0 does,
    since a sharded student's forwards are collective, but record nothing and write samples to a
    scratch folder that is removed afterwards."""
    import shutil
    import tempfile

    run_dir = Path(run_dir)
    scratch = None if main else Path(tempfile.mkdtemp(prefix="senseflow-eval-"))
    try:
        return _evaluate(cfg, run_dir, distiller, components, progress and main, label, iteration, previews,
                         main, scratch or run_dir)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _evaluate(cfg, run_dir: Path, distiller, components, progress, label, iteration, previews, main,
              sample_root: Path) -> dict[str, dict]:
    from evals.store import record_eval

    evaluator = components.evaluate
    if evaluator is None:
        evaluator = _images_evaluator(cfg, components, sample_root)
    if iteration is None:
        from senseflow.checkpoint import checkpoints

        ck = checkpoints(run_dir)
        iteration = int(ck[-1].name.split("_")[-1]) if ck else cfg.train.iterations
    results: dict[str, dict] = {}
    metrics_all: dict[str, float] = {}
    intervals_all: dict[str, list[float]] = {}
    n = 0
    for sampler in cfg.eval.samplers:
        metrics, intervals, n = evaluator(distiller, cfg, sampler, progress)
        suffix = "" if sampler == cfg.eval.samplers[0] else f"@{sampler}"
        metrics_all.update({k + suffix: float(v) for k, v in metrics.items()})
        intervals_all.update({k + suffix: [float(a), float(b)] for k, (a, b) in intervals.items()})
        results[sampler] = metrics
    if main:
        record_eval(run_dir, iteration=iteration, label=label, metrics=metrics_all, intervals=intervals_all,
                    num_samples=n, checkpoint=f"checkpoints/iter_{iteration:07d}")
    after = components.after_eval
    if after is not None and previews:
        after(distiller, sample_root)  # samples the student: every rank, rank 0 into the run folder
    return results


def _images_evaluator(cfg: RunConfig, components, run_dir: Path):
    """Generic evaluator for real and tiny families: generate PNGs, then the evals/ metric modules."""
    def evaluate(distiller, cfg: RunConfig, sampler: str, progress: bool):
        if not cfg.eval.metrics:
            return {}, {}, 0
        from evals.pipeline import evaluate_student

        if not cfg.eval.prompts and not components.sample_prompts:
            raise UserError("eval.prompts is empty: set eval.prompts to a prompt file (one prompt per line, "
                            "or a COCO captions .json)")
        return evaluate_student(distiller, components, cfg, sampler, progress=progress, out_root=run_dir)
    return evaluate
