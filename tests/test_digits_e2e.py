"""End to end on the quick digits world: a grid through the real entry point, DuckDB, table, plots."""

import json

import pytest
import yaml

from senseflow.cli import main


@pytest.fixture(scope="module")
def quick_cache(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("sfcache")
    old = os.environ.get("SENSEFLOW_CACHE")
    os.environ["SENSEFLOW_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("SENSEFLOW_CACHE", None)
    else:
        os.environ["SENSEFLOW_CACHE"] = old


def test_digits_grid_table_and_plots(tmp_path, quick_cache, capsys):
    doc = {"grid": "e2e", "base": "digits-senseflow", "allow_outside_results": True,
           "overrides": {"model.teacher": "quick", "train.iterations": 20, "train.log_every": 5,
                         "train.eval_every": 10, "eval.num_samples": 100, "output.root": str(tmp_path / "runs")},
           "seeds": [0, 1],
           "variants": [{"name": "DMD2", "base": "digits-dmd2"}, {"name": "SenseFlow"}]}
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert main(["grid", "run", str(grid), "--executor", "debug"]) == 0
    runs = sorted(p for p in (tmp_path / "runs" / "e2e").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(runs) == 4
    assert json.loads((tmp_path / "runs" / "e2e" / "grid.json").read_text())["cells"] == ["DMD2", "SenseFlow"]
    for r in runs:
        status = json.loads((r / "status.json").read_text())
        assert status["state"] == "completed", status
        evals = json.loads((r / "eval.json").read_text())["evaluations"]
        assert [e["label"] for e in evals] == ["iter_10", "final"]
        final = evals[-1]["metrics"]
        assert {"fid_t", "fid", "prompt_accuracy", "diversity"} <= final.keys()
        assert 0.0 <= final["prompt_accuracy"] <= 1.0 and final["fid_t"] > 0
        assert (r / "eval_samples" / "preview" / "manifest.jsonl").is_file()
    capsys.readouterr()
    root = tmp_path
    assert main(["results", "table", "e2e", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "| DMD2 |" in out and "| SenseFlow |" in out and "FID-T" in out
    assert (root / "tables").is_dir() and any(p.suffix == ".tex" for p in (root / "tables").iterdir())
    csv = next(p for p in (root / "tables").iterdir() if p.suffix == ".csv").read_text()
    assert csv.count("\n") >= 3
    assert main(["results", "plots", "e2e", "--root", str(root), "--no-sync"]) == 0
    pngs = sorted(p.name for p in (root / "plots").iterdir())
    assert "e2e_samples.png" in pngs and any("loss_dmd" in p for p in pngs) and any("eval_fid_t" in p for p in pngs)
    assert "e2e_ablation_fid_t.png" in pngs
    from PIL import Image

    grid_png = Image.open(root / "plots" / "e2e_samples.png")
    assert grid_png.size[0] > 3 * 64     # teacher + two configurations side by side
    # the report of real runs: every run's samples and config, the teacher-vs-configurations grid, inline
    assert main(["results", "report", "e2e", "--root", str(root), "--no-sync"]) == 0
    html = (root / "reports" / "e2e.html").read_text()
    assert html.count('alt="samples of') == 4 and html.count("<details>") == 4
    assert 'alt="teacher and configurations' in html and "http" not in html.split("<body>")[1].split("<pre>")[0]
    # a second run of the grid finds everything done
    assert main(["grid", "run", str(grid), "--executor", "debug"]) == 0
    capsys.readouterr()
    assert main(["results", "query", "select count(*) as n from runs where state = 'completed'",
                 "--root", str(root), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 4}]


def test_too_few_evaluation_samples_is_one_line_and_keeps_the_trained_run(tmp_path, quick_cache, capsys):
    run = tmp_path / "run"
    assert main(["train", "digits-senseflow", "model.teacher=quick", "train.iterations=2", "eval.num_samples=1",
                 "--run-dir", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]   # (other lines: model-loading progress bars)
    assert len(lines) == 1 and "eval.num_samples=1 is below the digits world's" in lines[0] and "Traceback" not in err
    assert (run / "checkpoints" / "iter_0000002").is_dir()   # the training it did is kept
