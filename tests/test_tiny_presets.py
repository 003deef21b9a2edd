"""Every paper preset in tiny mode (`model.tiny=true`) through the real command line: train a few
iterations, evaluate, export. Tiny mode adapts what depends on size and says what it changed."""

from __future__ import annotations

import json
import math

import pytest
import torch

from senseflow.cli import main
from senseflow.config import PRESETS

PAPER_PRESETS = sorted(p for p in PRESETS if not p.startswith("digits"))


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_every_family_is_covered():
    for family in ("sd35-large", "sd35-medium", "flux-dev", "sdxl"):
        assert {f"{family}-senseflow", f"{family}-dmd2"} <= set(PAPER_PRESETS)


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_tiny_preset_trains_evaluates_and_exports(preset, tmp_path, capsys, keep_threads):
    run = tmp_path / "run"
    assert main(["train", preset, "model.tiny=true", "train.iterations=2", "train.threads=1",
                 "--run-dir", str(run), "--no-progress"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    changes = [ln for ln in out.splitlines() if ln.startswith("tiny mode: ")]
    assert any(c.startswith("tiny mode: model.resolution: 1024 -> 32") for c in changes), out
    assert any("eval.num_samples" in c for c in changes), out
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "completed" and status["iteration"] == 2
    assert [f"tiny mode: {c}" for c in status["tiny_mode"]] == changes
    final = next(e for e in json.loads((run / "eval.json").read_text())["evaluations"] if e["label"] == "final")
    assert final["num_samples"] == 8
    assert {"fid_t", "patch_fid_t"} <= set(final["metrics"]) and all(math.isfinite(v) for v in final["metrics"].values())

    assert main(["eval", str(run), "-m", "fid_t", "--label", "again", "--no-progress"]) == 0, capsys.readouterr().err
    again = [e for e in json.loads((run / "eval.json").read_text())["evaluations"] if e["label"] == "again"]
    assert len(again) == 1 and set(again[0]["metrics"]) == {"fid_t", "fid_t@euler"}

    assert main(["export", str(run), str(tmp_path / "student")]) == 0, capsys.readouterr().err
    exported = {p.name for p in (tmp_path / "student").rglob("*") if p.is_file()}
    assert "config.json" in exported and any(n.endswith(".safetensors") for n in exported), exported
