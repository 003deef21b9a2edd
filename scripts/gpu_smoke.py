"""One full-size, random-init SenseFlow run on a CUDA GPU, beside the planner's prediction (scripts/gpu-smoke.sh).

SD3.5-Medium's published architecture (teacher, G, F, DINOv2-L and the VFM heads; prompt embeddings of
the right shapes stand in for the text encoders, which are not loaded) at the preset's resolution,
bf16 autocast, the precision policy of the config (G, F, D heads at train.trainable_dtype, teacher and
frozen backbones at model.dtype), gradient checkpointing; `--iterations` of `Distiller.step` on random
latents. Prints seconds per iteration (after the first) and torch's peak allocated memory, and the
planner's one-GPU figure for the same networks (text encoders excluded).

Then, per component of one generator iteration (the planner's own phases: the last anchor, with backward
simulation), the peak memory the component allocates on top of what was there (torch.cuda's peak
allocated, reset before each phase), with gradient checkpointing on and off, beside the planner's traced
figure for the same component (`peak_new`) and beside the planner's storage tracker (LiveBytes) run on the
same GPU iteration. Memory is torch's caching allocator's count of allocated bytes
(torch.cuda.max_memory_allocated): what tensors hold, not what the allocator has reserved from the driver.

The plan comes from `--plan FILE` (the JSON of `senseflow plan PRESET ... --gpus 1 --json`, made on any
machine: it is the same fake-tensor trace everywhere) when given, else the planner runs here (minutes of
one CPU core). A plan made for another configuration is refused.

    python scripts/gpu_smoke.py [--iterations 20] [--plan FILE] [--out FILE] [overrides...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

SMOKE_OVERRIDES = ["train.gradient_checkpointing=true", "train.mixed_precision=bf16"]


def planned_without_text_encoders(plan: dict) -> float:
    """Bytes on the GPU of a one-GPU plan (its JSON) less the text encoders, which this run does not load."""
    import torch

    text = sum((n["params"] + n["buffers"]) * getattr(torch, n["dtype"]).itemsize
               for n in plan["networks"] if n["role"] == "text encoder")
    return plan["layouts"][0]["total_gib"] * 2 ** 30 - text


def planned_peaks(plan: dict, label: str) -> dict[str, int]:
    """Per component, the plan's traced peak ('checkpointing' or 'no checkpointing') for the run's optimizer:
    with 8-bit AdamW, the peaks without torch AdamW's temporaries (Trace.component_peaks)."""
    return plan["traces"][label]["peak_new_8bit" if plan["config"]["optim"]["eight_bit"] else "peak_new"]


def _plan(cfg, path: str, card_gib: float) -> dict:
    from senseflow import planner

    if not path:
        return planner.plan(cfg, gpus=1, gpu_mem_gib=card_gib).to_dict()
    with open(path) as f:
        d = json.load(f)
    if d.get("config") != cfg.to_dict() or d.get("gpus") != 1:
        raise SystemExit(f"gpu_smoke: --plan {path} was made for another configuration or GPU count; make it with "
                         f"`senseflow plan {cfg.preset} {' '.join(SMOKE_OVERRIDES)} [overrides] --gpus 1 --json`")
    return d


