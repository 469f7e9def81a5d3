"""The supported transformers range, the pins CI tests and Binder's pins cannot drift apart silently.

pyproject.toml's range, nemo_explore/mirror/versions.py's OLDEST_VERIFIED / NEWEST_VERIFIED, constraints/*.txt
(written by scripts/lock.sh) and binder/requirements.txt must tell the same story.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from nemo_explore.mirror.versions import NEWEST_VERIFIED, OLDEST_VERIFIED

ROOT = Path(__file__).resolve().parents[1]
NEWEST = ROOT / "constraints" / "newest.txt"
OLDEST = ROOT / "constraints" / "oldest.txt"
BINDER = ROOT / "binder" / "requirements.txt"


def pins(path: Path) -> dict[str, str]:
    """name -> pinned version of every `name==version` line (markers ignored)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{path.name}: {line!r} is not a pin"
        out[canonicalize_name(req.name)] = spec[0].version
    return out


def dependency(name: str) -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        req = Requirement(dep)
        if canonicalize_name(req.name) == name:
            return req
    raise AssertionError(f"pyproject.toml does not depend on {name}")


def test_verified_range_is_ordered():
    assert Version(OLDEST_VERIFIED) <= Version(NEWEST_VERIFIED)


def test_pyproject_range_starts_at_the_oldest_verified_and_is_open_above():
    """No upper bound: installing nemo-explore never downgrades a user's newer transformers. A release
    newer than NEWEST_VERIFIED runs the mirrored points only if the guard's bit-for-bit self-check passes
    on it, and not at all if scripts/verify_release.py refused it (versions.REFUSED)."""
    spec = dependency("transformers").specifier
    newest = Version(NEWEST_VERIFIED)
    next_minor = Version(f"{newest.major}.{newest.minor + 1}.0")
    assert spec.contains(OLDEST_VERIFIED), f"{spec} excludes the oldest verified {OLDEST_VERIFIED}"
    assert spec.contains(NEWEST_VERIFIED), f"{spec} excludes the newest verified {NEWEST_VERIFIED}"
    assert spec.contains(next_minor), f"{spec} would make pip downgrade a user's {next_minor}"
    before = Version(OLDEST_VERIFIED)
    if before.minor > 0:
        older = Version(f"{before.major}.{before.minor - 1}.99")
        assert not spec.contains(older), f"{spec} admits {older}, older than the oldest verified"


@pytest.mark.parametrize(("path", "version"), [(NEWEST, NEWEST_VERIFIED), (OLDEST, OLDEST_VERIFIED)])
def test_constraints_pin_the_verified_ends(path, version):
    pinned = pins(path)
    assert pinned["transformers"] == version, f"{path.name} pins transformers {pinned['transformers']}"
    assert dependency("torch").specifier.contains(pinned["torch"])
    assert "Regenerate: bash scripts/lock.sh" in path.read_text()


def test_both_ends_share_torch():
    assert pins(NEWEST)["torch"] == pins(OLDEST)["torch"]


def test_binder_pins_what_ci_tests():
    binder, newest = pins(BINDER), pins(NEWEST)
    assert binder["transformers"] == newest["transformers"] == NEWEST_VERIFIED
    assert binder["torch"] == newest["torch"]
    differ = {n: (v, newest.get(n)) for n, v in binder.items() if newest.get(n) != v}
    assert not differ, f"binder/requirements.txt and constraints/newest.txt differ: {differ}"
    gpu = [n for n in binder if n.startswith(("nvidia-", "cuda-")) or n == "triton"]
    assert not gpu, f"binder/requirements.txt would install GPU packages: {gpu}"
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in BINDER.read_text()
