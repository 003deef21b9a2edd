"""One full-size, random-init SenseFlow run on a CUDA GPU, beside the planner's prediction (scripts/gpu-smoke.sh).

SD3.5-Medium's published architecture (teacher, G, F, DINOv2-L and the VFM heads; prompt embeddings of
the right shapes stand in for the text encoders, which are not loaded) at the preset's resolution,
bf16 autocast, the precision policy of the config (G, F, D heads at train.trainable_dtype, teacher and
frozen backbones at model.dtype), gradient checkpointing; `--iterations` of `Distiller.step` on random
latents. Prints seconds per iteration (after the first) and torch's peak allocated memory, and the
planner's one-GPU figure for the same networks (text encoders excluded).

    python scripts/gpu_smoke.py [--iterations 20] [overrides...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA GPU visible (torch.cuda.is_available() is False); nothing run", file=sys.stderr)
        return 3
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="sd35-medium-senseflow")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--out", default="")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from senseflow import config, planner

    cfg = config.resolve(args.preset, ["train.gradient_checkpointing=true", "train.mixed_precision=bf16",
                                       *args.overrides])
    parts = planner.run_parts(cfg)
    p = planner.plan(cfg, gpus=1, gpu_mem_gib=torch.cuda.get_device_properties(0).total_memory / 2 ** 30)
    text_bytes = sum(n.bytes for n in p.networks if n.role == "text encoder")
    predicted = p.chosen.total - text_bytes

    card = torch.cuda.get_device_properties(0).total_memory
    print(f"planner: {predicted / 2 ** 30:.1f} GiB on one GPU without the text encoders "
          f"(card: {card / 2 ** 30:.1f} GiB)", flush=True)
    if predicted > card:
        print(f"gpu_smoke: the planner says this run does not fit one {torch.cuda.get_device_name(0)} "
              f"({predicted / 2 ** 30:.1f} GiB > {card / 2 ** 30:.1f} GiB); pass overrides that shrink it, e.g. "
              "gan.hidden_channels=256 or model.resolution=512", file=sys.stderr)
        return 4
    dev = torch.device("cuda")
    distiller, text = planner.build_distiller(cfg, parts, fake=False, checkpointing=True, device=dev)
    batch = planner.make_batch(cfg, distiller, text, cfg.train.batch_size, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    times = []
    for it in range(args.iterations):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            m = distiller.step(it, batch)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if not all(v == v for v in m.values()):
            print(f"gpu_smoke: non-finite metrics at iteration {it}: {m}", file=sys.stderr)
            return 1
    peak = torch.cuda.max_memory_allocated()
    steady = times[1:] or times
    result = {"card": torch.cuda.get_device_name(0), "preset": args.preset, "iterations": args.iterations,
              "seconds_per_iteration": sum(steady) / len(steady), "peak_allocated_gib": peak / 2 ** 30,
              "planned_gib_without_text_encoders": predicted / 2 ** 30,
              "planned_seconds_per_iteration": {c: p.seconds_per_iteration(c) for c in planner.PEAK_BF16},
              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
