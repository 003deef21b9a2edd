"""`senseflow world ...`: build the embedded worlds. Registered by senseflow.cli as the `world` group.

    senseflow world digits build [--cache-dir DIR] [--quick] [--set teacher.steps=3000 ...] [--grids-to DIR] [--load]
    senseflow world digits teacher [--cache-dir DIR] [--quick] [--set ...]
    senseflow world digits show-config [--quick] [--set ...]
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="Build the embedded worlds.", no_args_is_help=True)
digits_app = typer.Typer(help="The digits world: sklearn 8x8 digits, MiniLM prompts, a small SD3 teacher.",
                         no_args_is_help=True)
app.add_typer(digits_app, name="digits")

_CACHE_HELP = "senseflow cache root (default $SENSEFLOW_CACHE, else $XDG_CACHE_HOME/senseflow or ~/.cache/senseflow)"
_SET_HELP = "dotted config override, repeatable, e.g. --set teacher.steps=3000 --set sampling.cfg_scale=2"


def _config(quick: bool, overrides: list[str] | None):
    from senseflow.errors import UserError
    from senseflow.worlds.digits import DigitsWorldConfig

    cfg = DigitsWorldConfig.quick() if quick else DigitsWorldConfig()
    try:
        return cfg.with_overrides(overrides or [])
    except (KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise UserError(f"digits world config: {msg}") from None


def _fmt_fid(d: dict | None) -> str:
    if not d:
        return "-"
    if d.get("low") is None:
        return f"{d['value']:.2f}"
    return f"{d['value']:.2f} [{d['low']:.2f}, {d['high']:.2f}]"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def figures_table(figures: dict) -> Table:
    """The world's figures (`compute_figures`) as a rich table (target column says what each must reach)."""
    t = Table(title=f"digits world {figures.get('config_hash', '')}", show_lines=False)
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_column("target")
    te, fl, base = figures["teacher"], figures["teacher_floor"], figures["baseline_4step"]
    t.add_row("classifier held-out accuracy", _pct(figures["classifier_held_out_accuracy"]), ">= 97%")
    t.add_row("backbone linear-probe accuracy (held-out)", _pct(figures.get("backbone_linear_probe_accuracy")),
              "(quality of the D backbone)")
    t.add_row("teacher params", f"{te['params']:,}", "")
    t.add_row(f"teacher {te['steps']}-step Euler+CFG {te['cfg_scale']}: prompt accuracy (held-out templates)",
              _pct(te["prompt_accuracy"]), ">= 90%")
    t.add_row("teacher FID vs held-out real [95% CI]", _fmt_fid(te["fid_real"]), "reported")
    t.add_row("real floor: FID train vs held-out real", _fmt_fid(figures["real_floor"]["fid_train_vs_held_out"]), "")
    t.add_row("teacher floor: FID between two teacher sample sets", _fmt_fid(fl["fid_t"]), "reported")
    sig = ", ".join(f"{s:.3g}" for s in base["sigmas"])
    t.add_row(f"do-nothing baseline (teacher at anchors {sig}): FID-T", _fmt_fid(base["fid_t"]),
              "every student beats it")
    t.add_row("do-nothing baseline: prompt accuracy", _pct(base["prompt_accuracy"]), "")
    t.add_row("do-nothing baseline: FID vs held-out real", _fmt_fid(base["fid_real"]), "")
    t.add_row("teacher / baseline per-prompt diversity", f"{te['diversity']:.2f} / {base['diversity']:.2f}", "")
    s = figures.get("build_seconds", {})
    if s:
        parts = ", ".join(f"{k} {v:.0f}s" for k, v in s.items() if isinstance(v, (int, float)) and
                          not isinstance(v, bool) and k != "total")
        label = "build from nothing" if s.get("from_nothing") else "first build (part cached)"
        t.add_row(f"{label} ({parts})", f"{s.get('total', float('nan')):.0f} s", "< 10 min on 2 cores")
    return t


def _cache_origin(cache_dir: Path | None) -> str:
    """Where the cache root came from, so a user running elsewhere finds (or moves) the same world."""
    import os

    from senseflow.worlds.digits.config import CACHE_ENV, cache_root

    root = cache_root(cache_dir)
    why = "--cache-dir" if cache_dir is not None else (f"${CACHE_ENV}" if os.environ.get(CACHE_ENV)
                                                       else f"default; set ${CACHE_ENV} or --cache-dir to move it")
    return f"{root}, {why}"


