"""Several processes train one run with `torchrun ... -m senseflow train` (the README's command); `accelerate
launch` is refused with one line, since senseflow does not read accelerate's config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from senseflow.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.tiny=true", "model.resolution=32", "train.batch_size=2", "train.iterations=2", "eval.metrics=[]",
        "train.mixed_precision=no", "gan.layers=null", "train.checkpoint_every=1", "train.log_every=1"]


def test_readme_documents_torchrun_alone():
    readme = (REPO / "README.md").read_text()
    assert "torchrun --nproc_per_node" in readme and "-m senseflow train" in readme
    assert "or `accelerate launch`" not in readme


def test_accelerate_launch_is_refused_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert main(["train", "digits-senseflow", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "torchrun --nproc_per_node" in err
    assert not (tmp_path / "r").exists()  # nothing started


def test_torchrun_two_processes_train_one_run(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "senseflow",
           "train", "sd35-large-senseflow", *TINY, "--run-dir", str(run), "--no-evaluate", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    status = json.loads((run / "status.json").read_text())
    assert status["processes"] == 2 and status["iteration"] == 2
    assert out.stdout.count("run folder:") == 1  # rank 0 reports
