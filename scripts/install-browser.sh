#!/usr/bin/env bash
# Headless Chromium for the report test (tests/test_report.py): Debian's `chromium` package, driven by
# Playwright's Python API (pip extra `test`; no browser download). Idempotent: returns at once when
# /usr/bin/chromium exists. Without root or apt it says so and the test skips with that reason.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-browser: not root and no sudo; the report's browser test will skip" >&2; exit 0; fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: no apt-get (not Debian/Ubuntu); the report's browser test will skip" >&2; exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium
