"""A grid's results read like the paper: rows in the grid file's order, reference rows last and never
best, paired differences to the compared configuration over the same seeds, one colour per configuration
in every plot, and the paper's values beside the ablation (grid manifest -> DuckDB `grids` -> GridView)."""

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from evals import store
from evals.grid_view import PALETTE, grid_view
from evals.plots import plot_ablation, plot_metric_curves
from evals.tables import build_ablation_table
from senseflow.config import ConfigError
from senseflow.grid import load_grid, write_manifest

# the grid file's order; per seed FID-T; "w/o IDA" is worse than SenseFlow on every seed by 1 +- 0.1,
# "w/o ISG" differs by noise only, so only the paired interval of the first excludes 0
ORDER = ["SenseFlow", "w/o ISG", "w/o IDA", "DMD2"]
FID_T = {
    "SenseFlow": [1.0, 3.0, 2.0, 5.0, 4.0],
    "w/o ISG": [1.5, 2.4, 2.6, 4.4, 4.3],
    "w/o IDA": [2.0, 4.1, 2.9, 6.0, 5.1],
    "DMD2": [9.0, 8.0, 7.0, 9.5, 8.5],
}
FLOOR = 0.5   # a reference row that beats every configuration: never bold, listed last


def _run(root, variant, seed, value, method="senseflow", it=100):
    run = store.init_run(root, "abl", f"{ORDER.index(variant) if variant in ORDER else 9}-{seed}",
                         {"name": variant, "method": method}, variant=variant, seed=seed)
    store.record_eval(run, iteration=it // 2, label="iter_50", metrics={"fid_t": value * 2})
    store.record_eval(run, iteration=it, label="final", metrics={"fid_t": value})
    store.write_status(run, "completed", iteration=it)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    root = tmp_path_factory.mktemp("res")
    for variant in reversed(ORDER):  # written in another order than the file's
        for seed, v in enumerate(FID_T[variant]):
            _run(root, variant, seed, v)
    _run(root, "Teacher (floor)", 0, FLOOR, method="reference")
    _run(root, "SenseFlow", 7, 100.0, it=50)  # an earlier run of the grid (other iterations): not in the manifest
    ids = [p.name for p in (root / "runs" / "abl").iterdir() if p.name != "0-7"]
    (root / "runs" / "abl" / "grid.json").write_text(json.dumps({
        "grid": "abl", "cells": ORDER, "compare_to": "SenseFlow", "run_ids": ids,
        "paper": {"metric": "fid_t", "source": "SD3.5 Large", "values": {"SenseFlow": 13.38, "w/o ISG": 17.0,
                                                                          "w/o IDA": 17.83}}}))
    store.sync(root)
    return root / store.DEFAULT_DB


def test_rows_follow_the_grid_references_come_last_and_are_never_best(db, tmp_path):
    md = build_ablation_table(db, "abl", out_dir=tmp_path).markdown
    main = md.split("\n\n")[0].splitlines()[2:]
    assert [ln.split(" | ")[0].lstrip("| ") for ln in main] == ORDER + ["Teacher (floor)"]
    assert "**" in main[0] and "**" not in main[-1]   # SenseFlow (mean 3.0) is best, not the floor (0.5)
    assert main[0].startswith("| SenseFlow | 5 | **3.000 ± ")  # the stale run (seed 7, 100.0) is left out
    assert "Left out: 1 run(s) in the grid's folder that the grid file no longer defines." in md


def test_paired_differences_over_the_same_seeds(db, tmp_path):
    files = build_ablation_table(db, "abl", out_dir=tmp_path)
    paired = files.markdown.split("Configuration − SenseFlow")[1].splitlines()[2:5]
    assert [ln.split(" | ")[0].lstrip("| ") for ln in paired] == ["w/o ISG", "w/o IDA", "DMD2"]
    with open(files["csv"]) as fh:
        rec = {r["variant"]: r for r in csv.DictReader(fh)}
    for v in ("w/o ISG", "w/o IDA", "DMD2"):
        d = np.array(FID_T[v]) - np.array(FID_T["SenseFlow"])
        h = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
        assert float(rec[v]["fid_t_diff_mean"]) == pytest.approx(d.mean())
        assert float(rec[v]["fid_t_diff_hi"]) == pytest.approx(d.mean() + h)
        assert rec[v]["fid_t_diff_excludes_0"] == str(int(abs(d.mean()) > h))
    assert rec["w/o IDA"]["fid_t_diff_excludes_0"] == "1" and rec["w/o ISG"]["fid_t_diff_excludes_0"] == "0"
    # the unpaired intervals of SenseFlow and w/o IDA overlap: pairing is what resolves the difference
    assert float(rec["w/o IDA"]["fid_t_lo"]) < float(rec["SenseFlow"]["fid_t_hi"])
    assert "*" in paired[1] and "*" not in paired[0]
    assert rec["SenseFlow"]["fid_t_diff_n"] == "" and rec["Teacher (floor)"]["reference"] == "1"
    tex = files["latex"].read_text()
    assert r"Configuration $-$ SenseFlow" in tex and r"$^{*}$" in tex


def test_one_colour_per_configuration_and_the_paper_beside_the_ablation(db, tmp_path):
    view = grid_view(db, "abl")
    assert view.order == tuple(ORDER) and view.references == ("Teacher (floor)",) and view.compare_to == "SenseFlow"
    assert [view.colours[v] for v in ORDER] == list(PALETTE[:4])
    assert view.paper == {"SenseFlow": 13.38, "w/o ISG": 17.0, "w/o IDA": 17.83} and view.paper_metric == "fid_t"
    p = plot_ablation(db, "abl", "fid_t", out_dir=tmp_path)
    assert p.name == "abl_ablation_fid_t.png" and Image.open(p).size == (640, 400)
    c = plot_metric_curves(db, "abl", "fid_t", source="eval", out_dir=tmp_path)
    assert Image.open(c).size == (640, 400)


def test_grid_file_compare_to_and_paper_are_checked_and_written_to_the_manifest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = {"grid": "g", "base": "digits-senseflow", "seeds": [0, 1], "compare_to": "SenseFlow",
           "paper": {"metric": "fid_t", "source": "Table 4", "values": {"SenseFlow": 13.38, "w/o ISG": 17}},
           "variants": [{"name": "SenseFlow"}, {"name": "w/o ISG", "overrides": {"isg.enabled": False}}]}
    grid = load_grid(doc)
    path = write_manifest(grid)
    assert path.resolve() == tmp_path / "results" / "runs" / "g" / "grid.json"
    assert json.loads(path.read_text()) == {"grid": "g", "file": None, "cells": ["SenseFlow", "w/o ISG"],
                                            "compare_to": "SenseFlow", "paper": {"metric": "fid_t", "source": "Table 4",
                                                                                 "values": {"SenseFlow": 13.38,
                                                                                            "w/o ISG": 17.0}},
                                            "run_ids": [s.run_id for s in grid.specs]}
    assert len(set(grid.manifest()["run_ids"])) == 4
    for bad, msg in [({"compare_to": "Sensflow"}, "compare_to='Sensflow' names no cell; did you mean 'SenseFlow'"),
                     ({"paper": {"metric": "fid_t", "values": {"w/o IDA": 1}}}, "paper.values: 'w/o IDA' names no cell"),
                     ({"paper": {"metric": "fid_t", "values": {"SenseFlow": "x"}}}, "must be a number"),
                     ({"paper": {"metrics": "fid_t"}}, "unknown key 'metrics'; did you mean 'metric'")]:
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace("'", "'")):
            load_grid({**doc, **bad})
