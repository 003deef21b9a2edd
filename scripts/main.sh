#!/usr/bin/env bash
# The main job on the embedded digits world: install, build the world, run the paper-form ablation grid
# (4-step students) locally for seeds 0-2, record the reference rows, print the ablation table with paired
# differences, write the plots and the HTML report, then the job's wall time split by step. Re-running skips
# finished work. Seeds 3 and 4 of the same grid (the README's 5-seed table) have their own command:
# bash scripts/ablation-5seeds.sh; the second regime (1-step students): bash scripts/ablation-1step.sh
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
SPLIT=()
step() { local t0=$SECONDS; "$@"; SPLIT+=("$(( SECONDS - t0 )) s  ${*:2:3}"); }
step bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
SF=.venv/bin/senseflow
step $SF world digits build
step $SF world digits baselines --grid digits-ablation
step $SF grid run experiments/digits/ablation.yaml --executor local --seeds 0 --seeds 1 --seeds 2
step $SF results table digits-ablation --metric fid_t --metric fid --metric prompt_accuracy --metric diversity
step $SF results plots digits-ablation --no-sync
step $SF results report digits-ablation --no-sync
echo "main job: $(( SECONDS - START )) s in all"
printf '  %s\n' "${SPLIT[@]}"
# inside `grid run`: seconds summed over the runs (two run at once), as each run's status.json records them
$SF results query --format table "select count(*) as runs, round(sum((status->>'train_seconds')::double)) as train_s,
  round(sum((status->>'eval_seconds')::double)) as eval_s from runs where grid = 'digits-ablation' and current
  and json_extract_string(config, '$.method') != 'reference'"
