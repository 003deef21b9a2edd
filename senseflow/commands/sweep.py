"""`senseflow sweep FILE` (= `sweep run FILE`) and `senseflow sweep show FILE`: Optuna sweeps (senseflow.sweep)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

out = Console(highlight=False, soft_wrap=False, width=200, emoji=False)


class _RunByDefault(TyperGroup):
    """`senseflow sweep FILE ...` means `senseflow sweep run FILE ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_RunByDefault, no_args_is_help=True)


@app.command("run")
def run(file: Path = typer.Argument(..., help="sweep YAML, e.g. experiments/sweeps/digits-ida-isg.yaml"),
        trials: int = typer.Option(None, help="total trials the study should hold (default: the file's `trials`)"),
        workers: int = typer.Option(1, help="parallel workers (processes, or SLURM jobs), sharing the study"),
        executor: str = typer.Option("local", help="local | debug (in this process, one worker) | slurm"),
        profile: str = typer.Option(None, help="SLURM profile for each worker (executor slurm)"),
        storage: str = typer.Option(None, help="study storage: .db (SQLite), .journal file or a database URL"),
        job: str = typer.Option("execute", help="job function: execute | smoke (stand-in) | module:function"),
        sync: bool = typer.Option(True, "--sync/--no-sync", help="rebuild the DuckDB store at the end"),
        db: Path = typer.Option(None, help="DuckDB file (default <results>/senseflow.duckdb)")):
    """Run trials until the study holds --trials of them; each trial is an ordinary run."""
    from senseflow.launch import check_executor
    from senseflow.sweep import load_sweep, run_sweep

    check_executor(executor)  # before the header and before the study's storage is created
    sweep = load_sweep(file)
    target = trials or sweep.trials
    out.print(f"[bold]sweep {sweep.name}[/]: {len(sweep.params)} params, objectives "
              f"{', '.join(f'{o.metric} ({o.direction})' for o in sweep.objectives)}, {target} trials, "
              f"{workers} worker(s) on {executor}; runs -> {sweep.grid}")

    def on_event(kind: str, **info) -> None:
        if kind == "reclaim":
            out.print(f"  interrupted trials {info['trials']} re-enqueued (their runs resume)")
        elif kind == "complete":
            out.print(f"  the study already holds {info['n']} trials; nothing to run")
        elif kind == "workers":
            out.print(f"  workers: jobs {', '.join(info['jobs'])}; storage {info['storage']}")

    report = run_sweep(sweep, trials=target, workers=workers, executor=executor, profile=profile, job=job,
                       storage=storage, on_event=on_event)
    for e in report.errors:
        out.print(f"  [red]{escape(e)}[/]")
    out.print(f"  {sum(report.finished_by_worker)} trials run in {report.seconds:.1f}s")
    _show(sweep, report.storage, executor, top=5)
    if sync:
        from senseflow.commands.grid import sync_store

        root = Path(sweep.results_dir).parent
        out.print("  " + escape(sync_store(root, db or Path(sweep.db or root / "senseflow.duckdb"))))
    if report.errors:
        raise SystemExit(1)  # (typer.Exit's code is lost under standalone_mode=False)


@app.command("show")
def show(file: Path = typer.Argument(..., help="sweep YAML"),
         storage: str = typer.Option(None, help="study storage (default: the sweep's)"),
         executor: str = typer.Option("local", help="which default storage to look at first (slurm: journal)"),
         top: int = typer.Option(5, help="how many best trials to list (single objective)")):
    """Best trials (Pareto front for several objectives) and parameter importances."""
    from senseflow.sweep import load_sweep

    _show(load_sweep(file), storage, executor, top)


def _show(sweep, storage, executor, top: int) -> None:
    from optuna.trial import TrialState

    from senseflow.sweep import summarize

    s = summarize(sweep, storage, executor)
    out.print(f"[bold]study {sweep.name}[/] ({s['storage']}): "
              + ", ".join(f"{k.lower()}: {v}" for k, v in sorted(s["counts"].items())))
    study = s["study"]
    if not s["n_complete"]:
        rows, title = [], "no completed trials yet"
    elif len(sweep.objectives) == 1:
        o = sweep.objectives[0]
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        done.sort(key=lambda t: t.value, reverse=o.direction == "maximize")
        rows, title = done[:top], f"best {min(top, len(done))} by {o.metric} ({o.direction})"
    else:
        rows, title = sorted(s["best"], key=lambda t: t.number), "Pareto front"
    t = Table(title=title, title_justify="left", box=None, header_style="bold", show_edge=False)
    t.add_column("trial")
    for o in sweep.objectives:
        t.add_column(o.metric)
    for p in sweep.params:
        t.add_column(p.key)
    t.add_column("run_id")
    for tr in rows:
        vals = [f"{v:.4g}" for v in tr.values]
        params = [f"{tr.params[p.key]:.4g}" if isinstance(tr.params.get(p.key), float) else str(tr.params.get(p.key))
                  for p in sweep.params]
        t.add_row(str(tr.number), *vals, *map(escape, params), str(tr.user_attrs.get("run_id", "")))
    out.print(t)
    failed = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.FAIL and "outcome" in t.user_attrs]
    for t in failed[-3:]:
        out.print(f"  [red]trial {t.number} failed[/]: {escape(str(t.user_attrs['outcome']))}")
    for metric, imp in s["importances"].items():
        if not imp:
            out.print(f"  importance for {metric}: not available yet (needs completed trials that differ)")
        elif isinstance(imp, str):
            out.print(f"  importance for {metric}: {escape(imp)}")
        else:
            out.print(f"  importance for {metric}: " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()))
