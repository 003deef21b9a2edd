"""Ablation tables (SQL aggregation, t-intervals, best-per-column marks) and plots (PNG sizes)."""

import csv
import math

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from evals import store
from senseflow.run_folder import write_status
from evals.sample_set import SampleSet
from evals.plots import plot_metric_curves, plot_sample_grid, sample_grid_size
from evals.tables import build_ablation_table

# variant -> per-seed final (fid_t, clip_score)
FINAL = {
    "SenseFlow": [(10.0, 0.330), (11.0, 0.332), (12.0, 0.331)],
    "w/o ISG": [(14.0, 0.335), (15.0, 0.336), (16.5, 0.334)],   # best CLIP, worse FID-T
    "DMD2_base": [(20.0, 0.300)],                                # one seed with its own bootstrap interval
}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    root = tmp_path_factory.mktemp("res")
    for variant, rows in FINAL.items():
        for seed, (fid_t, clip) in enumerate(rows):
            run = store.init_run(root, "abl", f"{variant[:3].replace('/', '')}-{seed}", {"name": variant, "seed": seed},
                                 variant=variant, seed=seed)
            write_status(run, "running")
            for it in range(0, 101, 10):
                store.log_metrics(run, it, {"loss_dmd": 5.0 / (1 + it) + seed + (variant == "w/o ISG")}, time=it * 36.0)
            store.record_eval(run, iteration=50, label="mid", metrics={"fid_t": fid_t * 2, "clip_score": clip - 0.01})
            store.record_eval(run, iteration=90, label="final", metrics={"fid_t": 99.0, "clip_score": 0.0})  # older
            store.record_eval(run, iteration=100, label="final", metrics={"fid_t": fid_t, "clip_score": clip},
                              intervals={"fid_t": [fid_t - 1.5, fid_t + 2.0]}, num_samples=500)
            write_status(run, "completed", iteration=100)
    bad = store.init_run(root, "abl", "Sens-div", {"name": "SenseFlow"}, variant="SenseFlow", seed=9)
    store.record_eval(bad, iteration=100, label="final", metrics={"fid_t": 1.0, "clip_score": 0.9})  # not counted
    write_status(bad, "diverged", reason="NaN", iteration=40)
    other = store.init_run(root, "other", "x", {}, variant="SenseFlow", seed=0)
    store.record_eval(other, iteration=100, label="final", metrics={"fid_t": 0.1})
    write_status(other, "completed")
    store.sync(root)
    return root / store.DEFAULT_DB


def test_ablation_table(db, tmp_path):
    files = build_ablation_table(db, "abl", out_dir=tmp_path)
    assert set(files) == {"markdown", "latex", "csv"} and all(p.is_file() for p in files.values())
    md = files.markdown
    assert md == files["markdown"].read_text()
    lines = md.splitlines()
    assert lines[0] == "| Configuration | seeds | FID-T ↓ | CLIP ↑ |"
    rows = {ln.split(" | ")[0].lstrip("| "): ln for ln in lines[2:5]}
    assert list(rows) == ["DMD2_base", "SenseFlow", "w/o ISG"]
    # SenseFlow: FID-T mean 11, t-interval half width t(0.975, 2) * sd / sqrt(3)
    h = stats.t.ppf(0.975, 2) * np.std([10, 11, 12], ddof=1) / math.sqrt(3)
    assert f"**11.00 ± {h:.2f}**" in rows["SenseFlow"]          # best FID-T (lower), bold
    assert "**0.3350 ± " in rows["w/o ISG"]                     # best CLIP (higher), bold
    assert "| 1 | 20.00 [18.50, 22.00] |" in rows["DMD2_base"]  # one seed: its own bootstrap interval
    assert rows["SenseFlow"].count("**") == 2 and rows["DMD2_base"].count("**") == 0
    assert "SenseFlow: 1 diverged" in md

    tex = files["latex"].read_text()
    assert tex.startswith(r"% needs \usepackage{booktabs}") and r"\toprule" in tex  # says what it needs
    assert r"\textbf{11.00 $\pm$" in tex and r"w/o ISG" in tex and r"DMD2\_base" in tex and r"FID-T $\downarrow$" in tex
    with open(files["csv"]) as fh:
        recs = {r["variant"]: r for r in csv.DictReader(fh)}
    assert float(recs["SenseFlow"]["fid_t_mean"]) == pytest.approx(11.0)
    assert float(recs["SenseFlow"]["fid_t_hi"]) == pytest.approx(11.0 + h)
    assert recs["SenseFlow"]["fid_t_best"] == "1" and recs["w/o ISG"]["clip_score_best"] == "1"
    assert recs["SenseFlow"]["diverged"] == "1" and recs["SenseFlow"]["seeds"] == "3"
    assert recs["DMD2_base"]["fid_t_interval"] == "run_bootstrap95"

    only = build_ablation_table(db, "abl", metrics=["clip_score"], out_dir=tmp_path, label="mid",
                                variants=["w/o ISG", "SenseFlow"])
    assert only.markdown.splitlines()[0] == "| Configuration | seeds | CLIP ↑ |"
    assert [ln.split(" | ")[0].lstrip("| ") for ln in only.markdown.splitlines()[2:4]] == ["w/o ISG", "SenseFlow"]
    with pytest.raises(ValueError, match="no 'final' evaluations"):
        build_ablation_table(db, "nope", out_dir=tmp_path)


