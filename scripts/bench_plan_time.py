"""Time to answer: `senseflow plan PRESET` for every paper preset on this machine, first (empty trace cache)
and again (cached), each in a fresh process; wall and CPU seconds, and the plan's memory per GPU beside the
one in results/bench/plans-2026-11-27/ (the README's table) to show the faster trace gives the same answer
(or, where a fix changed it, which figures moved: `differs_from_reference`).

    python scripts/bench_plan_time.py [PRESET ...] [--save-plans DIR]     -> results/bench/plan-time.json

--save-plans DIR also writes each first plan's JSON there (DIR/PRESET.json), as the README's table is made.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESETS = ["sd35-large-senseflow", "sd35-large-dmd2", "sd35-medium-senseflow", "sd35-medium-dmd2",
           "flux-dev-senseflow", "flux-dev-dmd2", "sdxl-senseflow", "sdxl-dmd2"]
REFERENCE = REPO / "results" / "bench" / "plans-2026-11-27"


class PlanFailed(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def timed_plan(preset: str, cache: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "senseflow", "plan", preset, "--json", "--no-files"],
                         capture_output=True, text=True, env={**os.environ, "SENSEFLOW_CACHE": str(cache)})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:  # its own message (one line for bad input), and its status
        raise PlanFailed(out.returncode, out.stderr.strip() or f"senseflow plan {preset} exited with {out.returncode}")
    plan = json.loads(out.stdout)
    return {"wall_seconds": round(wall, 1),
            "cpu_seconds": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
            "memory_gib": round(plan["layouts"][0]["total_gib"], 3), "fits": plan["fits"],
            "tflop_per_iteration": round(sum(plan["flops"].values()) / 1e12, 2), "plan": plan}


def _differences(plan: dict, ref: dict) -> list[str]:
    """Where the traces (each component's peak and FLOPs), the FLOPs and the layouts' bytes differ, numbers
    compared to 1e-9: their paths, e.g. 'traces/checkpointing/peak_new/backward simulation'."""
    out: list[str] = []

    def walk(a, b, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict) and b.keys() <= a.keys():  # figures added since: not compared
            for k in b:
                walk(a[k], b[k], f"{path}/{k}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}/{i}")
        elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if abs(a - b) > 1e-9 * max(abs(a), abs(b), 1.0):
                out.append(path)
        elif a != b:
            out.append(path)

    for k in ("traces", "flops", "layouts"):
        walk(plan[k], ref[k], k)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("presets", nargs="*", default=PRESETS)
    ap.add_argument("--out", default=str(REPO / "results" / "bench" / "plan-time.json"))
    ap.add_argument("--save-plans", default="", help="a folder for each first plan's JSON (PRESET.json)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from senseflow import config
    from senseflow.bench import record

    for preset in args.presets:  # a bad name stops before any plan runs
        try:
            config.resolve(preset, [])
        except config.ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.save_plans:  # a folder that cannot be written stops before any plan runs
        try:
            Path(args.save_plans).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            print(f"error: --save-plans {args.save_plans}: {e.strerror or e}; give a folder that can be written",
                  file=sys.stderr)
            return 2
    rows = []
    code = 0
    head = record.header("plan-time", 0, {"presets": args.presets, "cores": os.cpu_count()})
    for preset in args.presets:
        with tempfile.TemporaryDirectory(prefix="senseflow-plan-cache-") as cache:
            try:
                first = timed_plan(preset, Path(cache))
                again = timed_plan(preset, Path(cache))
            except PlanFailed as e:  # the rows done so far are written, this one with its error
                print(e, file=sys.stderr)
                rows.append({"preset": preset, "error": str(e)})
                code = e.code
                break
        ref_path = REFERENCE / f"{preset}.json"
        ref = json.loads(ref_path.read_text()) if ref_path.is_file() else None
        plan = first.pop("plan")
        again.pop("plan")
        if args.save_plans:
            (Path(args.save_plans) / f"{preset}.json").write_text(json.dumps(plan, indent=1))
        row = {"preset": preset, "first": first, "cached": again,
               "reference_memory_gib": round(ref["layouts"][0]["total_gib"], 3) if ref else None,
               "reference_tflop_per_iteration": round(sum(ref["flops"].values()) / 1e12, 2) if ref else None,
               # every layout's bytes and every component's FLOPs (ISG's share included), to 1e-9
               "same_as_reference": not _differences(plan, ref) if ref else None,
               "differs_from_reference": _differences(plan, ref) if ref else None}
        rows.append(row)
        print(json.dumps(row), flush=True)
    path = record.write(Path(args.out), {**head, "rows": rows})
    print(f"wrote {path}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
