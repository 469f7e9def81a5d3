"""Take a transformers release from "pip serves it" to verified or refused, in one command.

    bash scripts/verify_release.sh 5.26.0      (runs this file in the project's venv)

1. Fingerprints the release's Nemotron-H code (scripts/fingerprint_hf.py) into ``VERIFIED_CODE`` of
   nemo_explore/mirror/versions.py, makes it ``NEWEST_VERIFIED`` if it is newer, and regenerates the pins
   (scripts/lock.sh: constraints/newest.txt, constraints/oldest.txt, binder/requirements.txt).
2. Runs the whole suite (scripts/test.sh: ruff, unit, parity, notebooks, browser) in a fresh venv
   (``.venv-verify``) on those pins.
3. Passed: the release is verified. The changed files are left for you to commit (CI then tests it as
   the newest end) and the README's "Supported versions" to update.
   Failed: every change is undone and the release is added to ``REFUSED`` in nemo_explore/mirror/versions.py
   with the tests that failed, so that the guard refuses the mirrored hook points on it at run time (the
   residual stream keeps working). The suite's output stays in verify-VERSION.log.

pyproject.toml sets no upper bound on transformers: a release nobody verified yet runs only if the guard's
bit-for-bit self-check passes on it (with a warning where its code is new), and is refused otherwise.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from fingerprint_hf import code_fingerprints, modeling_source, render  # noqa: E402

VERSIONS = ROOT / "nemo_explore" / "mirror" / "versions.py"
PINNED = [
    VERSIONS,
    ROOT / "constraints" / "newest.txt",
    ROOT / "constraints" / "oldest.txt",
    ROOT / "binder" / "requirements.txt",
]


def constants(text: str) -> dict:
    """The module-level constants of versions.py's text (``NEWEST_VERIFIED``, ``VERIFIED_CODE``, ...)."""
    found = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.AnnAssign):
            target = node.target
        elif isinstance(node, ast.Assign):
            target = node.targets[0]
        else:
            continue
        if isinstance(target, ast.Name) and node.value is not None:
            with contextlib.suppress(ValueError):  # not a literal: not a constant of interest
                found[target.id] = ast.literal_eval(node.value)
    return found


def add_release(table: dict[str, dict[str, str]], version: str, prints: dict[str, str]) -> dict:
    """``VERIFIED_CODE`` with ``version`` listed under its code's fingerprint for each kind."""
    new = {kind: dict(entries) for kind, entries in table.items()}
    for kind, fingerprint in prints.items():
        entries = new.setdefault(kind, {})
        listed = [v for v in entries.get(fingerprint, "").split(", ") if v]
        entries[fingerprint] = ", ".join(sorted({*listed, version}, key=Version))
    return new


def _replace(text: str, name: str, new: str) -> str:
    """Replace the assignment of ``name`` (one line, or a ``{ ... }`` block ending in a ``}`` line)."""
    pattern = rf"^{name}(: [^=]+)? = (\{{\n.*?^\}}|.*?)$"
    text, n = re.subn(pattern, new, text, count=1, flags=re.S | re.M)
    if n != 1:
        raise SystemExit(f"verify_release: no assignment of {name} found in {VERSIONS}")
    return text


def verified_text(text: str, version: str, prints: dict[str, str]) -> str:
    """versions.py's text with ``version`` verified: its fingerprints listed, NEWEST_VERIFIED moved up."""
    have = constants(text)
    text = _replace(text, "VERIFIED_CODE", render(add_release(have["VERIFIED_CODE"], version, prints)))
    if Version(version) > Version(have["NEWEST_VERIFIED"]):
        text = _replace(text, "NEWEST_VERIFIED", f'NEWEST_VERIFIED = "{version}"')
    return text


def refused_text(text: str, version: str, reason: str) -> str:
    """versions.py's text with ``version`` added to ``REFUSED``."""
    refused = {**constants(text)["REFUSED"], version: reason}
    body = "".join(f"    {v!r}: {r!r},\n" for v, r in sorted(refused.items(), key=lambda i: Version(i[0])))
    return _replace(text, "REFUSED", "REFUSED: dict[str, str] = {\n" + body + "}")


def failures(log: str) -> str:
    """The suite's failing tests, from pytest's summary (or its last line)."""
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", log, flags=re.M)
    if failed:
        return f"{len(failed)} test(s) failed: " + ", ".join(failed[:5]) + (" ..." if len(failed) > 5 else "")
    tail = [line for line in log.splitlines() if line.strip()][-1:] or ["no output"]
    return f"the suite did not pass: {tail[0][:200]}"


def verify(version: str, run: Callable = subprocess.run, wheels: Path | None = None) -> bool:
    """Steps 1-3 of the module's docstring; returns whether the release was verified."""
    wheels = wheels or Path(tempfile.gettempdir()) / "transformers-wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    before = {path: path.read_text() for path in PINNED}
    prints = code_fingerprints(modeling_source(version, wheels))
    old = constants(before[VERSIONS])["VERIFIED_CODE"]
    new_code = [kind for kind, fp in prints.items() if fp not in old.get(kind, {})]
    print(f"verify: transformers {version}: new Nemotron-H code for {', '.join(new_code) or 'no kind'}")
    VERSIONS.write_text(verified_text(before[VERSIONS], version, prints))
    venv = ROOT / ".venv-verify"
    log = ROOT / f"verify-{version}.log"
    try:
        run(["bash", "scripts/lock.sh"], cwd=ROOT, check=True)
        run(["rm", "-rf", str(venv)], check=True)
        env = {**os.environ, "NEMO_VENV": str(venv), "NEMO_CONSTRAINTS": "constraints/newest.txt"}
        print(f"verify: setting up {venv.name} and running the whole suite (log: {log})", flush=True)
        with open(log, "w") as out:
            done = run(["bash", "scripts/test.sh"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        output, passed = log.read_text(), done.returncode == 0
    except subprocess.CalledProcessError as err:
        output, passed = f"{err.cmd} failed with exit status {err.returncode}", False
        log.write_text(output)
    if passed:
        changed = ", ".join(str(p.relative_to(ROOT)) for p in PINNED)
        print(
            f"verify: transformers {version} is verified (log: {log}). Commit {changed} and update the "
            "README's supported versions."
        )
        return True
    for path, text in before.items():
        path.write_text(text)
    reason = failures(output)
    VERSIONS.write_text(refused_text(before[VERSIONS], version, reason))
    print(f"verify: transformers {version} is refused: {reason} (log: {log}); recorded in versions.REFUSED")
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version", help="a transformers release, e.g. 5.26.0")
    args = parser.parse_args(argv)
    return 0 if verify(args.version) else 1


if __name__ == "__main__":
    sys.exit(main())
