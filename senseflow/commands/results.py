"""`senseflow results sync | query | table | plots`: the DuckDB store and what is built from it."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from senseflow.errors import UserError

app = typer.Typer(no_args_is_help=True)

FORMATS = ("table", "csv", "json")
ROOT_HELP = "results root (holds runs/<grid>/<run_id>/ and senseflow.duckdb)"


def _db(root: Path, db: Path | None) -> Path:
    return Path(db) if db else Path(root) / "senseflow.duckdb"


@app.command()
def sync(root: Path = typer.Option(Path("results"), help=ROOT_HELP), db: Path = typer.Option(None)):
    """Build or refresh the DuckDB file from the run folders (idempotent; the file can be deleted)."""
    from evals.store import sync as do_sync

    counts = do_sync(root, _db(root, db))
    typer.echo(" ".join(f"{k}={v}" for k, v in counts.items()))


@app.command()
def query(sql: str = typer.Argument(..., help="read-only SQL over tables runs, train_metrics, eval_metrics, grids"),
          root: Path = typer.Option(Path("results"), help=ROOT_HELP), db: Path = typer.Option(None),
          fmt: str = typer.Option("table", "--format", help="table | csv | json")):
    """Run a read-only query and print the rows."""
    from evals.store import QueryError
    from evals.store import query as do_query

    if fmt not in FORMATS:
        raise UserError(f"--format={fmt!r} is not one of {', '.join(FORMATS)}")
    path = _db(root, db)
    if not path.is_file():
        raise UserError(f"no database at {path}; run `senseflow results sync` first")
    try:
        cols, rows = do_query(path, sql)
    except QueryError as e:
        raise UserError(f"results query: {e}") from None
    if fmt == "json":
        typer.echo(json.dumps([dict(zip(cols, r)) for r in rows], default=str, indent=1))
    elif fmt == "csv":
        import csv
        import sys

        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(rows)
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(*cols)
        for r in rows:
            t.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
        Console().print(t)


@app.command()
def table(grid: str = typer.Argument(..., help="grid name (output.grid)"),
          metrics: list[str] = typer.Option(None, "--metric", "-m", help="columns, in order (default: all)"),
          root: Path = typer.Option(Path("results"), help=ROOT_HELP), db: Path = typer.Option(None),
          label: str = typer.Option("final"), sync_first: bool = typer.Option(True, "--sync/--no-sync")):
    """The ablation table: rows = configurations, mean and 95% interval over seeds, best marked.

    Written as Markdown, LaTeX and CSV to <root>/tables/ and printed."""
    from evals.store import sync as do_sync
    from evals.tables import build_ablation_table

    path = _db(root, db)
    if sync_first:
        do_sync(root, path)
    try:
        files = build_ablation_table(path, grid, metrics or None, out_dir=Path(root) / "tables", label=label)
    except ValueError as e:
        raise UserError(str(e)) from None
    typer.echo(files.markdown)
    typer.echo("written: " + ", ".join(str(p) for p in files.values()))


@app.command()
def plots(grid: str = typer.Argument(..., help="grid name (output.grid)"),
          root: Path = typer.Option(Path("results"), help=ROOT_HELP), db: Path = typer.Option(None),
          train_metrics: list[str] = typer.Option(["loss_dmd", "loss_fake", "loss_isg", "grad_norm_g"], "--train-metric"),
          sync_first: bool = typer.Option(True, "--sync/--no-sync")):
    """Training curves per configuration (seed bands) and a teacher-vs-configurations sample grid."""
    from evals.grid_view import grid_view
    from evals.plots import plot_ablation, plot_grid_samples, plot_metric_curves
    from evals.store import query as do_query
    from evals.store import sync as do_sync

    path = _db(root, db)
    if sync_first:
        do_sync(root, path)
    out_dir = Path(root) / "plots"
    written = []
    _, present = do_query(path, "select distinct name from train_metrics t join runs r using (run_id) where r.grid = ?",
                          [grid])
    names = {n for (n,) in present}
    for m in train_metrics:
        if m in names:
            written.append(plot_metric_curves(path, grid, m, source="train", out_dir=out_dir, smooth=3))
    _, evals = do_query(path, "select distinct e.name from eval_metrics e join runs r using (run_id) "
                              "where r.grid = ? and e.label != 'final'", [grid])
    for (m,) in evals:
        written.append(plot_metric_curves(path, grid, m, source="eval", out_dir=out_dir))
    view = grid_view(path, grid)
    _, finals = do_query(path, "select distinct e.name from eval_metrics e join runs r using (run_id) "
                               "where r.grid = ? and e.label = 'final'", [grid])
    metric = view.paper_metric or "fid_t"
    if (metric,) in finals:  # the ablation as points, beside the paper's values where the grid file gives them
        written.append(plot_ablation(path, grid, metric, view=view, out_dir=out_dir))
    # sample grid: the teacher, then one run (lowest seed) per configuration, same prompts and seeds
    samples = plot_grid_samples(path, grid, out_dir / f"{grid}_samples.png")
    if samples is not None:
        written.append(samples)
    if not written:
        raise UserError(f"nothing to plot for grid {grid!r}: no runs of it in {path}")
    for p in written:
        typer.echo(f"wrote {p}")


@app.command()
def report(grid: str = typer.Argument(..., help="grid name (output.grid)"),
           root: Path = typer.Option(Path("results"), help=ROOT_HELP), db: Path = typer.Option(None),
           out: Path = typer.Option(None, help="HTML file (default <root>/reports/<grid>.html)"),
           label: str = typer.Option("final"), sync_first: bool = typer.Option(True, "--sync/--no-sync")):
    """One self-contained HTML page: ablation table with intervals, curves, sample grids, resolved configs."""
    from evals.report import build_report
    from evals.store import sync as do_sync

    path = _db(root, db)
    if sync_first:
        do_sync(root, path)
    if not path.is_file():
        raise UserError(f"no database at {path}; run `senseflow results sync` first")
    try:
        written = build_report(path, grid, out or Path(root) / "reports" / f"{grid}.html", label=label)
    except ValueError as e:
        raise UserError(str(e)) from None
    typer.echo(f"wrote {written}")