def _phase_peaks(cfg, distiller, batch) -> dict[str, int]:
    """Per component of one generator iteration: the peak bytes allocated during it on top of what was there
    when the iteration began (what earlier components left alive counts, as in the planner's trace)."""
    import torch

    from senseflow import planner

    k = distiller.few_step.num_steps - 1
    out = {}
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    with planner._autocast(cfg, "cuda"):  # as traced: autocast without its weight cache
        for name, fn in planner.iteration_parts(distiller, batch, k, True, True):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            out[name] = torch.cuda.max_memory_allocated() - base
    return out


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA GPU visible (torch.cuda.is_available() is False); nothing run", file=sys.stderr)
        return 3
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="sd35-medium-senseflow")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--plan", default="", help="the planner's JSON for this run (senseflow plan ... --gpus 1 --json)")
    ap.add_argument("--out", default="")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from senseflow import config, planner

    cfg = config.resolve(args.preset, [*SMOKE_OVERRIDES, *args.overrides])
    parts = planner.run_parts(cfg)
    card = torch.cuda.get_device_properties(0).total_memory
    t0 = time.perf_counter()
    p = _plan(cfg, args.plan, card / 2 ** 30)
    plan_s = time.perf_counter() - t0
    predicted = planned_without_text_encoders(p)

    print(f"planner: {predicted / 2 ** 30:.1f} GiB on one GPU without the text encoders "
          f"(card: {card / 2 ** 30:.1f} GiB; plan {'read from ' + args.plan if args.plan else f'made in {plan_s:.0f} s'})",
          flush=True)
    if predicted > card:
        print(f"gpu_smoke: the planner says this run does not fit one {torch.cuda.get_device_name(0)} "
              f"({predicted / 2 ** 30:.1f} GiB > {card / 2 ** 30:.1f} GiB); pass overrides that shrink it, e.g. "
              "gan.hidden_channels=256 or model.resolution=512", file=sys.stderr)
        return 4
    dev = torch.device("cuda")
    t0 = time.perf_counter()
    distiller, text = planner.build_distiller(cfg, parts, fake=False, checkpointing=True, device=dev)
    batch = planner.make_batch(cfg, distiller, text, cfg.train.batch_size, device="cuda")
    build_s = time.perf_counter() - t0
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
    print(f"{args.iterations} iterations: {sum(steady) / len(steady):.3f} s each after the first "
          f"({times[0]:.1f} s), peak allocated {peak / 2 ** 30:.1f} GiB", flush=True)
    phases = {}
    for ck in (True, False):
        planner.set_checkpointing(distiller, ck)
        label = "checkpointing" if ck else "no checkpointing"
        try:
            measured = _phase_peaks(cfg, distiller, batch)
            # the planner's own storage tracker on the real GPU tensors: tells the trace's errors (fake CPU
            # tensors against these) from the tracker's (these against the allocator)
            live, _ = planner.measure_iteration(cfg, distiller, batch, distiller.few_step.num_steps - 1, True,
                                                flops=False)
        except torch.cuda.OutOfMemoryError as e:
            measured, live = {"out of memory": str(e).splitlines()[0]}, {}
        traced = planned_peaks(p, label)
        phases[label] = {name: {"measured_gib": v / 2 ** 30 if isinstance(v, int) else v,
                                "storages_followed_on_gpu_gib": live.get(name, 0) / 2 ** 30,
                                "planned_gib": traced.get(name, 0) / 2 ** 30,
                                "planned_over_measured": (traced.get(name, 0) / v) if isinstance(v, int) and v else None}
                         for name, v in measured.items()}
        for name, r in phases[label].items():
            mg = r["measured_gib"]
            shown = mg if isinstance(mg, str) else f"{mg:.2f} GiB"
            print(f"  {label:17s} {name:20s} measured {shown}, followed {r['storages_followed_on_gpu_gib']:.2f} GiB, "
                  f"planned {r['planned_gib']:.2f} GiB", flush=True)
    result = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "preset": args.preset,
              "overrides": [*SMOKE_OVERRIDES, *args.overrides], "batch_size": cfg.train.batch_size,
              "resolution": cfg.model.resolution, "iterations": args.iterations,
              "build_seconds": build_s, "first_iteration_seconds": times[0],
              "seconds_per_iteration": sum(steady) / len(steady), "peak_allocated_gib": peak / 2 ** 30,
              "planned_gib_without_text_encoders": predicted / 2 ** 30,
              "planned_over_measured": predicted / peak,
              "planned_seconds_per_iteration": p["seconds_per_iteration"], "plan_from": args.plan or "run here",
              "phase_peaks": phases,
              "memory": "torch.cuda.max_memory_allocated (bytes held by tensors; allocator reserve not counted)",
              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
