"""reuse_freed_memory: a freed large tensor's pages are handed out again instead of faulted in afresh, the
model computes the same bits, and where glibc is absent nothing changes and the user is told. Run in
subprocesses: the setting is process-wide and would change the rest of the test session."""

import subprocess
import sys
import textwrap

import pytest
import torch

import nemo_explore as ne
from nemo_explore.core import allocator

# page faults of allocating, touching and freeing 64 MiB (16,384 pages of 4 KiB), round after round
FAULTS = """
import resource, torch
import nemo_explore as ne

def faults():
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(64 << 20, dtype=torch.uint8)
    x.fill_(1)
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

faults()
print(faults(), ne.reuse_freed_memory(), ne.reuse_freed_memory(), *(faults() for _ in range(8)))
"""


def run(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_freed_pages_are_reused_instead_of_faulted_in_again():
    before, first, again, *rounds = run(FAULTS)
    assert int(before) >= 16_000  # glibc's default: 64 MiB of fresh pages each time
    assert (first, again) == ("True", "True")
    # The heap grows to hold the tensor once; a small block allocated beside it while it lived can leave
    # the freed hole just too small for the next aligned request, which then lands above it once more.
    # After that the heap holds both places and no round faults (30 runs here: none from the fourth on).
    assert sum(map(int, rounds[:3])) <= 2 * 16_384 + 500, rounds
    assert all(int(n) < 500 for n in rounds[3:]), f"{rounds} page faults per 64 MiB round after the setting"


def test_a_large_free_top_of_the_heap_is_kept():
    # 2.25 GiB malloc'd, touched and freed at the heap's top, by glibc directly (a torch tensor of that size
    # may land elsewhere than the top: an aligned block does not always fit the hole the last one left).
    # With a finite trim threshold (2 GiB, mallopt's largest int) glibc hands the top back each time and the
    # next block faults in 573,440 pages again; an Explorer run letting go of 2.6 GiB of points did that.
    code = """
    import ctypes, resource
    import nemo_explore as ne
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

    def faults(n=9 << 28):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(n)
        libc.memset(block, 1, n)
        libc.free(block)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

    print(ne.reuse_freed_memory(), faults(), faults(), faults())
    """
    done, first, *again = run(code)
    assert done == "True" and int(first) > 500_000  # the heap grows once
    assert all(int(n) < 500 for n in again), f"{again} page faults for 2.25 GiB freed and taken again"


def test_the_model_computes_the_same_bits_after_it(tmp_path):
    # reused memory is not zeroed: a computation that read a tensor it never wrote would differ here
    code = f"""
    import torch
    import nemo_explore as ne
    model = ne.load("tiny")
    text = "The little cat sat on the mat by the door. " * 8
    def points():
        logits, cache = model.run_with_cache(text)
        return {{"logits": logits, **{{name: cache[name] for name in cache}}}}
    torch.save(points(), {str(tmp_path / "a.pt")!r})
    ne.reuse_freed_memory()
    points()
    torch.save(points(), {str(tmp_path / "b.pt")!r})
    """
    run(code)
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert len(a) > 50 and a.keys() == b.keys()
    assert [name for name in a if not torch.equal(a[name], b[name])] == []


def test_elsewhere_it_warns_and_changes_nothing(monkeypatch):
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    with pytest.warns(RuntimeWarning, match="needs Linux with glibc .*nothing changed"):
        assert ne.reuse_freed_memory() is False
