#!/usr/bin/env bash
# The second regime of the digits ablation: 1-step students (anchor 999), where the do-nothing teacher is 32x
# the floor. Same five configurations and seeds as the main job; run after it (needs the installed .venv and
# the built world, which this builds if missing). Re-running skips finished work.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
SF=.venv/bin/senseflow
$SF world digits build
$SF world digits baselines --grid digits-ablation-1step --anchors 999
$SF grid run experiments/digits/ablation-1step.yaml --executor local
$SF results table digits-ablation-1step --metric fid_t --metric fid --metric prompt_accuracy --metric diversity
$SF results plots digits-ablation-1step --no-sync
$SF results report digits-ablation-1step --no-sync
