#!/usr/bin/env bash
# Creates .venv and installs prefero with its test extras; re-runs only when pyproject.toml changes.
# TORCH_SPEC picks the torch build (default torch==2.13.0; a GPU machine may already have its own).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.prefero-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  fi
  .venv/bin/python -m pip install -q -e ".[test,lora]"
  echo "$want" > "$stamp"
fi
