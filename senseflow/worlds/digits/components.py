"""The digits world as run components: data source, discriminator, renderer and evaluator."""

from __future__ import annotations

import torch

from senseflow.config import RunConfig
from senseflow.distill import Batch
from senseflow.world import Components, make_discriminator_factory, to_uint8

PREVIEW_PROMPTS = 10   # one held-out prompt per digit in the sample grids
PREVIEW_SEEDS = 6


class DigitsDataSource:
    """Training images with training-template prompts, drawn with the iteration's rng."""

    def __init__(self, world):
        self.world = world

    @torch.no_grad()
    def batch(self, iteration: int, batch_size: int, rng: torch.Generator) -> Batch:
        b = self.world.sample_batch(batch_size, rng, split="train")
        return Batch(b.images, b.images, self.world.encode(list(b.prompts)), list(b.prompts))


def _preview_prompts(world) -> list[str]:
    ref = world.reference
    seen: dict[int, str] = {}
    for p, label in zip(ref.prompts, ref.labels.tolist()):
        seen.setdefault(int(label), p)
    return [seen[k] for k in sorted(seen)][:PREVIEW_PROMPTS]


def make_evaluator(world):
    """(distiller, cfg, sampler, progress) -> (metrics, intervals, num_samples) on the world's reference
    prompts and seeds, so FID-T pairs each student sample with the teacher's on the same prompt and noise."""
    from evals.digits import evaluate_samples

    def evaluate(distiller, cfg: RunConfig, sampler: str, progress: bool):
        ref = world.reference
        n = min(cfg.eval.num_samples, len(ref))
        if n < len(ref):
            from senseflow.errors import UserError

            raise UserError(f"eval.num_samples={cfg.eval.num_samples} is below the digits world's {len(ref)} reference "
                            f"samples; FID-T needs the full reference set: set eval.num_samples={len(ref)}")
        images = []
        bs = cfg.eval.batch_size
        rng = torch.Generator().manual_seed(cfg.eval.seed)
        for i in range(0, len(ref), bs):
            prompts = ref.prompts[i:i + bs]
            cond = world.encode(list(prompts)).to(distiller.device)
            x = distiller.sample(cond, ref.noise[i:i + bs].to(distiller.device), sampler, rng=rng)
            images.append(x.float().cpu())
        images = torch.cat(images).clamp(-1, 1)
        res = evaluate_samples(images, world)
        metrics, intervals = {}, {}
        for k, v in res.items():
            if isinstance(v, dict):
                metrics[k] = v["value"]
                if v.get("low") is not None:
                    intervals[k] = (v["low"], v["high"])
            else:
                metrics[k] = float(v)
        return metrics, intervals, len(ref)
    return evaluate


def write_previews(world, distiller, cfg: RunConfig, run_dir) -> None:
    """Small sample sets for the teacher-vs-configurations grid (same prompts and seeds in every run)."""
    from pathlib import Path

    from evals.sample_set import SampleSet

    prompts = [p for p in _preview_prompts(world) for _ in range(PREVIEW_SEEDS)]
    seeds = [s for _ in _preview_prompts(world) for s in range(PREVIEW_SEEDS)]
    noise = torch.stack([torch.randn(world.bundle.latent_shape, generator=torch.Generator().manual_seed(10_000 + s))
                         for s in seeds])
    cond = world.encode(prompts).to(distiller.device)
    student = distiller.sample(cond, noise.to(distiller.device), cfg.generator.sampler,
                               rng=torch.Generator().manual_seed(cfg.eval.seed)).float().cpu()
    teacher = world.sample_teacher(prompts, noise)
    root = Path(run_dir) / "eval_samples"
    for name, imgs, model in (("preview", student, cfg.name), ("teacher_preview", teacher, "teacher")):
        SampleSet.from_arrays(root / name, to_uint8(imgs.clamp(-1, 1)), prompts, seeds, model=model,
                              steps=len(cfg.generator.anchor_indices) if name == "preview" else 50,
                              sampler=cfg.generator.sampler if name == "preview" else "euler")


def digits_components(cfg: RunConfig, progress: bool = True) -> Components:
    from senseflow.errors import UserError
    from senseflow.worlds.digits.config import DigitsWorldConfig
    from senseflow.worlds.digits.world import build_world

    # model.teacher names the world's configuration: "" (the default world) or "quick" (tests, smoke runs)
    worlds = {"": None, "default": None, "quick": DigitsWorldConfig.quick}
    if cfg.model.teacher not in worlds:
        raise UserError(f"model.teacher={cfg.model.teacher!r} is not a digits world; use '' (the default world) "
                        "or 'quick' (a shortened schedule for tests)")
    make = worlds[cfg.model.teacher]
    world = build_world(make() if make else None, progress=progress, figures=make is None, grids=make is None)
    return world_components(cfg, world)


