#!/usr/bin/env bash
# The main job on the embedded digits world: install, build the world, run the paper-form ablation grid
# (4-step students, 5 seeds) locally, record the reference rows, print the ablation table with paired
# differences, write the plots and the HTML report. Re-running skips finished work.
# The second regime (1-step students) has its own command: bash scripts/ablation-1step.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
SF=.venv/bin/senseflow
$SF world digits build
$SF world digits baselines --grid digits-ablation
$SF grid run experiments/digits/ablation.yaml --executor local
$SF results table digits-ablation --metric fid_t --metric fid --metric prompt_accuracy --metric diversity
$SF results plots digits-ablation --no-sync
$SF results report digits-ablation --no-sync
