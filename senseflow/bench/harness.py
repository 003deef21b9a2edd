"""Harness overhead: a local grid of N cells against N separate `senseflow train` processes of the same
configs (a benchmark, not a test).

Both sides run the digits-senseflow preset for `iterations` iterations with seeds 0..N-1, N processes at
once, each in a fresh temporary folder, without evaluation unless `evaluate` (the digits evaluation samples
the world's 2000 FID-T prompts; it is the same code on both sides): the grid with `senseflow grid run FILE --executor local --parallel N`
(submitit's local executor, the live overview, the DuckDB sync at the end), the others as N concurrent
`senseflow train` commands. Training speed is iterations / train_seconds of each run's status.json (the
training loop only); the grid's wall time is split into training (the slowest run's train_seconds),
evaluation (its eval_seconds) and the rest (start-up, world loading, submitit, bookkeeping, the sync).
Target: the grid's iterations per second less than 5% below the separate processes'.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _runs(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("status.json"))]


def _summary(statuses: list[dict], wall: float, iterations: int) -> dict:
    ips = [iterations / s["train_seconds"] for s in statuses if s.get("train_seconds")]
    train = max((s.get("train_seconds") or 0.0) for s in statuses) if statuses else 0.0
    ev = max((s.get("eval_seconds") or 0.0) for s in statuses) if statuses else 0.0
    return {"runs": len(statuses), "finished": sum(s.get("state") in ("completed", "trained") for s in statuses),
            "iterations_per_second": [round(x, 2) for x in ips],
            "mean_iterations_per_second": round(sum(ips) / len(ips), 3) if ips else None,
            "wall_seconds": round(wall, 1), "train_seconds_max": round(train, 1), "eval_seconds_max": round(ev, 1),
            "other_seconds": round(wall - train - ev, 1)}


def compare(cells: int = 2, iterations: int = 200, evaluate: bool = False, log=print) -> dict:
    py = [sys.executable, "-m", "senseflow"]
    common = {"train.iterations": iterations, "train.threads": 1}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="senseflow-harness-") as tmp:
        tmp = Path(tmp)
        grid = {"grid": "harness-bench", "base": "digits-senseflow", "allow_outside_results": True,
                "overrides": {**common, "output.root": str(tmp / "grid")}, "seeds": list(range(cells)),
                "variants": [{"name": "SenseFlow"}]}
        (tmp / "grid.yaml").write_text(json.dumps(grid))
        t0 = time.perf_counter()
        subprocess.run(py + ["grid", "run", str(tmp / "grid.yaml"), "--executor", "local", "--parallel", str(cells),
                             "--db", str(tmp / "bench.duckdb"), "--eval" if evaluate else "--no-eval"], check=True, env=env, cwd=tmp,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        g = _summary(_runs(tmp / "grid"), time.perf_counter() - t0, iterations)
        log(f"  grid: {g['mean_iterations_per_second']} it/s per run, wall {g['wall_seconds']} s")
        t0 = time.perf_counter()
        procs = [subprocess.Popen(py + ["train", "digits-senseflow", *[f"{k}={v}" for k, v in common.items()],
                                        f"train.seed={s}", "--run-dir", str(tmp / "solo" / str(s)), "--no-progress",
                                        "--evaluate" if evaluate else "--no-evaluate"],
                                  env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for s in range(cells)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise RuntimeError(f"senseflow train exited with {codes}")
        solo = _summary(_runs(tmp / "solo"), time.perf_counter() - t0, iterations)
        log(f"  separate: {solo['mean_iterations_per_second']} it/s per run, wall {solo['wall_seconds']} s")
    slower = (1 - g["mean_iterations_per_second"] / solo["mean_iterations_per_second"]
              if g["mean_iterations_per_second"] and solo["mean_iterations_per_second"] else None)
    return {"cells": cells, "iterations": iterations, "evaluate": evaluate, "grid": g, "separate": solo,
            "grid_slower_by": round(slower, 4) if slower is not None else None, "target": 0.05}
