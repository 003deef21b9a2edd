"""`senseflow train | sample | export | eval`: one run and its checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from senseflow import config as config_mod
from senseflow.errors import UserError

app = typer.Typer()


@app.command()
def train(source: str = typer.Argument(..., help="preset name or YAML config"),
          overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. isg.weight=0.5"),
          run_dir: Path = typer.Option(None, help="run folder (default results/runs/<grid>/<run id>)"),
          stop_after: int = typer.Option(None, help="stop after this many iterations (resume later)"),
          evaluate: bool = typer.Option(True, help="evaluate the student when training ends"),
          progress: bool = typer.Option(True)):
    """Train (or resume) one run, then evaluate and record it."""
    from senseflow.run import execute, run_dir_for

    from senseflow.parallel import launch_rank

    if "ACCELERATE_MIXED_PRECISION" in os.environ:  # set by every `accelerate launch`
        raise UserError("`accelerate launch` is not supported: senseflow does not read accelerate's config (its "
                        "mixed precision, FSDP, ... settings would be ignored); start several processes with "
                        "`torchrun --nproc_per_node N -m senseflow train CONFIG` and set train.mixed_precision, "
                        "train.parallel and train.shard_group in the config (detected from ACCELERATE_MIXED_PRECISION "
                        "in the environment; unset it if something else set it)")
    cfg = config_mod.resolve(source, overrides or [])
    folder = run_dir or run_dir_for(cfg)
    main = launch_rank() == 0  # several processes (torchrun, a SLURM profile's tasks): rank 0 reports
    if main:
        writable_folder(folder, "--run-dir" if run_dir else "output.root")
        typer.echo(f"run folder: {folder}")
        for change in cfg.tiny_changes:
            typer.echo(f"tiny mode: {change}")
    status = execute(cfg, folder, progress=progress, stop_after=stop_after, evaluate=evaluate)
    if not main:
        return
    typer.echo(f"state: {status.get('state')}  iteration: {status.get('iteration')}"
               + (f"  reason: {status['reason']}" if status.get("reason") else ""))
    _print_eval(folder)


def writable_folder(folder: Path, key: str) -> None:
    """Create the run folder now, so that a path that cannot hold it fails as one line before anything loads."""
    import os

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{key}: cannot create the run folder {folder} ({e.strerror or e}); choose a writable "
                        "folder") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{key}: the run folder {folder} is not writable; choose a writable folder")


def _print_eval(folder: Path) -> None:
    import json

    p = Path(folder) / "eval.json"
    if p.is_file():
        ev = json.loads(p.read_text())["evaluations"][-1]
        for k, v in ev["metrics"].items():
            lo_hi = ev.get("intervals", {}).get(k)
            typer.echo(f"  {k}: {v:.4g}" + (f"  [{lo_hi[0]:.4g}, {lo_hi[1]:.4g}]" if lo_hi else ""))


def resolve_checkpoint(path: Path) -> tuple[Path, Path]:
    """(run_dir, checkpoint_dir) from a run folder (its latest checkpoint) or a checkpoint folder."""
    from senseflow.checkpoint import checkpoints

    path = Path(path)
    if (path / "generator.safetensors").is_file():
        return path.parent.parent, path
    if (path / "config.yaml").is_file():
        ck = checkpoints(path)
        if not ck:
            raise UserError(f"{path} has no checkpoints yet; train it first (senseflow train ...)")
        return path, ck[-1]
    raise UserError(f"{path} is neither a run folder (with config.yaml) nor a checkpoint folder "
                    "(with generator.safetensors)")


def few_step_generator(cfg, sigma_table, anchor_indices: list[int] | None = None):
    """The run's FewStepGenerator, started as in training (generator.pure_noise_start included)."""
    from senseflow.generator import FewStepGenerator

    idx = list(anchor_indices or cfg.generator.anchor_indices)
    return FewStepGenerator(idx, sigma_table, cfg.generator.pure_noise_start)


def load_student(path: Path):
    """(cfg, components, generator Denoiser, FewStepGenerator) from a run or checkpoint folder."""
    from senseflow.components import build_components
    from senseflow.checkpoint import load_generator_weights

    run_dir, ckpt = resolve_checkpoint(path)
    cfg = config_mod.build(config_mod.load_yaml(run_dir / "config.yaml"))
    components = build_components(cfg, progress=False, with_data=False)
    from senseflow.precision import DTYPES

    # in the dtype it was trained in, so the checkpoint's weights load (and export) unrounded
    student = components.bundle.teacher.student_copy().to(DTYPES[cfg.train.trainable_dtype]).eval()
    student.load_state_dict(load_generator_weights(ckpt))
    return cfg, components, student, few_step_generator(cfg, components.bundle.sigma_table)


def sample_latents(components, student, few, prompts: list[str], n: int, seed: int, sampler: str):
    """The clean latents `senseflow sample` renders: n per prompt (prompt-major), noise from `seed`.

    The starting noise is torch.randn(N, *latent_shape) from a CPU random-number generator (`rng`) seeded
    with `seed`, drawn first, and the re-noising sampler's fresh noise comes from the same `rng` after it.
    """
    import torch

    expanded = [p for p in prompts for _ in range(n)]
    rng = torch.Generator().manual_seed(seed)
    cond = components.bundle.text_encoder.encode(expanded)
    noise = torch.randn((len(expanded), *components.bundle.latent_shape), generator=rng)
    return few.sample(student, cond, noise, sampler, rng=rng)


