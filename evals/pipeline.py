"""Evaluate a distilled student of a real (or tiny) family: generate, then measure.

Student and teacher samples are generated on the same prompts and seeds (so FID-T pairs them), written
as PNG sample sets under the run folder (`eval_samples/<sampler>/`, `eval_samples/teacher/`, reused
when present), then the configured metrics run on them (evals.metrics.build_metrics).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .metrics import build_metrics, evaluate, flatten_results
from .samples import generate_samples, load_coco_captions, load_prompts


def eval_prompts(cfg, components) -> list[str]:
    """cfg.eval.num_samples prompts from eval.prompts (text file or COCO captions json) or the run's own."""
    n = cfg.eval.num_samples
    if cfg.eval.prompts:
        p = Path(cfg.eval.prompts)
        prompts = load_coco_captions(p, limit=n) if p.suffix == ".json" else load_prompts(p, limit=n)
    else:
        prompts = list(components.sample_prompts)
    if not prompts:
        return []
    return [prompts[i % len(prompts)] for i in range(n)]


def _teacher_folder(cfg) -> str:
    """`teacher` for the default reference settings (the folder earlier runs wrote), else one named for them."""
    e = cfg.eval
    defaults = type(e).model_fields
    if (e.teacher_steps, e.teacher_guidance) == (defaults["teacher_steps"].default, defaults["teacher_guidance"].default):
        return "teacher"
    return f"teacher-{e.teacher_steps}steps-guidance{e.teacher_guidance:g}"


def _noise(seeds: list[int], shape: tuple[int, ...], device) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)


def evaluate_student(distiller, components, cfg, sampler: str, *, progress: bool = True, out_root: Path | None = None):
    """(metrics, intervals, num_samples) of the student with `sampler`, against teacher samples drawn with
    eval.teacher_steps Euler steps at guidance eval.teacher_guidance (kept in `teacher/` for the default
    settings, else in a folder named for them, so cached reference samples always match the settings)."""
    from senseflow.generator import teacher_sample

    bundle = components.bundle
    prompts = eval_prompts(cfg, components)
    seeds = [cfg.eval.seed + i for i in range(len(prompts))]
    root = Path(out_root or Path(cfg.output.root) / cfg.output.grid / cfg.identity_hash()) / "eval_samples"
    device = distiller.device

    def student(ps: list[str], ss: list[int]):
        cond = bundle.text_encoder.encode(ps).to(device)
        rng = torch.Generator().manual_seed(ss[0])
        x0 = distiller.sample(cond, _noise(ss, bundle.latent_shape, device), sampler, rng=rng)
        return components.render(x0)

    uncond = bundle.text_encoder.encode([""]).to(device)
    steps, guidance = cfg.eval.teacher_steps, cfg.eval.teacher_guidance
    sigmas = [float(s) for s in torch.linspace(1.0, 1.0 / steps, steps)]
    if cfg.model.table_shift != 1.0:
        from senseflow import flow

        sigmas = [float(flow.shift(s, cfg.model.table_shift)) for s in sigmas]

    def teacher(ps: list[str], ss: list[int]):
        cond = bundle.text_encoder.encode(ps).to(device)
        x0 = teacher_sample(bundle.teacher, cond, uncond, _noise(ss, bundle.latent_shape, device), sigmas,
                            guidance)
        return components.render(x0)

    bs = cfg.eval.batch_size
    names = list(cfg.eval.metrics)
    samples = generate_samples(student, prompts, seeds, root / sampler, batch_size=bs, model=cfg.name,
                               steps=len(cfg.generator.anchor_indices), sampler=sampler, progress=progress)
    reference = None
    if any(n in ("fid_t", "patch_fid_t", "fid", "kid") for n in names):
        reference = generate_samples(teacher, prompts, seeds, root / _teacher_folder(cfg), batch_size=bs,
                                     model="teacher", steps=steps, sampler="euler", progress=progress)
    metrics = build_metrics(names, weights=cfg.eval.weights, device=str(device), tiny=cfg.model.tiny,
                            options={"patch_fid_t": {"crop_size": min(cfg.eval.patch_size, cfg.model.resolution)}})
    return flatten_results(evaluate(metrics, samples, reference))
