"""scripts/verify_release.py: a new transformers release becomes verified (fingerprints listed, newest end
moved) or refused (every change undone, the release recorded in versions.REFUSED), by the suite's verdict.
The suite and the pins' resolver are stubbed here; the fingerprints are of the installed release's code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers.models.nemotron_h import modeling_nemotron_h as hf_code

from nemo_explore.mirror import guard, versions

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import verify_release  # noqa: E402

CANDIDATE = "9.9.0"  # no such release: nothing may confuse it with a real one


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """verify_release pointed at a copy of the files it edits, reading the installed HF code."""
    copies = []
    for path in verify_release.PINNED:
        copy = tmp_path / path.relative_to(ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, copy)
        copies.append(copy)
    monkeypatch.setattr(verify_release, "ROOT", tmp_path)
    monkeypatch.setattr(verify_release, "VERSIONS", copies[0])
    monkeypatch.setattr(verify_release, "PINNED", copies)
    source = Path(hf_code.__file__).read_text(encoding="utf-8")
    monkeypatch.setattr(verify_release, "modeling_source", lambda version, wheels: source)
    return tmp_path, copies


def suite(returncode: int, output: str = ""):
    """A stand-in for subprocess.run: lock.sh and rm succeed, test.sh prints ``output`` and ends with
    ``returncode``."""
    calls = []

    def run(cmd, stdout=None, **kwargs):
        calls.append(cmd)
        if "scripts/test.sh" not in cmd:
            return subprocess.CompletedProcess(cmd, 0)
        stdout.write(output)
        return subprocess.CompletedProcess(cmd, returncode)

    return run, calls


def test_a_release_whose_suite_passes_is_verified(repo, tmp_path):
    _, copies = repo
    run, calls = suite(0, "500 passed")
    assert verify_release.verify(CANDIDATE, run=run, wheels=tmp_path)
    assert ["bash", "scripts/lock.sh"] in calls and ["bash", "scripts/test.sh"] in calls
    have = verify_release.constants(copies[0].read_text())
    assert have["NEWEST_VERIFIED"] == CANDIDATE and have["OLDEST_VERIFIED"] == versions.OLDEST_VERIFIED
    installed = versions.code_fingerprints(Path(hf_code.__file__).read_text(encoding="utf-8"))
    for kind, fingerprint in installed.items():  # listed beside the installed release, under the same code
        listed = have["VERIFIED_CODE"][kind][fingerprint].split(", ")
        assert CANDIDATE in listed and versions.installed() in listed
    compile(copies[0].read_text(), "versions.py", "exec")  # still Python


def test_a_release_whose_suite_fails_is_refused_and_nothing_else_changes(repo, tmp_path):
    _, copies = repo
    before = {path: path.read_text() for path in copies}
    log = "FAILED tests/test_guard.py::test_x - MirrorError\nFAILED tests/test_parity.py::test_y\n2 failed"
    run, _ = suite(1, log)
    assert not verify_release.verify(CANDIDATE, run=run, wheels=tmp_path)
    for path in copies[1:]:
        assert path.read_text() == before[path], f"{path.name} was not restored"
    have = verify_release.constants(copies[0].read_text())
    assert have["NEWEST_VERIFIED"] == versions.NEWEST_VERIFIED
    assert have["VERIFIED_CODE"] == versions.VERIFIED_CODE
    assert have["REFUSED"] == {
        CANDIDATE: "2 test(s) failed: tests/test_guard.py::test_x, tests/test_parity.py::test_y"
    }


def test_a_refused_release_is_refused_at_run_time(monkeypatch):
    guard.reset()
    monkeypatch.setitem(versions.REFUSED, versions.installed(), "2 test(s) failed: tests/test_x.py::t")
    try:
        with pytest.raises(versions.MirrorError, match=r"was tested and refused \(2 test\(s\) failed"):
            guard.ensure("mlp")
    finally:
        guard.reset()
