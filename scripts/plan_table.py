"""The README's table "what each paper run needs": every paper preset planned on 8 x 80 GB GPUs (the paper's
set-up) with gradient checkpointing as the preset has it (on) and off, printed as Markdown rows; each plan's
JSON is written to OUT/PRESET.json (checkpointing on) and OUT/PRESET-off.json.

    python scripts/plan_table.py results/bench/plans-YYYY-MM-DD
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESETS = ["sd35-large-senseflow", "sd35-large-dmd2", "sd35-medium-senseflow", "sd35-medium-dmd2",
           "flux-dev-senseflow", "flux-dev-dmd2", "sdxl-senseflow", "sdxl-dmd2"]


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python scripts/plan_table.py OUT_FOLDER", file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    try:  # before minutes of planning
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: OUT_FOLDER {out}: {e.strerror or e}; give a folder that can be written", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    from senseflow import config, planner

    gib = planner.GIB
    for preset in PRESETS:
        plans = {}
        for ck in (True, False):
            cfg = config.resolve(preset, [f"train.gradient_checkpointing={str(ck).lower()}"])
            plans[ck] = planner.plan(cfg, gpus=8, gpu_mem_gib=80.0)
            d = plans[ck].to_dict()
            (out / f"{preset}{'' if ck else '-off'}.json").write_text(json.dumps(d, indent=1, default=str))
        on, off = (plans[ck].chosen for ck in (True, False))
        p = plans[True]
        flops = sum(p.flops.values())
        print(f"| {preset} | {on.total / gib:.1f} GiB ({off.total / gib:.1f} GiB) | "
              f"{on.bytes['activations'] / gib:.1f} GiB ({off.bytes['activations'] / gib:.1f} GiB) | "
              f"{'fits' if p.fits else 'does not fit'} | {p.smallest_cluster or '-'} | {flops / 1e12:.0f} TFLOP | "
              f"{p.seconds_per_iteration('A100'):.2f} s / {p.seconds_per_iteration('H100'):.2f} s |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
