#!/usr/bin/env bash
# Take the steps repo2docker takes for Binder (no Docker engine here): a fresh environment from binder/,
# then run the quickstart notebook in it and check the kernel's peak memory against Binder's ~2 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=.venv-binder
rm -rf "$ENV"
python3 -m venv "$ENV"
PY="$ENV/bin/python"
export PIP_RETRIES=0 PIP_TIMEOUT=5   # the CPU index is out of reach here; pip falls back to what it has
"$PY" -m pip install -q -c constraints/newest.txt pip
"$PY" -m pip install -q -r binder/requirements.txt
PATH="$ENV/bin:$PATH" bash binder/postBuild
"$PY" -m pip install -q -c constraints/newest.txt nbclient nbformat ipykernel   # to run the notebook here
if "$PY" -m pip list 2>/dev/null | grep -Eqi '^(nvidia-|cuda-|triton )'; then
    echo "binder: GPU packages were installed"; exit 1
fi
"$PY" -c 'import torch, transformers; print(f"binder: torch {torch.__version__}, transformers {transformers.__version__}")'
HF_HUB_OFFLINE=1 "$PY" - <<'PY'
import resource, nbformat
from nbclient import NotebookClient
nb = nbformat.read("notebooks/01_quickstart.ipynb", as_version=4)
NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": "notebooks"}}).execute()
errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
assert not errors, errors[0]["evalue"]
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**10
print(f"binder: quickstart ran; kernel peak RSS {peak:.0f} MiB")
assert peak < 2000, "over Binder's ~2 GB"
PY
