#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite offline, browser tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_browser.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
VENV="${NEMO_VENV:-.venv}"
"$VENV/bin/python" -m ruff check nemo_explore tests bench scripts notebooks
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
