#!/usr/bin/env bash
# The test suite, set-up included: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check prefero tests benchmarks   # lint and import order (pyproject.toml [tool.ruff])
exec .venv/bin/python -m pytest "$@"