@digits_app.command("build")
def build(cache_dir: Path = typer.Option(None, "--cache-dir", help=_CACHE_HELP),
          quick: bool = typer.Option(False, "--quick", help="shortened schedule (smoke runs; not the world's figures)"),
          overrides: list[str] = typer.Option(None, "--set", help=_SET_HELP),
          grids_to: Path = typer.Option(None, "--grids-to", help="also write the per-digit sample grids here"),
          progress: bool = typer.Option(True, "--progress/--no-progress"),
          load: bool = typer.Option(False, "--load", help="load every artifact (torch) even when the cache is "
                                                          "complete, as build_world does")):
    """Build (or load) every artifact, print the figures and write a sample grid PNG per digit.

    A completely cached world is answered from its files (senseflow.worlds.digits.cache: every artifact
    present and whole, config hash matching) without importing torch or loading a model; --load loads them."""
    console = Console()
    cfg = _config(quick, overrides)
    t0 = time.perf_counter()
    if not load:
        from senseflow.worlds.digits.cache import cached_manifest

        cached = cached_manifest(cfg, cache_dir)
        if cached is not None:
            elapsed = time.perf_counter() - t0
            console.print(figures_table(cached.figures))
            console.print(f"world: {cached.directory}  (cache root: {escape(_cache_origin(cache_dir))})")
            console.print(f"built in this call: nothing (all cached); {len(cached.files)} files checked in "
                          f"{elapsed:.2f} s")
            grid_dir = cached.directory / "samples"
            if grids_to is not None:  # the cached grids are what save_sample_grids would write again
                import shutil

                grids_to.mkdir(parents=True, exist_ok=True)
                for src in cached.grid_paths():
                    shutil.copyfile(src, grids_to / src.name)
                grid_dir = grids_to
            console.print(f"sample grids: {grid_dir}/digit_<0..9>.png, {grid_dir}/overview.png")
            return

    from senseflow.worlds.digits import build_world, save_sample_grids

    world = build_world(cfg, cache_dir=cache_dir, progress=progress)
    elapsed = time.perf_counter() - t0
    console.print(figures_table(world.figures))
    built = sorted(k for k, v in world.provenance.items() if v != "loaded")
    console.print(f"world: {world.directory}  (cache root: {escape(_cache_origin(cache_dir))})")
    console.print(f"built in this call: {', '.join(built) or 'nothing (all cached)'}; build_world took {elapsed:.1f} s")
    grid_dir = world.directory / "samples"
    if grids_to is not None:
        save_sample_grids(world.reference.samples, world.reference.labels, grids_to)
        grid_dir = grids_to
    console.print(f"sample grids: {grid_dir}/digit_<0..9>.png, {grid_dir}/overview.png")


@digits_app.command("teacher")
def teacher(cache_dir: Path = typer.Option(None, "--cache-dir", help=_CACHE_HELP),
            quick: bool = typer.Option(False, "--quick", help="shortened schedule"),
            overrides: list[str] = typer.Option(None, "--set", help=_SET_HELP),
            progress: bool = typer.Option(True, "--progress/--no-progress")):
    """Train (or load) only the teacher; print where it and its loss curve are."""
    from senseflow.worlds.digits import build_teacher

    console = Console()
    cfg = _config(quick, overrides)
    t0 = time.perf_counter()
    model, _, _, directory, provenance = build_teacher(cfg, cache_dir=cache_dir, progress=progress)
    n = sum(p.numel() for p in model.parameters())
    console.print(f"teacher ({provenance['teacher']}, {n:,} parameters, {time.perf_counter() - t0:.1f} s): "
                  f"{directory / 'teacher'}")
    if (directory / "teacher_loss.png").exists():
        console.print(f"loss curve: {directory / 'teacher_loss.png'}")


@digits_app.command("show-config")
def show_config(quick: bool = typer.Option(False, "--quick"),
                overrides: list[str] = typer.Option(None, "--set", help=_SET_HELP)):
    """Print the resolved config and its hash (the cache key)."""
    import json

    cfg = _config(quick, overrides)
    Console().print_json(json.dumps({"hash": cfg.config_hash(), "config": cfg.model_dump(mode="json")}))


@digits_app.command("baselines")
def baselines(grid: str = typer.Option(..., "--grid", help="grid name whose table gets the reference rows"),
              root: Path = typer.Option(Path("results"), help="results root (holds runs/)"),
              cache_dir: Path = typer.Option(None, "--cache-dir", help=_CACHE_HELP),
              anchors: list[int] = typer.Option(None, "--anchors", help=(
                  "the students' anchor indices, noisiest first, one flag each (e.g. --anchors 999 for 1-step "
                  "students; default: the world's 4 anchors)"))):
    """Record the world's reference rows (teacher 50 steps: the floor; the teacher at the students' anchors: do
    nothing) in a grid's results, so the ablation table shows what every student is compared with."""
    from pydantic import ValidationError

    from senseflow.config import GeneratorConfig
    from senseflow.errors import UserError
    from senseflow.worlds.digits import build_world
    from senseflow.worlds.digits.components import record_reference_rows

    if anchors:
        try:
            GeneratorConfig(anchor_indices=anchors)
        except ValidationError as e:
            raise UserError(f"--anchors {' '.join(map(str, anchors))}: {e.errors()[0]['msg'].removeprefix('Value error, ')}"
                            "; give each index with its own --anchors, in [0, 999], noisiest first") from None
    world = build_world(cache_dir=cache_dir, progress=False)
    for path in record_reference_rows(world, root / "runs", grid, anchors or None):
        typer.echo(f"recorded {path}")