def world_components(cfg: RunConfig, world) -> Components:
    """The run components of `cfg` on an already built (or loaded) digits world; `digits_components` builds
    the world that cfg.model.teacher names, then calls this."""
    bundle = world.bundle
    backbone = None
    if cfg.gan.kind == "vfm":
        backbone = world.load_backbone() if cfg.gan.backbone == "digits-vit" else cfg.gan.backbone
    pooled = bundle.text_encoder.encode([""]).pooled.shape[-1]
    return Components(
        bundle=bundle, data=DigitsDataSource(world),
        make_discriminator=make_discriminator_factory(cfg, backbone, pooled, bundle.latent_shape[-1],
                                                      bundle.latent_shape[-2:]),
        render=to_uint8, sample_prompts=_preview_prompts(world),
        evaluate=make_evaluator(world),
        after_eval=lambda distiller, run_dir: write_previews(world, distiller, cfg, run_dir))


REFERENCE_ROWS = {
    "teacher-50": ("Teacher 50 steps, 2nd sample set (floor)", "teacher_floor"),
    "teacher-4": ("Teacher 4 steps at the anchors (do nothing)", "baseline_4step"),
}
_FIGURES = (("fid_t", "fid_t"), ("fid", "fid_real"), ("prompt_accuracy", "prompt_accuracy"), ("diversity", "diversity"))


def do_nothing_figures(world, anchor_indices: list[int]) -> dict:
    """The do-nothing baseline at other anchors than the world's: the teacher's Euler + CFG steps on the given
    anchors (then to 0), on the reference prompts and noise, measured like the world's own baseline."""
    import torch

    from evals.digits import evaluate_samples
    from senseflow import flow
    from senseflow.worlds.digits import teacher as teacher_mod

    ref = world.reference
    sigmas = teacher_mod.anchor_sigmas(flow.sigma_table(1000, world.config.sampling.table_shift), anchor_indices)
    with torch.no_grad():
        xs = torch.cat([world.sample_teacher(list(ref.prompts[i:i + 500]), ref.noise[i:i + 500], sigmas=sigmas + [0.0])
                        for i in range(0, len(ref), 500)])
    figures = evaluate_samples(xs, world)
    figures["fid_real"] = figures.pop("fid")  # the world's figures' name for FID against real digits
    return figures


def record_reference_rows(world, runs_root, grid: str, anchor_indices: list[int] | None = None) -> list:
    """Write run folders (state completed) holding the world's own figures, so tables list them as rows: the
    teacher's floor and the do-nothing teacher at the anchors (the world's, or `anchor_indices`, measured here).

    Their ids are fixed per world and anchors, so calling this again overwrites the same folders."""
    from evals.store import record_eval
    from senseflow.run_folder import State, run_path, write_status

    figs = dict(world.figures)
    rows = dict(REFERENCE_ROWS)
    if anchor_indices is not None and list(anchor_indices) != list(world.anchor_indices):
        k = len(anchor_indices)
        del rows["teacher-4"]
        key = f"teacher-{k}-at-" + "-".join(str(i) for i in anchor_indices)
        rows[key] = (f"Teacher {k} step{'s' if k > 1 else ''} at the anchors (do nothing)", key)
        figs[key] = do_nothing_figures(world, list(anchor_indices))
    out = []
    for key, (name, section) in rows.items():
        sec = figs.get(section)
        if not sec:
            continue
        metrics, intervals = {}, {}
        for metric, src in _FIGURES:
            v = sec.get(src)
            if isinstance(v, dict):
                metrics[metric] = v["value"]
                if v.get("low") is not None:
                    intervals[metric] = [v["low"], v["high"]]
            elif v is not None:
                metrics[metric] = float(v)
        if section == "teacher_floor":  # the 50-step teacher's own figures, except FID-T which is the floor
            teacher = figs.get("teacher", {})
            for metric, src in (("fid", "fid_real"), ("diversity", "diversity")):
                v = teacher.get(src)
                metrics[metric] = v["value"] if isinstance(v, dict) else v
                if isinstance(v, dict) and v.get("low") is not None:
                    intervals[metric] = [v["low"], v["high"]]
        run_dir = run_path(runs_root, grid, f"{key}-{world.config.config_hash()}")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_status(run_dir, State.COMPLETED, run_id=run_dir.name, grid=grid, variant=name, seed=0, reason="",
                     method="reference")
        import yaml

        (run_dir / "config.yaml").write_text(yaml.safe_dump({"name": name, "method": "reference",
                                                             "world": world.config.config_hash()}))
        record_eval(run_dir, iteration=0, label="final", metrics=metrics, intervals=intervals,
                    num_samples=int(figs.get("num_reference_samples", 0)), checkpoint="")
        out.append(run_dir)
    return out