@app.command()
def sample(checkpoint: Path = typer.Argument(..., help="run folder or checkpoint folder"),
           prompt: list[str] = typer.Option(..., "--prompt", "-p", help="prompt (repeatable)"),
           n: int = typer.Option(4, help="images per prompt"),
           steps: int = typer.Option(None, help="number of steps (default: the trained anchors)"),
           sampler: str = typer.Option(None, help="euler | stochastic (default: the run's)"),
           seed: int = typer.Option(0),
           out: Path = typer.Option(Path("samples.png"), help="PNG grid to write")):
    """Sample the student: one row per prompt."""
    import torch
    from torchvision.utils import make_grid

    from senseflow.run_folder import PREVIEW_SIDE, save_png

    # everything the arguments alone decide is checked before the models load
    if steps is not None and steps < 1:
        raise UserError(f"--steps={steps} must be at least 1")
    if sampler is not None and sampler not in ("euler", "stochastic"):
        raise UserError(f"--sampler={sampler!r} must be 'euler' or 'stochastic'")
    if n < 1:
        raise UserError(f"--n={n} must be at least 1")
    resolve_checkpoint(checkpoint)
    cfg, components, student, few = load_student(checkpoint)
    if steps is not None and steps != few.num_steps:
        last = cfg.generator.anchor_indices[-1]
        idx = torch.linspace(999, last, steps).round().long().tolist() if steps > 1 else [999]
        few = few_step_generator(cfg, components.bundle.sigma_table, idx)
    sampler = sampler or cfg.generator.sampler
    imgs = components.render(sample_latents(components, student, few, list(prompt), n, seed, sampler))
    channels = imgs.shape[-1]
    grid = make_grid(torch.from_numpy(imgs).permute(0, 3, 1, 2), nrow=n, padding=0)
    # make_grid repeats one channel to three
    save_png(out, grid.permute(1, 2, 0)[..., :channels].numpy(), min_side=PREVIEW_SIDE)
    typer.echo(f"wrote {out} ({len(prompt)} prompts x {n} samples, {few.num_steps} {sampler} steps)")


@app.command()
def export(checkpoint: Path = typer.Argument(..., help="run folder or checkpoint folder"),
           out_dir: Path = typer.Argument(..., help="folder to write the student in"),
           complete: bool = typer.Option(None, "--complete/--student-only", help=(
               "also write the teacher's other components and model_index.json (default: when the teacher is a "
               "local folder, not a hub id)"))):
    """Save the student as a diffusers model: backbone, a scheduler that lands on the anchors, a model card."""
    from senseflow.export import export_student

    cfg, components, student, _ = load_student(checkpoint)
    path = export_student(student, out_dir, cfg, components.bundle, complete=complete,
                          pure_noise_start=cfg.generator.pure_noise_start)
    info = json.loads((path / "senseflow.json").read_text())
    typer.echo(f"wrote {path} ({'complete pipeline' if info['complete'] else 'student and scheduler'}); "
               f"sampling calls in {path / 'README.md'}")
    if not info["default_schedule_exact"] and info["family"] in ("sd3", "flux"):
        typer.echo(f"note: anchors {info['anchor_indices']} are not equally spaced in the sigma table; the pipeline "
                   f"needs sigmas=[{', '.join(f'{x:.7g}' for x in info['anchor_sigmas'])}] (shown in the model card)")


@app.command("eval")
def eval_cmd(run: Path = typer.Argument(..., help="run folder or checkpoint folder"),
             metrics: list[str] = typer.Option(None, "--metric", "-m", help="metric names (default: the run's)"),
             num_samples: int = typer.Option(None, help="samples per evaluation"),
             label: str = typer.Option("manual", help="label stored with the evaluation"),
             progress: bool = typer.Option(True)):
    """Evaluate a checkpoint and record it in the run's eval.json."""
    from senseflow import checkpoint
    from senseflow.evaluate import evaluate_run

    run_dir, ckpt = resolve_checkpoint(run)
    cfg = config_mod.build(config_mod.load_yaml(run_dir / "config.yaml"))
    over = []
    if metrics:
        over.append(f"eval.metrics=[{','.join(metrics)}]")
    if num_samples:
        over.append(f"eval.num_samples={num_samples}")
    cfg = config_mod.build(config_mod.apply_overrides(cfg.to_dict(), over))
    from senseflow.components import build_components
    from senseflow.distill import eight_bit_choice

    eight_bit_choice(cfg.optim)  # the checkpoint's optimizer state needs the same optimizer: check before loading

    components = build_components(cfg, progress=progress)
    restored = checkpoint.restore(run_dir, components, cfg=cfg, checkpoint=ckpt)
    evaluate_run(cfg, run_dir, restored.distiller, components, progress=progress, label=label,
                 iteration=restored.iteration)
    _print_eval(run_dir)
