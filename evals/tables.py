"""Ablation tables from the results database: rows = configurations (variants), columns = metrics.

Each cell aggregates, over the seeds of a configuration, the latest evaluation with the given label
('final' by default) of every run in the allowed states: mean and 95 % t-interval
``mean +- t(0.975, n-1) * sd / sqrt(n)``. With a single seed the cell shows the value and, when the
run recorded one, its own (bootstrap) 95 % interval in brackets. The best mean per column among the
configurations is marked (bold; reference rows never are); the direction of each metric comes from
`evals.metrics.higher_is_better` (lower is better for fid*/kid*, higher otherwise). Rows follow the
grid's `GridView` (the grid file's order, reference rows last).

Paired differences: when the grid names a configuration to compare with (`compare_to` in the grid file),
a second table gives, for every other configuration and metric, the mean over seeds of
``value(configuration, seed) - value(compare_to, seed)`` over the seeds both have, with its 95 %
t-interval; a difference whose interval excludes 0 is marked with ``*``. Pairing removes what the seeds
share (the same data order, the same initial noise), so it resolves effects the unpaired intervals cannot.

The aggregation is SQL (DuckDB, parameters only); this module only formats. Output: Markdown, LaTeX and
CSV files, plus the Markdown text.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .grid_view import GridView, grid_view
from .metrics import higher_is_better
from .store import query

__all__ = ["build_ablation_table", "TableFiles", "DISPLAY_NAMES", "metric_order"]

DISPLAY_NAMES = {
    "fid_t": "FID-T", "patch_fid_t": "Patch FID-T", "fid": "FID", "kid": "KID", "clip_score": "CLIP",
    "hps": "HPSv2", "pickscore": "PickScore", "image_reward": "ImageReward", "prompt_accuracy": "Prompt acc.",
    "diversity": "Diversity",
}
_PREFERRED = ["fid_t", "patch_fid_t", "fid", "kid", "clip_score", "hps", "pickscore", "image_reward",
              "prompt_accuracy", "diversity"]

# every run's latest evaluation with the label, per metric (rk = 1), of runs the grid file defines
_LATEST_SQL = """
WITH latest AS (
    SELECT r.variant, r.seed, e.run_id, e.name, e.value, e.lo, e.hi,
           row_number() OVER (PARTITION BY e.run_id, e.name ORDER BY e.iteration DESC) AS rk
    FROM eval_metrics e
    JOIN runs r ON r.run_id = e.run_id AND r.grid = e.grid
    WHERE e.grid = $grid AND e.label = $label AND list_contains($states, r.state) AND r.current
      AND ($all_metrics OR list_contains($metrics, e.name))
)"""

_AGG_SQL = _LATEST_SQL + """
SELECT coalesce(variant, '(none)') AS variant, name,
       count(*) AS n, avg(value) AS mean, stddev_samp(value) AS sd, min(lo) AS lo, max(hi) AS hi
FROM latest
WHERE rk = 1 AND value IS NOT NULL AND NOT isnan(value)
GROUP BY ALL
ORDER BY variant, name
"""

# per seed: the mean over the runs of a (configuration, seed), normally one run
_PAIRED_SQL = _LATEST_SQL + """,
per_seed AS (
    SELECT variant, seed, name, avg(value) AS value FROM latest
    WHERE rk = 1 AND value IS NOT NULL AND NOT isnan(value) GROUP BY ALL
),
base AS (SELECT seed, name, value FROM per_seed WHERE variant = $compare_to)
SELECT p.variant, p.name, count(*) AS n, avg(p.value - b.value) AS mean, stddev_samp(p.value - b.value) AS sd
FROM per_seed p JOIN base b ON p.seed = b.seed AND p.name = b.name
WHERE p.variant != $compare_to AND NOT list_contains($references, p.variant)
GROUP BY ALL
"""

_RUNS_SQL = """
SELECT coalesce(variant, '(none)') AS variant, count(*) AS runs,
       count(*) FILTER (WHERE state = 'diverged') AS diverged,
       count(*) FILTER (WHERE state = 'failed') AS failed
