#!/usr/bin/env bash
# GPU smoke run: the GPU-marked tests, then one full-size random-init SD3.5-Medium SenseFlow run of
# 20 iterations at 1024x1024 beside the planner's prediction, and with 2+ GPUs a 2-process FSDP run over NCCL.
# Exits 3 with one line when no CUDA GPU is visible. Usage: bash scripts/gpu-smoke.sh [overrides...]
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
echo "== GPU-marked tests ($NGPU GPU(s))"
"$PY" -m pytest -q -m gpu tests/test_gpu.py
echo "== full-size SD3.5-Medium, random init, 20 iterations at 1024x1024"
"$PY" scripts/gpu_smoke.py --iterations 20 --out results/bench/gpu-smoke.json "$@"
if [ "$NGPU" -ge 2 ]; then
  echo "== FSDP over NCCL: a 2-process tiny SD3.5 run (train.parallel=fsdp)"
  run_dir="$(mktemp -d)"
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m senseflow train sd35-large-senseflow \
    model.tiny=true model.resolution=32 train.batch_size=2 eval.metrics=[] train.iterations=4 \
    train.checkpoint_every=2 gan.layers=null train.parallel=fsdp "output.root=$run_dir"
fi
echo "gpu-smoke: done"
