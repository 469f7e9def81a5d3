#!/usr/bin/env bash
# Create (or reuse) .venv with everything nemo-explore needs: CPU torch 2.13.0 first (any other version
# pulls a multi-GB CUDA build here), then the package with its notebook and dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${NEMO_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q -e ".[dev]"
echo "setup: $("$PY" -c 'import torch, transformers, nemo_explore; print("torch", torch.__version__, "transformers", transformers.__version__, "nemo_explore", nemo_explore.__version__)')"
