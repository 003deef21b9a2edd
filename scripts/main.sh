#!/usr/bin/env bash
# The main job on the embedded digits world: install, build the world, run the ablation grid locally,
# evaluate, sync DuckDB, print the ablation table, write the plots and the HTML report. Re-running skips finished work.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
SF=.venv/bin/senseflow
GRID=${GRID:-experiments/digits/ablation.yaml}
$SF world digits build
$SF world digits baselines --grid digits-ablation
$SF grid run "$GRID" --executor local
$SF results table digits-ablation
$SF results plots digits-ablation
$SF results report digits-ablation
