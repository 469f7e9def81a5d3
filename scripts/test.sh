#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite offline, browser tests included. NEMO_VENV and
# NEMO_CONSTRAINTS choose the venv and the pins (scripts/setup.sh); arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_browser.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
VENV="${NEMO_VENV:-.venv}"
"$VENV/bin/python" -m ruff check nemo_explore tests bench scripts notebooks
rc=0
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@" || rc=$?
if [ "$rc" = 5 ]; then
    echo "test: pytest ran no test (exit 5): that is a failure here" >&2
fi
exit "$rc"
