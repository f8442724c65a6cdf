#!/usr/bin/env bash
# The GPU checks in as few runs as possible, for a GPU machine without internet.
#
#   bash benchmarks/gpu.sh wheels   # on a machine with internet: TRL, Liger, datasets as wheels in .whl/
#   bash benchmarks/gpu.sh tests    # on the GPU machine: the CUDA tests (FlexAttention backward, bf16, trainer)
#   bash benchmarks/gpu.sh bench    # on the GPU machine: prefero vs TRL on the issue-4 anchor setup
#
# tests and bench install .whl/*.whl (if present) into /tmp/site without touching the
# machine's own torch/transformers, and write their logs and results under $OUT
# (default benchmarks/results).
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-}
OUT=${OUT:-benchmarks/results}
PY=${PYTHON:-python3}

case "$what" in
wheels)
    # pure-Python wheels for CPython 3.12 on x86-64 Linux; everything else they need is
    # what a CUDA PyTorch image usually has (torch, transformers, accelerate, pyarrow, pandas)
    mkdir -p .whl  # ignored by .gitignore; name it in the device call's carry
    exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl trl==1.16.0 liger-kernel==0.8.5 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
    ;;
tests | bench) ;;
*)
    echo "usage: bash benchmarks/gpu.sh wheels|tests|bench" >&2
    exit 2
    ;;
esac

mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$OUT/gpu.txt"

if [ "$what" = tests ]; then
    "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_logprobs.py tests/test_losses.py 2>&1 \
        | tee "$OUT/gpu_tests.log"
else
    "$PY" benchmarks/dpo_vs_trl.py --device cuda --out "$OUT/dpo_vs_trl" "${@:2}" 2>&1 | tee "$OUT/bench.log"
fi