def test_metric_curves_png(db, tmp_path):
    p = plot_metric_curves(db, "abl", "loss_dmd", source="train", out_dir=tmp_path, smooth=2)
    assert p.name == "abl_train_loss_dmd.png" and Image.open(p).size == (640, 400)
    p2 = plot_metric_curves(db, "abl", "fid_t", source="eval", labels=["mid", "final"], band="ci", out_dir=tmp_path,
                            figsize=(5, 3), dpi=120)
    assert Image.open(p2).size == (600, 360)
    p3 = plot_metric_curves(db, "abl", "loss_dmd", source="train", x="hours", band="minmax", out_dir=tmp_path,
                            filename="hours.png")
    assert Image.open(p3).size == (640, 400)
    with pytest.raises(ValueError, match="no train values"):
        plot_metric_curves(db, "abl", "nope", source="train", out_dir=tmp_path)


def test_sample_grid_png(tmp_path):
    prompts = ["a red cube", "a very long prompt " * 6, "three"]
    rng = np.random.default_rng(0)
    teacher = SampleSet.from_arrays(tmp_path / "teacher", rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8),
                                    prompts, [1, 2, 3])
    # the student has the same (prompt, seed) pairs in another order, plus one the teacher lacks
    student = SampleSet.from_arrays(tmp_path / "student", rng.integers(0, 256, (4, 24, 24, 3), dtype=np.uint8),
                                    [prompts[2], "extra", prompts[0], prompts[1]], [3, 7, 1, 2])
    p = plot_sample_grid({"teacher": teacher, "SenseFlow": tmp_path / "student", "w/o ISG": student},
                         out_path=tmp_path / "grid.png", cell_px=64, label_px=150)
    assert Image.open(p).size == sample_grid_size(3, 3, cell_px=64, label_px=150) == (150 + 3 * 64, 32 + 3 * 64)
    # the student's cell in row 0 shows the student's (a red cube, 1) image, not its first file
    px = np.asarray(Image.open(p).convert("RGB"))
    cell = px[32:96, 150 + 64:150 + 128]
    expect = np.asarray(Image.fromarray(student.image(2)).resize((64, 64), Image.BICUBIC))
    assert np.abs(cell.astype(int) - expect.astype(int)).mean() < 12

    arrays = {"teacher": rng.integers(0, 256, (5, 16, 16, 1), dtype=np.uint8),
              "student": rng.integers(0, 256, (5, 16, 16, 1), dtype=np.uint8)}
    p2 = plot_sample_grid(arrays, prompts=[f"digit {i}" for i in range(5)], n=4, out_path=tmp_path / "g2.png")
    assert Image.open(p2).size == sample_grid_size(4, 2)
    with pytest.raises(ValueError, match="share no"):
        plot_sample_grid({"a": teacher, "b": SampleSet.from_arrays(tmp_path / "z", arrays["student"][:1], ["q"], [0])},
                         out_path=tmp_path / "g3.png")
