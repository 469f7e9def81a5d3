#!/usr/bin/env bash
# Create (or reuse) $NEMO_VENV (default .venv) with exactly the versions CI tested: the CPU build of torch
# first (any other version pulls a multi-GB CUDA build here), then the package with its dev extra under
# the constraints file $NEMO_CONSTRAINTS (default constraints/newest.txt; constraints/oldest.txt holds the
# oldest verified transformers). Idempotent and offline after the first run: a stamp in the venv (hash of
# pyproject.toml, the constraints file, this script and the Python version) turns a repeat into a check
# that the venv imports nemo_explore, torch and transformers, with no pip call at all.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${NEMO_VENV:-.venv}"
CONSTRAINTS="${NEMO_CONSTRAINTS:-constraints/newest.txt}"
if [ ! -f "$CONSTRAINTS" ]; then
    echo "setup: no constraints file $CONSTRAINTS (bash scripts/lock.sh writes them)" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
STAMP="$VENV/.nemo-setup-stamp"
want="$({ cat pyproject.toml "$CONSTRAINTS" scripts/setup.sh; "$PY" -c 'import sys; print(sys.version)'; } |
    sha256sum | cut -d' ' -f1)"

report() {
    "$PY" -c 'import sys, torch, transformers, nemo_explore
print(f"torch {torch.__version__}, transformers {transformers.__version__}", end="")' &&
        echo " in $VENV ($CONSTRAINTS)"
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && line="$(report 2>/dev/null)"; then
    echo "setup: up to date: $line"
    exit 0
fi

rm -f "$STAMP"
torch_pin="$(grep -E '^torch==' "$CONSTRAINTS" | cut -d' ' -f1)"
pip=("$PY" -m pip install -q -c "$CONSTRAINTS")
"${pip[@]}" pip "setuptools>=77"   # pip and the build backend, pinned: the package builds without a download
"${pip[@]}" "$torch_pin"            # the CPU build (see README); the pin's CUDA packages are never asked for
"${pip[@]}" --no-build-isolation -e ".[dev]"

# Exactly the pinned versions, and no GPU packages.
"$PY" - "$CONSTRAINTS" <<'PY'
import re
import sys
from importlib.metadata import distributions

from packaging.utils import canonicalize_name
from packaging.version import Version

pins = {}
for line in open(sys.argv[1]):
    m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
    if m:
        pins[canonicalize_name(m[1])] = m[2]
bad = []
for dist in distributions():
    name = canonicalize_name(dist.metadata["Name"])
    if name.startswith(("nvidia-", "cuda-")) or name == "triton":
        bad.append(f"{name} {dist.version} is a GPU package")
    elif name in pins and Version(dist.version).public != Version(pins[name]).public:
        bad.append(f"{name} {dist.version} is installed, {pins[name]} pinned")
if bad:
    sys.exit("setup: " + "; ".join(bad))
PY

line="$(report)"
echo "$want" > "$STAMP"
echo "setup: installed: $line"
