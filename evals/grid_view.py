"""How a grid's results are shown: the configurations' order, the reference rows, the configuration that
paired differences are taken against, the paper's published values, and one colour per configuration.

Every table and plot of a grid takes its `GridView`, so rows and curves follow the grid file's variant order
(as the paper prints its ablation), reference rows (the teacher's floor, the do-nothing baseline) come last
and are never marked best, and a configuration has the same colour in every plot.

The order, the comparison and the paper's values come from the results database's ``grids`` table, which
`evals.store.sync` fills from the manifest ``grid.json`` that `senseflow grid run` writes into the grid's
folder. A grid without a manifest (runs made one by one) is shown in alphabetical order with no comparison.
Reference rows are the runs whose config has ``method: reference``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from .store import query

__all__ = ["GridView", "grid_view", "PALETTE"]

# Okabe-Ito, colour-blind safe; configurations take them in the grid's order, reference rows are grey
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
REFERENCE_COLOURS = ("#555555", "#999999")


@dataclass(frozen=True)
class GridView:
    grid: str
    order: tuple[str, ...]                      # configurations, in the grid file's order
    references: tuple[str, ...] = ()            # reference rows, after the configurations
    compare_to: str | None = None               # paired differences are taken against this configuration
    paper: Mapping[str, float] = field(default_factory=dict)   # configuration -> the paper's value
    paper_metric: str | None = None
    paper_source: str = ""

    @property
    def rows(self) -> tuple[str, ...]:
        return self.order + self.references

    @property
    def colours(self) -> dict[str, str]:
        c = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(self.order)}
        c.update({v: REFERENCE_COLOURS[i % len(REFERENCE_COLOURS)] for i, v in enumerate(self.references)})
        return c

    def arrange(self, present: set[str] | list[str]) -> list[str]:
        """The present variants in display order: configurations in grid order (unknown ones after them,
        alphabetically), then reference rows."""
        present = set(present)
        known = [v for v in self.order if v in present]
        rest = sorted(v for v in present if v not in self.order and v not in self.references)
        return known + rest + [v for v in self.references if v in present]


_MANIFEST_SQL = """
SELECT variant, position, compare_to, paper_metric, paper_value, paper_source
FROM grids WHERE grid = $grid ORDER BY position
"""
_REFERENCE_SQL = """
SELECT DISTINCT variant FROM runs
WHERE grid = $grid AND current AND json_extract_string(config, '$.method') = 'reference' ORDER BY variant
"""
_VARIANTS_SQL = "SELECT DISTINCT coalesce(variant, '(none)') FROM runs WHERE grid = $grid AND current ORDER BY 1"


def grid_view(db_path: str | os.PathLike, grid: str) -> GridView:
    """The grid's view from the results database (see the module docstring)."""
    _, tables = query(db_path, "SELECT table_name FROM information_schema.tables WHERE table_name = 'grids'")
    rows = query(db_path, _MANIFEST_SQL, {"grid": grid})[1] if tables else []
    references = tuple(v for (v,) in query(db_path, _REFERENCE_SQL, {"grid": grid})[1])
    if rows:
        order = tuple(v for v, *_ in rows if v not in references)
        compare_to = rows[0][2]
        paper = {v: float(val) for v, _, _, _, val, _ in rows if val is not None}
        return GridView(grid, order, references, compare_to or None, paper, rows[0][3] or None, rows[0][5] or "")
    present = [v for (v,) in query(db_path, _VARIANTS_SQL, {"grid": grid})[1]]
    return GridView(grid, tuple(v for v in present if v not in references), references)
