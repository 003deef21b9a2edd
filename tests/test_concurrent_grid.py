"""Two `senseflow grid run` of the same grid started at once train each cell exactly once (the run lock)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from senseflow.run_folder import read_status

REPO = Path(__file__).resolve().parents[1]


def test_two_grid_runs_at_once_train_each_cell_once(tmp_path):
    doc = {"grid": "twice", "base": "digits-senseflow", "seeds": [0, 1],
           "overrides": {"train.iterations": 20, "train.checkpoint_every": 5, "train.log_every": 5},
           "variants": [{"name": n, "overrides": {"isg.weight": 0.5 + i}} for i, n in enumerate("ABC")]}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(doc))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "senseflow", "grid", "run", "grid.yaml", "--executor", "local", "--parallel", "2",
           "--job", "counting_job:CountingJob", "--no-sync"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = sorted(d for d in (tmp_path / "results" / "runs" / "twice").iterdir() if d.is_dir() and not d.name.startswith("."))
    assert len(runs) == 6
    for d in runs:
        assert read_status(d)["state"] == "completed", d
        assert len((d / "trainings.log").read_text().splitlines()) == 1, f"{d.name} trained more than once"
    # the two really competed: some cell was started by both, or skipped by one while the other ran it
    started = sum(out.count("  start ") for out in outs)
    assert started > len(runs) or any("running" in out for out in outs), outs
