#!/usr/bin/env bash
# Regenerate the pinned versions with uv's resolver (`uv pip compile`, uv pinned below, installed into
# .venv-lock on first use):
#   constraints/newest.txt  the dev extra's whole closure at transformers == NEWEST_VERIFIED (the default
#                           of scripts/setup.sh)
#   constraints/oldest.txt  the same pins, but transformers == OLDEST_VERIFIED (and whatever must move
#                           with it; the newest pins are the resolver's preferences, so nothing else moves
#                           unless it has to)
#   binder/requirements.txt the notebook extra's closure at the newest pins, minus torch's CUDA packages
#                           (Binder takes the CPU build of torch from PyTorch's CPU index)
# OLDEST_VERIFIED / NEWEST_VERIFIED are read from nemo_explore/mirror/versions.py; torch stays at TORCH below.
# Usage: bash scripts/lock.sh             keep every current pin that still resolves (after a change of
#                                         pyproject.toml or of the verified range)
#        bash scripts/lock.sh --upgrade   take the newest release of everything that is not pinned here
# Resolved for CPython 3.11 on x86_64 Linux, what CI runs; the files are used with `pip install -c`, so a
# pin of a package that nothing asks for (torch's nvidia-* on a CPU build) installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
TORCH=2.13.0
TARGET=(--python-version 3.11 --python-platform x86_64-manylinux_2_28)

TOOL=.venv-lock
if ! "$TOOL/bin/uv" --version 2>/dev/null | grep -qx "uv $UV_VERSION.*"; then
    rm -rf "$TOOL"
    python3 -m venv "$TOOL"
    "$TOOL/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
UV="$TOOL/bin/uv"

read -r OLDEST NEWEST < <(python3 - <<'PY'
import ast, pathlib
found = {}
for path in ("nemo_explore/mirror/versions.py", "nemo_explore/mirror/guard.py"):
    p = pathlib.Path(path)
    if not p.exists():
        continue
    for node in ast.parse(p.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id in ("OLDEST_VERIFIED", "NEWEST_VERIFIED"):
                    found.setdefault(t.id, node.value.value)
print(found["OLDEST_VERIFIED"], found["NEWEST_VERIFIED"])
PY
)
echo "lock: torch $TORCH, transformers $OLDEST (oldest) and $NEWEST (newest), uv $UV_VERSION"

header() {  # header WHICH TRANSFORMERS
    cat <<EOF
# Constraints (pip install -c) for nemo-explore's dev extra at the $1 verified transformers, $2:
# every package the tests, notebooks and browser tests need, pinned as CI tested them. Used by
# scripts/setup.sh (NEMO_CONSTRAINTS=constraints/$1.txt). torch $TORCH is installed first as the CPU build;
# the nvidia-*, cuda-* and triton pins come from PyPI's metadata of torch's CUDA build and are never
# installed (a constraint installs nothing by itself).
# Regenerate: bash scripts/lock.sh   (bash scripts/lock.sh --upgrade for the newest releases)
# Resolved for CPython 3.11, x86_64 Linux; edit nothing by hand.
EOF
}

compile() {  # compile OUT TRANSFORMERS [uv args...]: the dev extra plus pip and the build backend
    local out="$1" tf="$2"
    shift 2
    printf 'pip\nsetuptools>=77\ntorch==%s\ntransformers==%s\n' "$TORCH" "$tf" |
        "$UV" pip compile -q pyproject.toml - --extra dev "${TARGET[@]}" \
            --custom-compile-command "bash scripts/lock.sh" -o "$out" "$@"
}

mkdir -p constraints
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

[ -f constraints/newest.txt ] && cp constraints/newest.txt "$tmp/newest.txt"
compile "$tmp/newest.txt" "$NEWEST" "$@"
{ header newest "$NEWEST"; cat "$tmp/newest.txt"; } > constraints/newest.txt

cp constraints/newest.txt "$tmp/oldest.txt"   # preferences: only what must move with transformers moves
compile "$tmp/oldest.txt" "$OLDEST"
{ header oldest "$OLDEST"; cat "$tmp/oldest.txt"; } > constraints/oldest.txt
echo "lock: oldest differs from newest in:"
diff <(grep -v '^ *#' constraints/newest.txt) <(grep -v '^ *#' constraints/oldest.txt) | sed -n 's/^> /    /p' || true

"$UV" pip compile -q pyproject.toml --extra notebook "${TARGET[@]}" -c constraints/newest.txt \
    --no-annotate --no-header -o "$tmp/binder.txt"
{
    cat <<EOF
# repo2docker (mybinder.org): CPU-only torch from PyTorch's CPU index, no GPU packages (~2 GB RAM budget).
# The notebook extra's closure at the pins of constraints/newest.txt, less torch's CUDA packages.
# Regenerate: bash scripts/lock.sh   (edit nothing by hand)
--extra-index-url https://download.pytorch.org/whl/cpu
EOF
    grep -Ev '^(nvidia-|cuda-|triton==)' "$tmp/binder.txt"
} > binder/requirements.txt
echo "lock: wrote constraints/newest.txt ($(grep -c '==' constraints/newest.txt) pins)," \
    "constraints/oldest.txt, binder/requirements.txt ($(grep -c '==' binder/requirements.txt) pins)"
