#!/usr/bin/env bash
# GPU smoke run: the GPU-marked tests, then one full-size random-init SD3.5-Medium SenseFlow run of 20
# iterations at 1024x1024 beside the planner's prediction, and with 2+ GPUs the FSDP gradient check over NCCL
# (tests/dist_worker.py "grads" on the nccl backend: the gradients of a tiny real SD3.5 distiller sharded
# over 2 processes equal the average of the unsharded per-rank gradients).
# Budget on one H100, by construction: GPU-marked tests ~2 min, the planner ~2 min (one CPU core; none with
# GPU_SMOKE_PLAN=FILE, the JSON of `senseflow plan sd35-medium-senseflow train.gradient_checkpointing=true
# train.mixed_precision=bf16 --gpus 1 --json` made on any machine), 20 full-size iterations and the
# per-component memory check ~3 min (the planner's 35%-MFU estimate is 0.22 s per iteration; model set-up and
# the first iterations dominate), the NCCL check ~1 min with 2+ GPUs; each step is capped with `timeout` so
# the whole script stops within 10 minutes. A failed step does not stop the others; the script exits 1 if
# any failed, after naming them. Exits 3 with one line when no CUDA GPU is visible.
# SD3.5-Medium's full-size run needs 96.8 GiB by the plan (95.6 GiB measured on an H200, 2026-11-27): on a
# card with less (an 80 GB H100) it stops with the planner's figure (exit 4); pass overrides that shrink it
# (optim.eight_bit=true: 67.6 GiB planned, 66.5 GiB measured on an H100, 2026-11-28). Measured on one H200:
# GPU-marked tests 54 s, the full-size run 52 s (12 iterations) to 80 s (20); on one H100: 40 s, and the
# 8-bit run of 20 iterations 67 s with its per-component check.
# Usage: [GPU_SMOKE_PLAN=plan.json] bash scripts/gpu-smoke.sh [overrides for the full-size run...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu-smoke: no CUDA GPU visible (torch.cuda.is_available() is False); nothing run" >&2
  exit 3
fi
NGPU="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
mkdir -p results/bench
failed=()
echo "== GPU-marked tests ($NGPU GPU(s))"
timeout 180 "$PY" -m pytest -q -m gpu tests/test_gpu.py || failed+=("GPU-marked tests")
echo "== full-size SD3.5-Medium, random init, 20 iterations at 1024x1024"
timeout 300 "$PY" scripts/gpu_smoke.py --iterations 20 ${GPU_SMOKE_PLAN:+--plan "$GPU_SMOKE_PLAN"} \
  --out results/bench/gpu-smoke.json "$@" || failed+=("full-size run")
if [ "$NGPU" -ge 2 ]; then
  echo "== FSDP gradient check over NCCL (2 processes, tiny SD3.5 distiller, train.parallel=fsdp)"
  run_dir="$(mktemp -d)"
  SENSEFLOW_DIST_BACKEND=nccl timeout 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 \
    tests/dist_worker.py "$run_dir" sd35-large-senseflow grads -- \
    model.tiny=true model.resolution=32 train.batch_size=2 eval.metrics=[] train.mixed_precision=no gan.layers=null \
    gan.omega=one gan.weight=1.0 optim.eight_bit=false model.dtype=float32 train.trainable_dtype=float32 \
    optim.ttur=1 optim.grad_clip=1e9 train.parallel=fsdp || failed+=("NCCL gradient check")
  [ -f "$run_dir/grads.json" ] || echo '{}' > "$run_dir/grads.json"
  "$PY" - "$run_dir/grads.json" <<'PYEOF' || failed+=("NCCL gradient comparison")
import json, sys
report = json.load(open(sys.argv[1]))
if not report:
    sys.exit("gpu-smoke: the NCCL gradient check wrote no report")
bad = [p for p, r in report.items() if not (r["same_names"] and r["max_abs_diff"] <= 1e-4 * r["scale"] + 1e-9)]
for p, r in report.items():
    print(f"  {p}: {r['params']} tensors, max |sharded - unsharded mean| {r['max_abs_diff']:.3g} (scale {r['scale']:.3g})")
if bad:
    sys.exit(f"gpu-smoke: FSDP gradients over NCCL differ from the unsharded ones: {', '.join(bad)}")
PYEOF
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu-smoke: failed: ${failed[*]}" >&2
  exit 1
fi
echo "gpu-smoke: done"
