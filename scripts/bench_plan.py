"""Planned vs measured: the planner's peak memory and FLOPs against one real training iteration.

For each size (SD3.5-Medium's published blocks, 1 or 2 of them, at 64 or 128 px; fp32) a fresh process
builds the real networks on the CPU with random weights, creates every optimizer state, and runs one
generator iteration of the Distiller (the last anchor, with backward simulation) under FlopCounterMode.

Memory is measured as resident set size: the kernel's high-water mark (VmHWM, reset through
/proc/self/clear_refs just before the iteration) minus the process's resident size before any network
was built, with glibc's mmap threshold lowered to 64 KiB so that freed tensors go back to the kernel at
once instead of staying in the heap. The planner's figure is its fake-tensor trace of the same
configuration: parameters + buffers + optimizer states + the traced peak of what the iteration creates.

    python scripts/bench_plan.py [--sizes 1x64 2x64 1x128]     -> results/bench/plan-<date>.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["model.dtype=float32", "train.trainable_dtype=float32", "train.mixed_precision=no",
             "gan.backbone=facebook/dinov2-small", "gan.layers=[3, 7, 11]", "gan.hidden_channels=64",
             "optim.eight_bit=false", "train.batch_size=1"]
TEXT_TOKENS = 77 + 32


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def setup(size: str):
    """size "BxR": B of SD3.5-Medium's blocks at R x R pixels."""
    from senseflow import config, planner

    blocks, res = (int(v) for v in size.split("x"))
    cfg = config.resolve("sd35-medium-senseflow", OVERRIDES + [f"model.resolution={res}"])
    parts = planner.run_parts(cfg, blocks=blocks, text_tokens=TEXT_TOKENS)
    parts.overrides["pos_embed_max_size"] = 16  # the 384-wide position table would dwarf a 64 px run
    return cfg, parts


def measure(size: str) -> dict:
    """In this (fresh) process: build, warm the optimizers, run one iteration; RSS and FLOPs."""
    import torch

    torch.set_num_threads(1)
    from senseflow import planner

    cfg, parts = setup(size)
    base = _rss_kib("VmRSS")
    torch.manual_seed(0)
    distiller, text = planner.build_distiller(cfg, parts, fake=False, checkpointing=False)
    batch = planner.make_batch(cfg, distiller, text, cfg.train.batch_size)
    planner.warm_optimizers(distiller)
    opts = [o for o in (distiller.opt_g, distiller.opt_f, distiller.opt_d) if o is not None]
    static = planner._static_bytes(distiller, opts)
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    flops = planner.count_flops(distiller, batch, distiller.few_step.num_steps - 1, True, True)
    peak = _rss_kib("VmHWM")
    return {"size": size, "static_bytes_exact": static, "rss_static_bytes": (before - base) * 1024,
            "rss_peak_bytes": (peak - base) * 1024, "flops": flops}


def planned(size: str) -> dict:
    """The planner's trace of the same iteration (gradient checkpointing off, as train.py runs on a CPU):
    static bytes, the peak of what the iteration creates, and FLOPs by component, from one fake pass."""

    from senseflow import planner

    cfg, parts = setup(size)
    with planner._fake_mode():  # the trace's own mode (deep copies keep it)
        d, text = planner.build_distiller(cfg, parts, fake=True)
        batch = planner.make_batch(cfg, d, text, cfg.train.batch_size)
        planner.warm_optimizers(d)
        opts = [o for o in (d.opt_g, d.opt_f, d.opt_d) if o is not None]
        static = planner._static_bytes(d, opts)
        peaks, flops = planner.measure_iteration(cfg, d, batch, d.few_step.num_steps - 1, True)
    return {"static_bytes": static, "peak_new": peaks, "peak_bytes": static + max(peaks.values()), "flops": flops}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["1x64", "2x64", "1x128"], help="BLOCKSxPIXELS")
    ap.add_argument("--child", default=None)
    ap.add_argument("--out", default=str(REPO / "results" / "bench" / f"plan-{time.strftime('%Y-%m-%d')}.json"))
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child)))
        return 0
    import torch

    from senseflow import planner

    torch.set_num_threads(1)
    rows = []
    for b in args.sizes:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        out = subprocess.run([sys.executable, __file__, "--child", str(b)], capture_output=True, text=True, env=env)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        m = json.loads(out.stdout.strip().splitlines()[-1])
        p = planned(b)
        fake_flops = p["flops"]
        row = {"size": b, "measured_peak_gib": m["rss_peak_bytes"] / planner.GIB,
               "planned_peak_gib": p["peak_bytes"] / planner.GIB,
               "memory_error": p["peak_bytes"] / m["rss_peak_bytes"] - 1,
               "measured_static_gib": m["rss_static_bytes"] / planner.GIB,
               "planned_static_gib": p["static_bytes"] / planner.GIB, "planned_peak_new_bytes": p["peak_new"],
               "static_exact_gib": m["static_bytes_exact"] / planner.GIB,
               "flops_measured": sum(m["flops"].values()), "flops_planned": sum(fake_flops.values()),
               "flops_equal": m["flops"] == fake_flops, "flops_by_component": m["flops"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": os.uname().nodename, "cpus": os.cpu_count(),
              "torch": torch.__version__, "preset": "sd35-medium-senseflow", "overrides": OVERRIDES,
              "text_tokens": TEXT_TOKENS, "memory": "RSS high-water mark minus RSS before building (see module doc)",
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
