"""A GPU smoke run's measured peaks (scripts/gpu_smoke.py's JSON) beside a plan of the same configuration made
later, on any machine (`senseflow plan ... --gpus 1 --json`): what a change of the planner does to its
agreement with a measurement already made, without a GPU. Per component, with checkpointing on and off, the
measured peak and the planned one (the 8-bit peaks for an 8-bit run), and the whole run's peak beside the plan
less the text encoders the smoke run does not load.

    python scripts/gpu_smoke_vs_plan.py SMOKE.json PLAN.json [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys

from gpu_smoke import planned_peaks, planned_without_text_encoders  # this folder's scripts/gpu_smoke.py

GIB = 2 ** 30


def compare(smoke: dict, plan: dict) -> dict:
    eight = plan["config"]["optim"]["eight_bit"]
    if (plan["gpus"] != 1 or plan["preset"] != smoke["preset"] or eight != ("optim.eight_bit=true" in smoke["overrides"])
            or plan["config"]["model"]["resolution"] != smoke["resolution"]):
        raise ValueError("the plan is not of the smoke run's configuration (preset, resolution, 8-bit states, one GPU)")
    planned = planned_without_text_encoders(plan)
    rows = []
    for label, measured in smoke["phase_peaks"].items():
        traced = planned_peaks(plan, label)
        for name, r in measured.items():
            m = r["measured_gib"]
            if isinstance(m, str):  # the run's own note (out of memory)
                rows.append({"checkpointing": label, "component": name, "measured": m})
                continue
            p = traced[name] / GIB
            rows.append({"checkpointing": label, "component": name, "measured_gib": round(m, 4),
                         "planned_gib": round(p, 4), "planned_over_measured": round(p / m, 4)})
    return {"card": smoke["card"], "smoke_date": smoke["date"], "eight_bit": eight,
            "run_peak_gib": round(smoke["peak_allocated_gib"], 3),
            "planned_gib_without_text_encoders": round(planned / GIB, 3),
            "planned_over_measured": round(planned / GIB / smoke["peak_allocated_gib"], 4), "components": rows}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("smoke")
    ap.add_argument("plan")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    docs = {}
    for what, path in (("smoke", args.smoke), ("plan", args.plan)):
        try:
            with open(path) as f:
                docs[what] = json.load(f)
        except (OSError, ValueError) as e:
            print(f"error: {what} {path}: {e}; give the JSON of "
                  f"{'scripts/gpu_smoke.py --out' if what == 'smoke' else 'senseflow plan ... --gpus 1 --json'}",
                  file=sys.stderr)
            return 2
    try:
        result = compare(docs["smoke"], docs["plan"])
    except (ValueError, KeyError) as e:
        print(f"error: {args.smoke} and {args.plan}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
