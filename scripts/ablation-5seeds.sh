#!/usr/bin/env bash
# The main job's grid at all its 5 seeds: runs seeds 3 and 4 of experiments/digits/ablation.yaml (seeds 0-2
# are the main job's and are skipped when done; on a fresh clone they run here too), then the table with
# paired differences, the plots and the report over the 5 seeds (the README's 4-step table). Needs the
# installed .venv; builds the world and the reference rows if missing. Re-running skips finished work.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
SF=.venv/bin/senseflow
$SF world digits build
$SF world digits baselines --grid digits-ablation
$SF grid run experiments/digits/ablation.yaml --executor local
$SF results table digits-ablation --metric fid_t --metric fid --metric prompt_accuracy --metric diversity
$SF results plots digits-ablation --no-sync
$SF results report digits-ablation --no-sync
