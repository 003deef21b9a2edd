#!/usr/bin/env bash
# The main job on the embedded digits world: install, build the world, run the paper-form ablation grid
# (4-step students) locally for seeds 0-2, record the reference rows, print the ablation table with paired
# differences, write the plots and the HTML report, then the job's wall time split by step (also written to
# results/main-job.json; `senseflow bench main-job` runs this script in a fresh clone and splits the grid's
# time further). Re-running skips finished work. Seeds 3 and 4 of the same grid (the README's 5-seed table)
# have their own command: bash scripts/ablation-5seeds.sh; the second regime (1-step students):
# bash scripts/ablation-1step.sh
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
SPLIT=()
JSON=()
# step NAME COMMAND...: run it, keep its wall time under NAME (printed at the end, and written to
# results/main-job.json, which `senseflow bench main-job` reads)
step() { local name=$1 t0=$SECONDS; shift; "$@"; SPLIT+=("$(( SECONDS - t0 )) s  $name")
         JSON+=("{\"step\": \"$name\", \"seconds\": $(( SECONDS - t0 ))}"); }
step install bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
SF=.venv/bin/senseflow
step "world build" $SF world digits build
step "reference rows" $SF world digits baselines --grid digits-ablation
step grid $SF grid run experiments/digits/ablation.yaml --executor local --seeds 0 --seeds 1 --seeds 2
step table $SF results table digits-ablation --metric fid_t --metric fid --metric prompt_accuracy --metric diversity
step plots $SF results plots digits-ablation --no-sync
step report $SF results report digits-ablation --no-sync
echo "main job: $(( SECONDS - START )) s in all"
printf '  %s\n' "${SPLIT[@]}"
mkdir -p results
( IFS=,; printf '{"grid": "digits-ablation", "seconds": %s, "steps": [%s]}\n' "$(( SECONDS - START ))" "${JSON[*]}" ) \
  > results/main-job.json
# inside `grid run`: seconds summed over the runs (two run at once), as each run's status.json records them
$SF results query --format table "select count(*) as runs, round(sum((status->>'train_seconds')::double)) as train_s,
  round(sum((status->>'eval_seconds')::double)) as eval_s from runs where grid = 'digits-ablation' and current
  and json_extract_string(config, '$.method') != 'reference'"
