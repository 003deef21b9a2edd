"""`senseflow grid plan | run | status FILE`: experiment grids (senseflow.grid, senseflow.launch)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from senseflow.grid import Grid, RunSpec, cell_state, fmt_overrides, load_grid, write_manifest

app = typer.Typer(no_args_is_help=True)
out = Console(highlight=False, soft_wrap=False, width=200, emoji=False)

_STYLE = {"done": "green", "completed": "green", "new": "white", "partial": "yellow", "running": "cyan",
          "failed": "red", "diverged": "magenta", "queued": "cyan", "stopped": "yellow"}


def results_root(grid: Grid) -> Path:
    """The folder holding runs/ (sync's results_root): the parent of output.root (results/runs -> results)."""
    return grid.root.parent


def db_path(grid: Grid, db: Path | None) -> Path:
    if db is not None:
        return db
    if grid.db:
        return Path(grid.db)
    return results_root(grid) / "senseflow.duckdb"


def sync_store(root: Path, db: Path) -> str:
    """Rebuild the DuckDB store if evals.store is installed; returns a one-line summary."""
    try:
        from evals import store
    except ImportError:
        return "results store not available (evals.store missing): skipped sync"
    counts = store.sync(Path(root), Path(db))
    return (f"synced {db}: {counts.get('runs', 0)} runs, {counts.get('eval_metrics', 0)} eval rows, "
            f"{counts.get('train_metrics', 0)} train rows")


def _header(grid: Grid, specs: list[RunSpec]) -> None:
    cells = len({s.name for s in specs})
    out.print(f"[bold]grid {escape(grid.name)}[/]  ({escape(str(grid.path or 'inline'))}): {cells} cells, "
              f"{len(specs)} runs -> {escape(str(grid.root / grid.name))}")
    if grid.description:
        out.print(f"  {escape(grid.description.strip())}")
    bases = sorted({s.base for s in specs})
    out.print(f"  base: {escape(', '.join(bases))}")
    if grid.common:
        out.print(f"  every run: {escape(fmt_overrides(grid.common))}")


def _final_metrics(run_dir: Path, limit: int = 3) -> str:
    try:
        evs = json.loads((run_dir / "eval.json").read_text())["evaluations"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    final = [e for e in evs if str(e.get("label", "")).startswith("final")] or evs
    m = final[0].get("metrics", {}) if final else {}
    return ", ".join(f"{k}={v:.4g}" for k, v in list(m.items())[:limit] if isinstance(v, (int, float)))


def _table(grid: Grid, specs: list[RunSpec], detail: bool) -> dict[str, int]:
    from senseflow.launch import live_slurm_jobs
    from senseflow.run_folder import JOB_FILE, read_json

    live = live_slurm_jobs(specs)
    t = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    several_bases = len({s.base for s in specs}) > 1
    cols = ["#", "cell", "seed", "run_id", "state"] + (["base"] if several_bases and not detail else [])
    for col in cols + ["overrides" if not detail else "job / eval"]:
        t.add_column(col, overflow="fold")
    counts: dict[str, int] = {}
    for s in specs:
        st = cell_state(s)
        kind = "queued" if s.run_id in live and st.kind in ("new", "partial") else st.kind
        text = f"queued(job {live[s.run_id]})" if kind == "queued" else st.describe()
        counts[kind] = counts.get(kind, 0) + 1
        if detail:
            rec = read_json(s.run_dir / JOB_FILE)
            job = f"{rec.get('executor', '')} {rec.get('job_id', '')}".strip()
            if rec.get("requeues"):
                job += f" (requeued {rec['requeues']}x)"
            extra = "  ".join(x for x in (job, _final_metrics(s.run_dir)) if x)
        else:
            extra = fmt_overrides(s.overrides) or "-"
        row = [str(s.index), escape(s.name), str(s.seed), s.run_id, f"[{_STYLE.get(kind, 'white')}]{escape(text)}[/]"]
        if several_bases and not detail:
            row.append(escape(s.base))
        t.add_row(*row, escape(extra))
    out.print(t)
    out.print("  " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return counts


@app.command()
def plan(file: Path = typer.Argument(..., help="grid YAML, e.g. experiments/digits/ablation.yaml"),
         only: list[str] = typer.Option(None, "--only", help="cells whose name matches (glob; repeatable)"),
         seeds: list[int] = typer.Option(None, "--seeds", help="only the runs of these seeds (repeatable)")):
    """Dry run: every cell, its own overrides and what is already done (new / done / partial / failed)."""
    grid = load_grid(file)
    specs = grid.select(only, seeds)
    _header(grid, specs)
    _table(grid, specs, detail=False)
    from senseflow import preflight

    for line in preflight.render(preflight.check_many(s.cfg for s in specs)):
        out.print(escape(line))


@app.command()
def status(file: Path = typer.Argument(..., help="grid YAML"),
           only: list[str] = typer.Option(None, "--only", help="cells whose name matches (glob; repeatable)")):
    """Where every run of the grid stands: state, iteration, job, final metrics, failure reasons."""
    grid = load_grid(file)
    specs = grid.select(only)
    _header(grid, specs)
    _table(grid, specs, detail=True)


@app.command()
def run(file: Path = typer.Argument(..., help="grid YAML"),
        executor: str = typer.Option("local", help="local (processes here) | debug (in this process) | slurm"),
        profile: str = typer.Option(None, help="SLURM profile: slurm/NAME.yaml or a path (executor slurm)"),
        parallel: int = typer.Option(None, help="runs at once (local: default cores // train.threads; "
                                               "slurm: array parallelism, default from the profile)"),
        only: list[str] = typer.Option(None, "--only", help="cells whose name matches (glob; repeatable)"),
        seeds: list[int] = typer.Option(None, "--seeds", help="only the runs of these seeds (repeatable; the "
                                                              "others can run later and join the same tables)"),
        sync: bool = typer.Option(True, "--sync/--no-sync", help="rebuild the DuckDB store at the end"),
        db: Path = typer.Option(None, help="DuckDB file (default: grid's `db:` or <results>/senseflow.duckdb)"),
        evaluate: bool = typer.Option(True, "--eval/--no-eval", help="evaluate each run after training"),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="run failed cells again (resume) and diverged ones anew"),
        wait: bool = typer.Option(True, "--wait/--no-wait", help="slurm: wait for the jobs (else submit and exit)"),
        job: str = typer.Option("execute", help="job function: execute | smoke (stand-in) | module:function"),
        allow_missing: bool = typer.Option(False, "--allow-missing", help="submit even when input files are missing")):
    """Run every cell that is not done; interrupted runs resume from their last checkpoint."""
    from senseflow import preflight
    from senseflow.launch import check_executor, launch

    check_executor(executor)
    grid = load_grid(file)
    specs = grid.select(only, seeds)
    missing = preflight.missing_lines(preflight.check_many(s.cfg for s in specs))
    if missing and not allow_missing:
        for line in missing:
            typer.echo(line, err=True)
        typer.echo(f"{len(missing)} input(s) missing: nothing submitted; fix them or pass --allow-missing", err=True)
        raise SystemExit(2)
    _header(grid, specs)
    write_manifest(grid)

    from senseflow.progress import GridProgress

    prog = GridProgress(out, specs)  # live bars on a terminal, plain lines in logs

    def on_event(kind: str, spec: RunSpec | None, **info) -> None:
        prog.on_event(kind, spec, **info)
        if kind == "skip":
            why = info["state"].split(":", 1)[1]
            extra = f": {info['reason']}" if info.get("reason") else ""
            prog.print(f"  [dim]skip[/] {escape(spec.label)} {spec.run_id} [{_STYLE.get(why, 'white')}]{why}[/]"
                       f"{escape(extra)}")
        elif kind == "submit":
            prog.print(f"  start {escape(spec.label)} {spec.run_id} (job {info['job_id']})")
        elif kind == "finish":
            st = info["state"]
            reason = f": {info['reason']}" if info.get("reason") and st != "completed" else ""
            prog.print(f"  [{_STYLE.get(st, 'white')}]{st}[/] {escape(spec.label)} {spec.run_id} "
                       f"in {info.get('seconds', 0):.1f}s{escape(reason)}")
        elif kind == "detach":
            prog.print(f"  submitted SLURM jobs {', '.join(info['jobs'])}; follow with `senseflow grid status {file}`")

    try:
        with prog:
            report = launch(specs, executor=executor, profile=profile, parallel=parallel, job=job, evaluate=evaluate,
                            retry_failed=retry_failed, wait=wait, on_event=on_event)
    except KeyboardInterrupt:
        where = ("the SLURM jobs keep running; follow them with `senseflow grid status`" if executor == "slurm"
                 else "interrupted runs resume from their last checkpoint on the next `grid run`")
        out.print(f"  interrupted: {where}")
        raise SystemExit(130) from None
    counts: dict[str, int] = {}
    for o in report.outcomes:
        counts[o.state] = counts.get(o.state, 0) + 1
    out.print("  " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if sync and (wait or executor != "slurm"):
        out.print("  " + escape(sync_store(results_root(grid), db_path(grid, db))))
    if counts.get("failed"):
        raise SystemExit(1)  # (typer.Exit's code is lost under standalone_mode=False)
