"""kill -9 at random moments of a small run, resuming each time: the final weights and every metrics.jsonl
line (all but the wall-clock `time`) equal an uninterrupted run's. One kill lands inside a checkpoint write
(SENSEFLOW_TEST_CHECKPOINT_PAUSE holds the write open between its temp folder and the rename)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from senseflow.checkpoint import PAUSE_ENV, checkpoints

REPO = Path(__file__).resolve().parents[1]
# a tiny SD3.5 run: windows of 5 logged iterations straddle checkpoints every 3
ARGS = ["train", "sd35-large-senseflow", "model.tiny=true", "train.iterations=45", "train.checkpoint_every=3",
        "train.log_every=5", "train.threads=1", "train.keep_checkpoints=2", "--no-evaluate", "--no-progress"]
KILLS = 5


def _env(pause: float = 0.0) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop(PAUSE_ENV, None)
    if pause:
        env[PAUSE_ENV] = str(pause)
    return env


def _start(run_dir: Path, pause: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "senseflow", *ARGS, "--run-dir", str(run_dir)], cwd=REPO,
                            env=_env(pause), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _done(run_dir: Path) -> int:
    ck = checkpoints(run_dir)
    return int(ck[-1].name.split("_")[-1]) if ck else 0


def _lines(run_dir: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("time")  # wall clock: the one field that cannot repeat
    return rows


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ck = checkpoints(run_dir)[-1]
    assert json.loads((ck / "trainer.json").read_text()).get("final") is True
    return {name: load_file(str(ck / f"{name}.safetensors")) for name in ("generator", "fake_score", "discriminator")}


def test_kill_9_and_resume_changes_nothing(tmp_path):
    rng = random.Random(15)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    ref = _start(whole)

    kills, inside_write = 0, False
    while kills < KILLS:
        before = _done(killed)
        during_write = kills == 2  # the third kill lands inside a checkpoint write
        p = _start(killed, pause=3.0 if during_write else 0.0)
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            if during_write:
                if any((killed / "checkpoints").glob(f".tmp-*-{p.pid}")):  # this process's write
                    inside_write = True
                    break
            elif _done(killed) > before:
                # somewhere in the iteration after it (or the next few on a fast machine); each kill costs at
                # most a few checkpoints of progress, so the run is still going at the fifth
                time.sleep(rng.uniform(0.0, 0.3))
                break
            time.sleep(0.02)
        assert p.poll() is None, f"the run ended before kill {kills + 1}: {p.stderr.read()[-2000:]}"
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        kills += 1
    assert inside_write

    last = _start(killed)
    assert last.wait(timeout=300) == 0, last.stderr.read()[-2000:]
    assert ref.wait(timeout=300) == 0, ref.stderr.read()[-2000:]
    assert json.loads((killed / "status.json").read_text())["resumed_from"] > 0

    a, b = _final_weights(whole), _final_weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys()
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), f"{name}.{k} differs after {kills} kills"
    assert _lines(whole) == _lines(killed)
    assert [r["iteration"] for r in _lines(whole)] == list(range(5, 46, 5))
