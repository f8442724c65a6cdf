#!/usr/bin/env bash
# The Quickstart demo, set-up included: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/prefero demo "$@"
