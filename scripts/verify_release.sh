#!/usr/bin/env bash
# One command from "pip serves transformers VERSION" to verified or refused (scripts/verify_release.py):
#   bash scripts/verify_release.sh 5.26.0
# The procedure runs in the project's venv (scripts/setup.sh makes it if needed); the suite itself runs in
# a fresh venv of its own on the new pins.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: bash scripts/verify_release.sh VERSION   (a transformers release)" >&2; exit 2; }
bash scripts/setup.sh >/dev/null
exec "${NEMO_VENV:-.venv}/bin/python" scripts/verify_release.py "$1"
