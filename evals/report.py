"""The results report of a grid: one self-contained HTML page to open or share.

`build_report(db, grid, results_root, out)` writes a page holding the ablation table (mean and 95 % interval
per configuration, best per column in bold, as `evals.tables` computes them), training and evaluation curves
(`evals.plots`), the teacher next to each configuration on the same prompts, the final sample grid of every
run and the resolved config of every run. Everything is inline:
images are PNG data URIs, the style is in the page, there is no script and nothing is fetched, so the file
works offline, attached to a mail or opened from a cluster's file system.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import os
import tempfile
from pathlib import Path

from senseflow.run_folder import code_version

from .metrics import higher_is_better
from .store import query
from .tables import DISPLAY_NAMES, build_ablation_table

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>SenseFlow results: {{ grid }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ddd; padding: .3rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eee; }
figure { display: inline-block; margin: .5rem; vertical-align: top; }
figcaption { font-size: .85rem; color: #555; }
pre { background: #f6f6f6; padding: .6rem; overflow-x: auto; font-size: .8rem; }
.note { color: #555; font-size: .9rem; }
</style></head><body>
<h1>Grid {{ grid }}</h1>
<p class="note">{{ runs|length }} runs; evaluation '{{ label }}'; generated {{ when }} by senseflow {{ version }}.</p>
<h2>Ablation table</h2>
{% if table %}
<table id="ablation"><thead><tr><th>Configuration</th><th>seeds</th>
{% for m in table.metrics %}<th>{{ m.title }} {{ m.arrow }}</th>{% endfor %}</tr></thead><tbody>
{% for row in table.rows %}<tr><td>{{ row.variant }}</td><td>{{ row.seeds }}</td>
{% for c in row.cells %}<td>{% if c.best %}<b>{{ c.text }}</b>{% else %}{{ c.text }}{% endif %}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
<p class="note">Mean [95% interval]: t-interval over seeds, or with one seed the run's own bootstrap interval;
best configuration per column in bold (reference rows are never marked); ↓ lower is better, ↑ higher is better.</p>
{% if table.paired %}<h3>Paired difference to {{ compare_to }}</h3>
<table id="paired"><thead><tr><th>Configuration</th><th>pairs</th>
{% for m in table.metrics %}<th>Δ {{ m.title }} {{ m.arrow }}</th>{% endfor %}</tr></thead><tbody>
{% for row in table.paired %}<tr><td>{{ row.variant }}</td><td>{{ row.pairs }}</td>
{% for c in row.cells %}<td>{{ c.text }}{% if c.excludes_0 %} *{% endif %}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
<p class="note">Mean over the seeds both have of (configuration − {{ compare_to }}) [95% t-interval]; * the
interval excludes 0.</p>{% endif %}
{% else %}<p>No evaluations labelled '{{ label }}' yet.</p>{% endif %}
<h2>Curves</h2>
{% for p in plots %}<figure><img src="{{ p.src }}" alt="{{ p.name }}"><figcaption>{{ p.name }}</figcaption></figure>
{% else %}<p>No logged metrics yet.</p>{% endfor %}
<h2>Samples</h2>
{% if compare %}<figure><img src="{{ compare }}" alt="teacher and configurations on the same prompts and seeds">
<figcaption>The teacher and each configuration (lowest seed) on the same prompts and seeds.</figcaption></figure>
{% endif %}
{% for r in runs if r.samples %}<figure><img src="{{ r.samples }}" alt="samples of {{ r.variant }} seed {{ r.seed }}">
<figcaption>{{ r.variant }}, seed {{ r.seed }} ({{ r.state }})</figcaption></figure>
{% else %}<p>No sample grids yet.</p>{% endfor %}
<h2>Runs and their resolved configs</h2>
{% for r in runs %}<details><summary>{{ r.variant }}, seed {{ r.seed }}: {{ r.state }} (run {{ r.run_id }})</summary>
<pre>{{ r.config }}</pre></details>
{% endfor %}
</body></html>
"""


def data_uri(path: str | os.PathLike) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _num(x: str) -> str:
    return f"{float(x):.4g}"


