#!/usr/bin/env bash
# Create .venv and install nlsearch into it. Idempotent: a second run only checks.
# On a machine without an NVIDIA GPU a CPU build of torch is installed first, so that
# resolving the package's dependencies never pulls the multi-GB CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        .venv/bin/pip install -q torch
    else
        # a build among local wheels (a find-links folder; its dependencies come with the package's
        # below) first, then PyTorch's CPU index, then the default index
        V="${NLSEARCH_CPU_TORCH:-2.13.0}"
        .venv/bin/pip install -q --no-index --no-deps "torch==$V" 2>/dev/null \
            || .venv/bin/pip install -q "torch==$V" --index-url https://download.pytorch.org/whl/cpu \
            || .venv/bin/pip install -q "torch==$V"
    fi
fi
.venv/bin/pip install -q -e ".[test]"
