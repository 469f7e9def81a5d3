#!/usr/bin/env bash
# Set up (idempotent) and open JupyterLab on notebooks/ — the tiny checkpoint is bundled, no network needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
VENV="${NEMO_VENV:-.venv}"
extra=()
[ "$(id -u)" = "0" ] && extra+=(--allow-root)
exec "$VENV/bin/jupyter" lab --notebook-dir=notebooks "${extra[@]}" "$@"
