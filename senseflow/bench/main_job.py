"""The main job's wall time, split: `senseflow bench main-job` runs `bash scripts/main.sh` in a fresh clone
of the checkout's HEAD with an empty cache (as on a fresh machine: the world is built from scratch; pip
may use its own download cache) and writes where the time went.

    steps        each step of main.sh as it timed itself (install, world build, reference rows, grid,
                 table, plots, report), written by main.sh to results/main-job.json
    grid, per run, summed over the runs (two run at once, so these sums exceed the grid's wall time):
      training   status.json train_seconds
      evaluation status.json eval_seconds
      start-up and bookkeeping
                 the rest of each run's life, from its job's process start (job.json started) to its end
                 (status.json finished): imports, world loading, model building, checkpoint writes, sync
    wall split   the grid's wall time shared out in proportion to those sums, beside the other steps: world
                 build, training, evaluation, bookkeeping (everything else: install, reference rows,
                 start-up and bookkeeping of the runs, table, plots, report)

It takes as long as the main job (about 18 minutes here) and is not part of `senseflow bench` without names.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

from senseflow.errors import UserError

GRID = "digits-ablation"


def checkout_root() -> Path:
    """The git checkout this package lives in (main.sh belongs to it)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"bench main-job: git is needed to clone the checkout ({e})") from None
    root = Path(out.stdout.strip()) if out.returncode == 0 else None
    if root is None or not (root / "scripts" / "main.sh").is_file():
        raise UserError(f"bench main-job: {here} is not in a git checkout of the project with scripts/main.sh; "
                        f"run it from a clone of the repository")
    return root


def split(clone: Path) -> dict:
    """The figures of a finished main job in `clone` (its results/main-job.json and the grid's run folders)."""
    job = json.loads((clone / "results" / "main-job.json").read_text())
    steps = {s["step"]: float(s["seconds"]) for s in job["steps"]}
    runs = []
    for st_path in sorted((clone / "results" / "runs" / GRID).glob("*/status.json")):
        st = json.loads(st_path.read_text())
        if st.get("method") == "reference" or st.get("state") != "completed":
            continue
        jb_path = st_path.with_name("job.json")
        jb = json.loads(jb_path.read_text()) if jb_path.is_file() else {}
        train, ev = float(st.get("train_seconds") or 0.0), float(st.get("eval_seconds") or 0.0)
        life = float(st["finished"]) - float(jb.get("started", st["started"]))
        runs.append({"run_id": st["run_id"], "variant": st.get("variant"), "seed": st.get("seed"),
                     "training": train, "evaluation": ev, "start-up and bookkeeping": max(0.0, life - train - ev)})
    sums = {k: round(sum(r[k] for r in runs), 1) for k in ("training", "evaluation", "start-up and bookkeeping")}
    grid_wall = steps.get("grid", 0.0)
    total_sum = sum(sums.values())
    share = {k: (grid_wall * v / total_sum if total_sum else 0.0) for k, v in sums.items()}
    wall = {"world build": steps.get("world build", 0.0), "training": share["training"],
            "evaluation": share["evaluation"]}
    wall["bookkeeping"] = float(job["seconds"]) - sum(wall.values())
    return {"seconds": float(job["seconds"]), "steps": steps, "runs": len(runs), "grid_sums": sums,
            "wall_split": {k: round(v, 1) for k, v in wall.items()}, "per_run": runs}


def measure(log: Callable[[str], None] = print) -> dict:
    """Clone HEAD, run scripts/main.sh there with an empty SENSEFLOW_CACHE, and split its time."""
    root = checkout_root()
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip() != ""
    with tempfile.TemporaryDirectory(prefix="senseflow-main-job-") as tmp:
        tmp = Path(tmp)
        clone = tmp / "clone"
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(root), str(clone)], check=True)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env["SENSEFLOW_CACHE"] = str(tmp / "cache")
        log(f"main-job: bash scripts/main.sh in a clone of {head.stdout.strip()} ({clone}), log {tmp / 'main.log'}")
        t0 = time.perf_counter()
        with open(tmp / "main.log", "wb") as out:
            code = subprocess.run(["bash", "scripts/main.sh"], cwd=clone, env=env, stdout=out,
                                  stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - t0
        tail = (tmp / "main.log").read_bytes()[-3000:].decode("utf-8", "replace").replace("\r", "\n")
        if code != 0:
            raise RuntimeError(f"scripts/main.sh exited with {code} after {wall:.0f} s; its log ends:\n{tail}")
        row = {"commit": head.stdout.strip(), "uncommitted_changes_not_measured": dirty,
               "measured_wall_seconds": round(wall, 1), **split(clone), "log_tail": tail.splitlines()[-12:]}
    return row
