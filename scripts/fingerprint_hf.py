"""Print ``VERIFIED_CODE`` for nemo_explore/mirror/versions.py from transformers releases' Nemotron-H code.

    python scripts/fingerprint_hf.py 5.21.0 5.22.2 5.23.0 5.24.0

Each release's wheel is fetched with ``pip download --no-deps`` (or read from --wheels DIR); nothing is
installed. Run it after the whole test suite passed on a release, and paste the output over VERIFIED_CODE.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nemo_explore.mirror.versions import code_fingerprints  # noqa: E402

MODELING = "transformers/models/nemotron_h/modeling_nemotron_h.py"


def modeling_source(version: str, wheels: Path) -> str:
    found = sorted(wheels.glob(f"transformers-{version}-*.whl"))
    if not found:
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels)]
        subprocess.run([*pip, f"transformers=={version}"], check=True)
        found = sorted(wheels.glob(f"transformers-{version}-*.whl"))
    with zipfile.ZipFile(found[0]) as wheel:
        return wheel.read(MODELING).decode()


def fingerprint_table(versions: list[str], wheels: Path) -> dict[str, dict[str, str]]:
    """kind -> fingerprint -> the releases (comma-separated) among ``versions`` that ship that code."""
    table: dict[str, dict[str, list[str]]] = {}
    for version in versions:
        for kind, fingerprint in code_fingerprints(modeling_source(version, wheels)).items():
            table.setdefault(kind, {}).setdefault(fingerprint, []).append(version)
    return {kind: {fp: ", ".join(vs) for fp, vs in prints.items()} for kind, prints in table.items()}


def render(table: dict[str, dict[str, str]]) -> str:
    """The ``VERIFIED_CODE = {...}`` assignment of nemo_explore/mirror/versions.py for ``table``."""
    lines = ["VERIFIED_CODE: dict[str, dict[str, str]] = {"]
    for kind, prints in table.items():
        lines.append(f"    {kind!r}: {{")
        lines += [f"        {fingerprint!r}: {versions!r}," for fingerprint, versions in prints.items()]
        lines.append("    },")
    return "\n".join([*lines, "}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="+")
    parser.add_argument("--wheels", type=Path, default=Path(tempfile.gettempdir()) / "transformers-wheels")
    args = parser.parse_args()
    args.wheels.mkdir(parents=True, exist_ok=True)
    print(render(fingerprint_table(args.versions, args.wheels)))


if __name__ == "__main__":
    main()
