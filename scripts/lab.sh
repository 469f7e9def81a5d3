#!/usr/bin/env bash
# Set up (idempotent) and open JupyterLab on notebooks/ — the tiny checkpoint is bundled, no network needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
VENV="${NEMO_VENV:-.venv}"
# Widget state saved with the notebook, so that a saved notebook shows its widgets without a kernel
# (JupyterLab's "Save Widget State Automatically"); this venv's JupyterLab only.
settings="$("$VENV/bin/python" -c 'import sys; print(sys.prefix)')/share/jupyter/lab/settings"
mkdir -p "$settings" && cp scripts/lab-overrides.json "$settings/overrides.json"
extra=()
[ "$(id -u)" = "0" ] && extra+=(--allow-root)
# Opens on the quickstart, as the Binder link does.
exec "$VENV/bin/jupyter" lab --notebook-dir=notebooks --LabApp.default_url=/lab/tree/01_quickstart.ipynb \
    "${extra[@]}" "$@"
