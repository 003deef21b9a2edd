#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project with pinned versions.
# Idempotent: a second call with nothing changed returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.senseflow-install-stamp"
want=$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q -c requirements/constraints.txt -e ".[test]"
# image-reward 1.5 pins timm/protobuf versions that conflict with open-clip-torch 3; its real
# runtime needs are installed above, so it goes in alone (evals/image_reward.py adapts it to transformers 5).
python -m pip install -q --no-deps image-reward==1.5
echo "$want" > "$stamp"
