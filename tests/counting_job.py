"""A grid job for tests/test_concurrent_grid.py: the smoke job, and one line in <run>/trainings.log each time
it finds the run not yet completed (i.e. each time it would train)."""

from __future__ import annotations

import os
from pathlib import Path

from senseflow.launch import SmokeJob
from senseflow.run_folder import read_status


class CountingJob(SmokeJob):
    step_seconds: float = 0.05

    def __call__(self, cfg, run_dir, *, stop_after=None):
        if read_status(run_dir).get("state") != "completed":
            with open(Path(run_dir) / "trainings.log", "a") as f:
                f.write(f"{os.getpid()}\n")
        return super().__call__(cfg, run_dir, stop_after=stop_after)