def _table(csv_path: Path) -> dict | None:
    rows = list(csv.DictReader(csv_path.open()))
    if not rows:
        return None
    metrics = [k[:-5] for k in rows[0] if k.endswith("_mean") and not k.endswith("_diff_mean")]
    out = {"metrics": [{"title": DISPLAY_NAMES.get(m, m), "arrow": "↑" if higher_is_better(m) else "↓"}
                       for m in metrics], "rows": [], "paired": []}
    for r in rows:
        if any(r.get(f"{m}_diff_mean") for m in metrics):
            cells = []
            for m in metrics:
                if not r.get(f"{m}_diff_mean"):
                    cells.append({"text": "–", "excludes_0": False})
                    continue
                text = f"{float(r[f'{m}_diff_mean']):+.4g}"
                if r[f"{m}_diff_lo"]:
                    text += f" [{_num(r[f'{m}_diff_lo'])}, {_num(r[f'{m}_diff_hi'])}]"
                cells.append({"text": text, "excludes_0": r[f"{m}_diff_excludes_0"] == "1"})
            out["paired"].append({"variant": r["variant"], "pairs": r[f"{metrics[0]}_diff_n"], "cells": cells})
    for r in rows:
        cells = []
        for m in metrics:
            if not r[f"{m}_mean"]:
                cells.append({"text": "–", "best": False})
                continue
            text = _num(r[f"{m}_mean"])
            if r[f"{m}_lo"] and r[f"{m}_hi"]:
                text += f" [{_num(r[f'{m}_lo'])}, {_num(r[f'{m}_hi'])}]"
            cells.append({"text": text, "best": r[f"{m}_best"] == "1"})
        out["rows"].append({"variant": r["variant"], "seeds": r["seeds"], "cells": cells})
    return out


def build_report(db_path: str | os.PathLike, grid: str, out_path: str | os.PathLike, *, label: str = "final",
                 train_metrics: tuple[str, ...] = ("loss_dmd", "loss_fake", "loss_isg", "grad_norm_g")) -> Path:
    """Write the report of `grid` (runs as recorded in the DuckDB file `db_path`) to `out_path`; returns it."""
    from jinja2 import Environment

    from .grid_view import grid_view
    from .plots import plot_ablation, plot_grid_samples, plot_metric_curves

    _, runs = query(db_path, "select run_id, variant, seed, state, run_dir from runs where grid = ? and current "
                             "order by variant, seed", [grid])
    if not runs:
        raise ValueError(f"no runs of grid {grid!r} in {db_path}; run `senseflow results sync` after `grid run`")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            table = _table(Path(build_ablation_table(db_path, grid, None, out_dir=tmp, label=label)["csv"]))
        except ValueError:  # no evaluation with this label yet
            table = None
        plots = []
        view = grid_view(db_path, grid)
        if table is not None:
            for m in [view.paper_metric] if view.paper_metric else ["fid_t"]:
                if any(x["title"] == DISPLAY_NAMES.get(m, m) for x in table["metrics"]):
                    p = plot_ablation(db_path, grid, m, label=label, view=view, out_dir=tmp)
                    plots.append({"name": f"{m} per configuration (seeds, mean ± 95% CI)", "src": data_uri(p)})
        _, names = query(db_path, "select distinct t.name from train_metrics t join runs r using (run_id) "
                                  "where r.grid = ? order by 1", [grid])
        for m in [m for m in train_metrics if (m,) in names]:
            p = plot_metric_curves(db_path, grid, m, source="train", out_dir=tmp, smooth=3)
            plots.append({"name": f"{m} (training)", "src": data_uri(p)})
        _, evals = query(db_path, "select distinct e.name from eval_metrics e join runs r using (run_id) "
                                  "where r.grid = ? and e.label != 'final' order by 1", [grid])
        for (m,) in evals:
            p = plot_metric_curves(db_path, grid, m, source="eval", out_dir=tmp)
            plots.append({"name": f"{m} (evaluations during training)", "src": data_uri(p)})
        compare = plot_grid_samples(db_path, grid, Path(tmp) / "samples.png")
        compare = data_uri(compare) if compare is not None else None
    rank = {v: i for i, v in enumerate(view.arrange({r[1] for r in runs if r[1] is not None}))}
    cells = []
    for run_id, variant, seed, state, run_dir in sorted(runs, key=lambda r: (rank.get(r[1], len(rank)), r[2] or 0)):
        folder = Path(run_dir)
        samples = folder / "samples" / "final.png"
        config = folder / "config.yaml"
        cells.append({"run_id": run_id, "variant": variant, "seed": seed, "state": state,
                      "samples": data_uri(samples) if samples.is_file() else None,
                      "config": config.read_text() if config.is_file() else "(no config.yaml)"})
    html = Environment(autoescape=True).from_string(_TEMPLATE).render(
        grid=grid, label=label, table=table, plots=plots, runs=cells, compare=compare, version=code_version(),
        compare_to=view.compare_to,
        when=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out
