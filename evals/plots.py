"""Plots (matplotlib, Agg backend), written as PNG with exact pixel sizes.

* `plot_metric_curves`: a metric against training iteration (or elapsed hours), one line per
  configuration = mean over seeds, with a band across seeds (sd, 95 % t-interval or min-max), from
  ``train_metrics`` or ``eval_metrics`` of the results database. Size: ``figsize * dpi`` pixels.
* `plot_sample_grid`: teacher vs each configuration on the same prompts and seeds: one row per
  (prompt, seed), one column per model. Size: ``(label_px + ncols * cell_px) x (header_px + nrows * cell_px)``.
* `plot_grid_samples`: that grid for a grid's completed runs (their evaluation previews), or None.
* `plot_ablation`: the ablation as points (mean over seeds with its 95 % t-interval, every seed as a dot),
  configurations in the grid's order, reference rows as horizontal lines, and the paper's published values
  for the same configurations on a second axis.

Every plot of a grid takes the grid's `GridView`: configurations in the grid file's order, one colour per
configuration in all of them.
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .grid_view import GridView, grid_view
from .metrics import higher_is_better
from .sample_set import SampleSet
from .store import query

__all__ = ["plot_metric_curves", "plot_sample_grid", "plot_grid_samples", "plot_ablation", "sample_grid_size"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "plot"


_CURVE_SQL = {
    "train": """
        WITH s AS (
            SELECT t.run_id, t.iteration, t.time, r.variant,
                   avg(t.value) OVER (PARTITION BY t.run_id ORDER BY t.iteration
                                      ROWS BETWEEN $window PRECEDING AND CURRENT ROW) AS value
            FROM train_metrics t JOIN runs r ON r.run_id = t.run_id AND r.grid = t.grid
            WHERE t.grid = $grid AND t.name = $metric AND list_contains($states, r.state) AND r.current
              AND t.value IS NOT NULL AND NOT isnan(t.value))
        SELECT coalesce(variant, '(none)') AS variant, iteration, avg(time) / 3600.0 AS hours,
               count(*) AS n, avg(value) AS mean, stddev_samp(value) AS sd, min(value) AS lo, max(value) AS hi
        FROM s GROUP BY ALL ORDER BY variant, iteration""",
    "eval": """
        WITH s AS (
            SELECT e.run_id, e.iteration, r.variant, e.value
            FROM eval_metrics e JOIN runs r ON r.run_id = e.run_id AND r.grid = e.grid
            WHERE e.grid = $grid AND e.name = $metric AND list_contains($states, r.state) AND r.current
              AND ($all_labels OR list_contains($labels, e.label))
              AND e.value IS NOT NULL AND NOT isnan(e.value))
        SELECT coalesce(variant, '(none)') AS variant, iteration, NULL AS hours,
               count(*) AS n, avg(value) AS mean, stddev_samp(value) AS sd, min(value) AS lo, max(value) AS hi
        FROM s GROUP BY ALL ORDER BY variant, iteration""",
}


def plot_metric_curves(db_path: str | os.PathLike, grid: str, metric: str, *, source: str = "eval",
                       labels: Sequence[str] | None = None, variants: Sequence[str] | None = None,
                       states: Sequence[str] = ("completed", "running", "diverged", "failed"),
                       band: str = "sd", smooth: int = 1, x: str = "iteration", logy: bool = False,
                       out_dir: str | os.PathLike = "results/plots", filename: str | None = None,
                       figsize: tuple[float, float] = (6.4, 4.0), dpi: int = 100, view: GridView | None = None,
                       reference_lines: bool = True) -> Path:
    """Plot ``metric`` vs training iteration per configuration (mean over seeds +- a band); returns the PNG path.

    ``source``: "train" (metrics.jsonl values) or "eval" (evaluations; ``labels`` restricts which).
    ``band``: "sd" (mean +- one standard deviation across seeds), "ci" (95 % t-interval) or
    "minmax"; no band where only one seed has a value. ``smooth``: trailing moving average over this
    many logged points per run before averaging (train curves). ``x``: "iteration" or "hours"
    (elapsed wall-clock, train only). Output: ``<out_dir>/<grid>_<source>_<metric>.png`` of
    ``figsize[0]*dpi x figsize[1]*dpi`` pixels. Order and colours: ``view`` (default `grid_view`); with
    ``reference_lines`` the reference rows' final values of an eval metric are drawn as dashed lines.
    """
    view = view or grid_view(db_path, grid)
    colours = view.colours
    if source not in _CURVE_SQL:
        raise ValueError(f"source={source!r}: use 'train' or 'eval'")
    if band not in ("sd", "ci", "minmax"):
        raise ValueError(f"band={band!r}: use 'sd', 'ci' or 'minmax'")
    if x not in ("iteration", "hours") or (x == "hours" and source != "train"):
        raise ValueError("x must be 'iteration', or 'hours' with source='train'")
    params: dict = {"grid": grid, "metric": metric, "states": list(states)}
    if source == "train":
        params["window"] = max(0, int(smooth) - 1)
    else:
        params.update(all_labels=labels is None, labels=list(labels or []))
    _, rows = query(db_path, _CURVE_SQL[source], params)
    if not rows:
        raise ValueError(f"no {source} values of {metric!r} for grid {grid!r} in {db_path}")
    by_variant: dict[str, list[tuple]] = {}
    for r in rows:
        by_variant.setdefault(r[0], []).append(r[1:])
    references = set(view.references)
    order = [v for v in (variants or view.arrange(by_variant)) if v in by_variant and v not in references]

    plt = _plt()
    fig = plt.figure(figsize=figsize, dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    for i, v in enumerate(order):
        arr = np.array([[np.nan if c is None else float(c) for c in r] for r in by_variant[v]], dtype=float)
        it, hours, n, mean, sd, lo, hi = arr.T
        xs = hours if x == "hours" else it
        color = colours.get(v, f"C{i % 10}")
        ax.plot(xs, mean, color=color, lw=1.6, label=f"{v} (n={int(np.nanmax(n))})", marker="o" if len(xs) < 20 else None,
                ms=3)
        ok = n >= 2
        if ok.any():
            if band == "sd":
                b_lo, b_hi = mean - sd, mean + sd
            elif band == "ci":
                from scipy import stats

                h = np.where(ok, stats.t.ppf(0.975, np.maximum(n - 1, 1)) * sd / np.sqrt(np.maximum(n, 1)), np.nan)
                b_lo, b_hi = mean - h, mean + h
            else:
                b_lo, b_hi = lo, hi
            ax.fill_between(xs, np.where(ok, b_lo, np.nan), np.where(ok, b_hi, np.nan), color=color, alpha=0.2, lw=0)
    if reference_lines and source == "eval":
        for v, value in _reference_values(db_path, grid, metric, view).items():
            ax.axhline(value, color=colours[v], ls="--", lw=1.0, label=v)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("training iteration" if x == "iteration" else "training time (h)")
    # a direction only where one exists: evaluation metrics; a training loss or gradient norm has none
    arrow = (" ↑" if higher_is_better(metric) else " ↓") if source == "eval" else ""
    ax.set_ylabel(f"{metric}{arrow}")
    band_txt = {"sd": "±1 sd", "ci": "95% CI", "minmax": "min–max"}[band]
    ax.set_title(f"{grid}: {metric} ({source}, mean over seeds, band {band_txt})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(plt, fig, Path(out_dir) / (filename or f"{_safe(grid)}_{source}_{_safe(metric)}.png"), dpi)


def _save(plt, fig, path: Path, dpi: int) -> Path:
    fig.tight_layout()  # moves the axes only: the figure keeps figsize * dpi pixels
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def sample_grid_size(nrows: int, ncols: int, *, cell_px: int = 128, label_px: int = 200, header_px: int = 32
                     ) -> tuple[int, int]:
    """(width, height) in pixels of a `plot_sample_grid` figure."""
    return label_px + ncols * cell_px, header_px + nrows * cell_px


def plot_sample_grid(columns: Mapping[str, SampleSet | str | os.PathLike | np.ndarray], *,
                     keys: Sequence[tuple[str, int]] | None = None, prompts: Sequence[str] | None = None,
                     n: int = 6, out_path: str | os.PathLike = "results/plots/sample_grid.png", cell_px: int = 128,
                     label_px: int = 200, header_px: int = 32, dpi: int = 100,
                     colours: Mapping[str, str] | None = None) -> Path:
    """Grid of samples: one column per model (put the teacher first), one row per (prompt, seed).

    ``columns``: name -> SampleSet, sample folder, or uint8 array (N, H, W, C). With sample sets the
    rows are (prompt, seed) keys present in every set (``keys``, or the first ``n`` of the first
    column's order); with arrays every column must be an array with the same N and row i is image i
    (``prompts`` labels the rows). Images are resized to ``cell_px`` squares. Output size: see
    `sample_grid_size`.
    """
    from PIL import Image

    if not columns:
        raise ValueError("no columns")
    names = list(columns)
    vals = list(columns.values())
    if all(isinstance(v, np.ndarray) for v in vals):
        counts = {len(v) for v in vals}
        if len(counts) != 1:
            raise ValueError(f"array columns have different lengths: {sorted(counts)}")
        rows = min(n, counts.pop())
        grid = [[v[i] for v in vals] for i in range(rows)]
        labels = list(prompts[:rows]) if prompts is not None else [f"#{i}" for i in range(rows)]
    elif any(isinstance(v, np.ndarray) for v in vals):
        raise ValueError("mix of arrays and sample sets: pass all arrays or all sample sets/folders")
    else:
        sets = [v if isinstance(v, SampleSet) else SampleSet.load(v) for v in vals]
        index = [{s.key: i for i, s in enumerate(ss.samples)} for ss in sets]
        if keys is None:
            keys = [s.key for s in sets[0].samples if all(s.key in ix for ix in index[1:])][:n]
        missing = [k for k in keys if not all(k in ix for ix in index)]
        if missing:
            raise ValueError(f"(prompt, seed) {missing[0]!r} is missing from some columns")
        if not keys:
            raise ValueError("the sample sets share no (prompt, seed)")
        grid = [[ss.image(ix[k]) for ss, ix in zip(sets, index)] for k in keys]
        labels = [f"{p} (seed {s})" for p, s in keys]

    nrows, ncols = len(grid), len(names)
    W, H = sample_grid_size(nrows, ncols, cell_px=cell_px, label_px=label_px, header_px=header_px)
    plt = _plt()
    fig = plt.figure(figsize=(W / dpi, H / dpi), dpi=dpi)
    fs = max(6, min(10, cell_px // 14))
    chars = max(10, int(label_px / (0.62 * fs * dpi / 72)))
    for j, name in enumerate(names):
        fig.text((label_px + (j + 0.5) * cell_px) / W, 1 - (header_px / 2) / H, name, ha="center", va="center",
                 fontsize=fs, weight="bold", clip_on=True, color=(colours or {}).get(name, "black"))
    for i, row in enumerate(grid):
        y0 = H - header_px - (i + 1) * cell_px
        lines = textwrap.wrap(labels[i], chars)
        max_lines = max(1, int(cell_px / (1.3 * fs * dpi / 72)))
        if len(lines) > max_lines:
            lines = lines[:max_lines - 1] + [lines[max_lines - 1][: max(1, chars - 1)] + "…"]
        fig.text(6 / W, (y0 + cell_px / 2) / H, "\n".join(lines), ha="left", va="center", fontsize=fs - 1)
        for j, img in enumerate(row):
            a = np.asarray(img)
            if a.ndim == 3 and a.shape[2] == 1:
                a = a[:, :, 0]
            im = Image.fromarray(a.astype(np.uint8)).convert("RGB").resize((cell_px, cell_px), Image.BICUBIC)
            ax = fig.add_axes([(label_px + j * cell_px) / W, y0 / H, cell_px / W, cell_px / H])
            ax.imshow(np.asarray(im), interpolation="nearest")
            ax.set_axis_off()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def plot_grid_samples(db_path: str | os.PathLike, grid: str, out_path: str | os.PathLike, *, rows: int = 12,
                      cell_px: int = 64, label_px: int = 220, view: GridView | None = None) -> Path | None:
    """The teacher, then one run (lowest seed) per configuration in the grid's order, on the same prompts and
    seeds: the evaluation previews (``eval_samples/preview``, ``teacher_preview``) of the grid's completed runs;
    column titles in each configuration's colour. None when fewer than two columns have previews."""
    view = view or grid_view(db_path, grid)
    _, runs = query(db_path, "select variant, seed, run_dir from runs where grid = ? and state = 'completed' and current "
                             "order by variant, seed", [grid])
    columns: dict[str, SampleSet] = {}
    for variant, _seed, run_dir in runs:
        preview = Path(run_dir) / "eval_samples" / "preview"
        teacher = Path(run_dir) / "eval_samples" / "teacher_preview"
        if "teacher" not in columns and (teacher / "manifest.jsonl").is_file():
            columns["teacher"] = SampleSet.load(teacher)
        if variant not in columns and (preview / "manifest.jsonl").is_file():
            columns[variant] = SampleSet.load(preview)
    if len(columns) < 2:
        return None
    columns = {k: columns[k] for k in ["teacher"] + view.arrange([c for c in columns if c != "teacher"]) if k in columns}
    keys, seen = [], set()
    for prompt, seed in ((x.prompt, x.seed) for x in next(iter(columns.values()))):  # a row per prompt, first seed
        if prompt not in seen:
            seen.add(prompt)
            keys.append((prompt, seed))
    return plot_sample_grid(columns, keys=keys[:rows], out_path=out_path, cell_px=cell_px, label_px=label_px,
                            colours=view.colours)


_REFERENCE_VALUES_SQL = """
SELECT r.variant, avg(e.value) FROM eval_metrics e JOIN runs r ON r.run_id = e.run_id AND r.grid = e.grid
WHERE e.grid = $grid AND e.name = $metric AND e.label = 'final' AND list_contains($references, r.variant)
  AND r.current
GROUP BY ALL
"""


def _reference_values(db_path, grid: str, metric: str, view: GridView) -> dict[str, float]:
    if not view.references:
        return {}
    rows = query(db_path, _REFERENCE_VALUES_SQL, {"grid": grid, "metric": metric,
                                                  "references": list(view.references)})[1]
    got = {v: float(x) for v, x in rows if x is not None}
    return {v: got[v] for v in view.references if v in got}


_POINTS_SQL = """
WITH latest AS (
    SELECT r.variant, r.seed, e.value,
           row_number() OVER (PARTITION BY e.run_id ORDER BY e.iteration DESC) AS rk
    FROM eval_metrics e JOIN runs r ON r.run_id = e.run_id AND r.grid = e.grid
    WHERE e.grid = $grid AND e.name = $metric AND e.label = $label AND r.state = 'completed' AND r.current
      AND e.value IS NOT NULL AND NOT isnan(e.value))
SELECT variant, seed, value FROM latest WHERE rk = 1 ORDER BY variant, seed
"""


def plot_ablation(db_path: str | os.PathLike, grid: str, metric: str = "fid_t", *, label: str = "final",
                  view: GridView | None = None, out_dir: str | os.PathLike = "results/plots",
                  filename: str | None = None, figsize: tuple[float, float] = (6.4, 4.0), dpi: int = 100) -> Path:
    """The ablation as points: per configuration (grid order) every seed's value as a dot and the mean with its
    95 % t-interval; reference rows as dashed lines; where the grid file gives the paper's values of this
    metric, those on a second y axis (hollow diamonds), so the pattern can be compared across scales.
    Output: ``<out_dir>/<grid>_ablation_<metric>.png``."""
    from scipy import stats

    view = view or grid_view(db_path, grid)
    rows = query(db_path, _POINTS_SQL, {"grid": grid, "metric": metric, "label": label})[1]
    refs = set(view.references)
    by_variant: dict[str, list[float]] = {}
    for v, _seed, value in rows:
        if v not in refs:
            by_variant.setdefault(v, []).append(float(value))
    if not by_variant:
        raise ValueError(f"no '{label}' values of {metric!r} for grid {grid!r} in {db_path}")
    order = view.arrange(by_variant)
    colours = view.colours
    plt = _plt()
    fig = plt.figure(figsize=figsize, dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    xs = np.arange(len(order))
    for i, v in enumerate(order):
        vals = np.array(by_variant[v])
        c = colours.get(v, f"C{i % 10}")
        ax.scatter(np.full(len(vals), i) + np.linspace(-0.12, 0.12, len(vals)), vals, s=10, color=c, alpha=0.5, lw=0)
        mean = vals.mean()
        h = stats.t.ppf(0.975, len(vals) - 1) * vals.std(ddof=1) / np.sqrt(len(vals)) if len(vals) > 1 else 0.0
        ax.errorbar([i + 0.22], [mean], yerr=[[h], [h]], fmt="o", color=c, ms=5, capsize=3, lw=1.4)
    for v, value in _reference_values(db_path, grid, metric, view).items():
        ax.axhline(value, color=colours[v], ls="--", lw=1.0, label=v)
    ax.set_xticks(xs)
    ax.set_xticklabels(order, rotation=20, ha="right", fontsize=8)
    arrow = "↑" if higher_is_better(metric) else "↓"
    ax.set_ylabel(f"{metric} {arrow} (this grid: seeds, mean ± 95% CI)")
    ax.grid(alpha=0.3, axis="y")
    paper = {v: x for v, x in view.paper.items() if v in order} if view.paper_metric == metric else {}
    if paper:
        ax2 = ax.twinx()
        px = [order.index(v) - 0.22 for v in paper]
        ax2.scatter(px, list(paper.values()), marker="D", s=36, facecolors="none",
                    edgecolors=[colours.get(v, "k") for v in paper], lw=1.4, label="paper")
        ax2.set_ylabel(f"paper's {metric} ◇ ({view.paper_source})" if view.paper_source else f"paper's {metric} ◇",
                       fontsize=8)
        lo = min(paper.values())
        ax2.set_ylim(0, max(paper.values()) * 1.1 if lo >= 0 else None)
    ax.set_ylim(bottom=0 if min(min(x) for x in by_variant.values()) >= 0 else None)
    if view.references:
        ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"{grid}: {metric} per configuration" + (" (◇ the paper, right axis)" if paper else ""), fontsize=9)
    return _save(plt, fig, Path(out_dir) / (filename or f"{_safe(grid)}_ablation_{_safe(metric)}.png"), dpi)