FROM runs WHERE grid = $grid AND current GROUP BY ALL ORDER BY variant
"""


class TableFiles(dict):
    """``{"markdown": Path, "latex": Path, "csv": Path}`` plus ``.markdown`` (the Markdown text)."""

    markdown: str = ""


@dataclass
class _Cell:
    n: int
    mean: float
    lo: float | None
    hi: float | None
    kind: str  # "t" (over seeds), "run" (one run's own interval), "value" (no interval)
    best: bool = False

    @property
    def excludes_zero(self) -> bool:
        return self.lo is not None and (self.lo > 0 or self.hi < 0)


def metric_order(names: Sequence[str]) -> list[str]:
    """Known metrics first (FID-T, patch FID-T, FID, KID, CLIP, HPS, PickScore, ImageReward, ...), then the rest sorted."""
    known = [m for m in _PREFERRED if m in names]
    return known + sorted(m for m in names if m not in known)


def _t975(df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def _decimals(values: list[float]) -> str:
    m = max((abs(v) for v in values if v is not None and math.isfinite(v)), default=0.0)
    if m == 0.0:
        return ".3f"
    if m < 0.01:
        return ".2e"
    return ".4f" if m < 1 else ".3f" if m < 10 else ".2f" if m < 100 else ".1f"


def _fmt_cell(c: _Cell, spec: str) -> str:
    v = format(c.mean, spec)
    if c.kind == "t" and c.lo is not None:
        return f"{v} ± {format(c.hi - c.mean, spec)}"
    if c.kind == "run" and c.lo is not None:
        return f"{v} [{format(c.lo, spec)}, {format(c.hi, spec)}]"
    return v


def _fmt_paired(c: _Cell, spec: str) -> str:
    v = format(c.mean, "+" + spec)
    if c.lo is None:
        return v
    return f"{v} ± {format(c.hi - c.mean, spec)}" + ("*" if c.excludes_zero else "")


def _paired_cells(db_path, grid: str, label: str, states: Sequence[str], cols: list[str], view: GridView
                  ) -> dict[tuple[str, str], _Cell]:
    params = {"grid": grid, "label": label, "states": list(states), "all_metrics": False, "metrics": cols,
              "compare_to": view.compare_to, "references": list(view.references)}
    out = {}
    for variant, name, n, mean, sd in query(db_path, _PAIRED_SQL, params)[1]:
        n = int(n)
        if n >= 2 and sd is not None and math.isfinite(sd):
            h = _t975(n - 1) * sd / math.sqrt(n)
            out[(variant, name)] = _Cell(n, mean, mean - h, mean + h, "t")
        else:
            out[(variant, name)] = _Cell(n, mean, None, None, "value")
    return out


def _latex_escape(s: str) -> str:
    return re.sub(r"([&%$#_{}])", r"\\\1", s).replace("~", r"\textasciitilde{}").replace("^", r"\^{}")


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "table"


def build_ablation_table(db_path: str | os.PathLike, grid: str, metrics: Sequence[str] | None = None,
                         out_dir: str | os.PathLike = "results/tables", *, label: str = "final",
                         states: Sequence[str] = ("completed",), variants: Sequence[str] | None = None,
                         caption: str | None = None, view: GridView | None = None) -> TableFiles:
    """Write ``<out_dir>/<grid>_<label>.{md,tex,csv}`` and return their paths (plus ``.markdown`` text).

    ``metrics``: columns in this order (default: every metric found, known ones first).
    ``states``: run states included (default completed only; diverged/failed runs are counted in
    the 'runs' column of the CSV and in the Markdown footnote). ``variants``: row order/filter
    (default: the grid's view, ``view`` or `grid_view`).
    """
    view = view or grid_view(db_path, grid)
    params = {"grid": grid, "label": label, "states": list(states), "all_metrics": metrics is None,
              "metrics": list(metrics or [])}
    _, rows = query(db_path, _AGG_SQL, params)
    if not rows:
        raise ValueError(f"no '{label}' evaluations of runs in states {list(states)} for grid {grid!r} in {db_path}; "
                         "did you run `senseflow results sync`?")
    _, run_rows = query(db_path, _RUNS_SQL, {"grid": grid})
    run_counts = {v: (n, d, f) for v, n, d, f in run_rows}

    cells: dict[tuple[str, str], _Cell] = {}
    for variant, name, n, mean, sd, lo, hi in rows:
        n = int(n)
        if n >= 2 and sd is not None and math.isfinite(sd):
            h = _t975(n - 1) * sd / math.sqrt(n)
            cells[(variant, name)] = _Cell(n, mean, mean - h, mean + h, "t")
        elif n == 1 and lo is not None and hi is not None:
            cells[(variant, name)] = _Cell(n, mean, lo, hi, "run")
        else:
            cells[(variant, name)] = _Cell(n, mean, None, None, "value")
    found = {name for _, name in cells}
    cols = [m for m in metrics if m in found] if metrics is not None else metric_order(sorted(found))
    missing = [m for m in (metrics or []) if m not in found]
    present_variants = sorted({v for v, _ in cells})
    if variants is not None:
        rows_order = [v for v in variants if v in present_variants]
    else:
        rows_order = view.arrange(present_variants)
    references = set(view.references)

    for m in cols:  # mark the best mean per column, among the configurations
        vals = [(v, cells[(v, m)].mean) for v in rows_order if (v, m) in cells and v not in references]
        if len(vals) < 2:
            continue
        best = (max if higher_is_better(m) else min)(x for _, x in vals)
        for v, x in vals:
            if x == best:
                cells[(v, m)].best = True

    specs = {m: _decimals([cells[(v, m)].mean for v in rows_order if (v, m) in cells]
                          + [x for v in rows_order if (v, m) in cells for x in (cells[(v, m)].lo, cells[(v, m)].hi)
                             if x is not None]) for m in cols}
    seeds = {v: max((cells[(v, m)].n for m in cols if (v, m) in cells), default=0) for v in rows_order}
    paired = _paired_cells(db_path, grid, label, states, cols, view) if view.compare_to in present_variants else {}
    paired_rows = [v for v in rows_order if any((v, m) in paired for m in cols)]
    pspecs = {m: _decimals([x for v in paired_rows if (v, m) in paired
                            for x in (paired[(v, m)].mean, paired[(v, m)].lo, paired[(v, m)].hi) if x is not None])
              for m in cols}

    def arrow(m: str, latex: bool = False) -> str:
        up = higher_is_better(m)
        if latex:
            return r"$\uparrow$" if up else r"$\downarrow$"
        return "↑" if up else "↓"

    # Markdown
    head = ["Configuration", "seeds"] + [f"{DISPLAY_NAMES.get(m, m)} {arrow(m)}" for m in cols]
    md = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for v in rows_order:
        row = [v.replace("|", "\\|"), str(seeds[v])]
        for m in cols:
            c = cells.get((v, m))
            txt = "–" if c is None else _fmt_cell(c, specs[m])
            row.append(f"**{txt}**" if c is not None and c.best else txt)
        md.append("| " + " | ".join(row) + " |")
    notes = [f"Grid `{grid}`, evaluation '{label}', runs in state {'/'.join(states)}. Mean ± 95% t-interval over "
             "seeds; one seed: value [the run's own 95% bootstrap interval]; best configuration per column in bold"
             + (" (reference rows excluded)" if references & set(rows_order) else "")
             + "; ↓ lower is better, ↑ higher is better."]
    bad = {v: (d if "diverged" not in states else 0, f if "failed" not in states else 0)
           for v, (_, d, f) in run_counts.items()}
    bad = {v: df for v, df in bad.items() if any(df)}
    if bad:
        notes.append("Not included: " + "; ".join(f"{v}: {d} diverged, {f} failed" for v, (d, f) in sorted(bad.items())))
    if missing:
        notes.append("No values for: " + ", ".join(missing))
    stale = query(db_path, "SELECT count(*) FROM runs WHERE grid = $grid AND NOT current", {"grid": grid})[1][0][0]
    if stale:
        notes.append(f"Left out: {stale} run(s) in the grid's folder that the grid file no longer defines.")
    markdown = "\n".join(md) + "\n\n" + "\n".join(notes) + "\n"
    if paired_rows:
        ph = [f"Configuration − {view.compare_to}", "pairs"] + [f"Δ {DISPLAY_NAMES.get(m, m)} {arrow(m)}" for m in cols]
        pmd = ["| " + " | ".join(ph) + " |", "|" + "|".join(["---"] + ["---:"] * (len(ph) - 1)) + "|"]
        for v in paired_rows:
            row = [v.replace("|", "\\|"), str(max(paired[(v, m)].n for m in cols if (v, m) in paired))]
            row += ["–" if (v, m) not in paired else _fmt_paired(paired[(v, m)], pspecs[m]) for m in cols]
            pmd.append("| " + " | ".join(row) + " |")
        markdown += ("\n" + "\n".join(pmd) + "\n\n" + f"Paired difference to {view.compare_to} over the seeds both "
                     "have: mean ± 95% t-interval of the per-seed differences; * the interval excludes 0.\n")

    # LaTeX
    tex = [r"% needs \usepackage{booktabs} in the preamble (\toprule, \midrule, \bottomrule)",
           r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(cols) + 1) + "}", r"\toprule",
           " & ".join(["Configuration", "Seeds"] + [f"{_latex_escape(DISPLAY_NAMES.get(m, m))} {arrow(m, True)}"
                                                    for m in cols]) + r" \\", r"\midrule"]
    for v in rows_order:
        row = [_latex_escape(v), str(seeds[v])]
        for m in cols:
            c = cells.get((v, m))
            txt = "--" if c is None else _fmt_cell(c, specs[m]).replace("±", r"$\pm$")
            row.append(rf"\textbf{{{txt}}}" if c is not None and c.best else txt)
        tex.append(" & ".join(row) + r" \\")
    cap = caption or (f"Ablation on grid {grid} ({label} evaluation): mean $\\pm$ 95\\% t-interval over seeds; "
                      "best per column in bold.")
    tex += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_latex_escape(cap) if caption else cap}}}",
            rf"\label{{tab:{_safe(grid)}}}", r"\end{table}"]
    if paired_rows:
        tex += [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(cols) + 1) + "}", r"\toprule",
                " & ".join([f"Configuration $-$ {_latex_escape(view.compare_to)}", "Pairs"]
                           + [rf"$\Delta$ {_latex_escape(DISPLAY_NAMES.get(m, m))} {arrow(m, True)}" for m in cols])
                + r" \\", r"\midrule"]
        for v in paired_rows:
            row = [_latex_escape(v), str(max(paired[(v, m)].n for m in cols if (v, m) in paired))]
            row += ["--" if (v, m) not in paired else
                    _fmt_paired(paired[(v, m)], pspecs[m]).replace("±", r"$\pm$").replace("*", r"$^{*}$") for m in cols]
            tex.append(" & ".join(row) + r" \\")
        tex += [r"\bottomrule", r"\end{tabular}",
                rf"\caption{{Paired difference to {_latex_escape(view.compare_to)} over the same seeds: mean $\pm$ 95\% "
                r"t-interval; $^{*}$ the interval excludes 0.}", rf"\label{{tab:{_safe(grid)}-paired}}", r"\end{table}"]
    latex = "\n".join(tex) + "\n"

    # CSV (machine-readable: one column group per metric)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["variant", "seeds", "runs", "diverged", "failed", "reference"]
               + [f"{m}_{k}" for m in cols for k in ("mean", "lo", "hi", "n", "interval", "best")]
               + [f"{m}_diff_{k}" for m in cols for k in ("mean", "lo", "hi", "n", "excludes_0")])
    for v in rows_order:
        n_runs, n_div, n_fail = run_counts.get(v, (0, 0, 0))
        out = [v, seeds[v], n_runs, n_div, n_fail, int(v in references)]
        for m in cols:
            c = cells.get((v, m))
            out += ["", "", "", "", "", ""] if c is None else \
                [repr(c.mean), "" if c.lo is None else repr(c.lo), "" if c.hi is None else repr(c.hi), c.n,
                 {"t": "t95_over_seeds", "run": "run_bootstrap95", "value": "none"}[c.kind], int(c.best)]
        for m in cols:
            d = paired.get((v, m))
            out += ["", "", "", "", ""] if d is None else \
                [repr(d.mean), "" if d.lo is None else repr(d.lo), "" if d.hi is None else repr(d.hi), d.n,
                 "" if d.lo is None else int(d.excludes_zero)]
        w.writerow(out)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{_safe(grid)}_{_safe(label)}"
    files = TableFiles(markdown=out_dir / f"{stem}.md", latex=out_dir / f"{stem}.tex", csv=out_dir / f"{stem}.csv")
    from .store import write_text_atomic

    write_text_atomic(files["markdown"], markdown, fsync=False)
    write_text_atomic(files["latex"], latex, fsync=False)
    write_text_atomic(files["csv"], buf.getvalue(), fsync=False)
    files.markdown = markdown
    return files
