"""Where a CPU forward's freed memory goes: back to the OS, or kept for the next tensor.

PyTorch allocates CPU tensors with the C library's ``malloc``. On Linux, glibc serves each block larger than
its mmap threshold (at most 32 MiB) with fresh pages from the OS and returns them when the block is freed, so
every large temporary of a forward (a Mamba scan's chunk states, an MoE's expert batches, attention scores)
is paid for again, one page fault and one zeroed 4 KiB page at a time. On a model of real shape that is as
much CPU time in the kernel as in the matrix products (README: "CPU forwards").

``reuse_freed_memory()`` asks glibc to keep what is freed and hand it out again: no block is mmapped, and the
heap's free top is never given back (with a finite threshold, gigabytes freed at the top, such as an Explorer
run's points, would be handed back and faulted in again by the next run). Nothing computed changes, only
where the bytes live; the process's resident memory then stays near its peak instead of falling back after
each forward. It is process-wide and lasts for the rest of the process, so it is a call, never a side
effect of an import.
"""

from __future__ import annotations

import ctypes
import platform
import sys
import warnings

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4  # glibc's <malloc.h>
# no block mmapped; the heap's top never given back (-1: mallopt(3)'s value for "no trimming"), grown 64 MiB
# at a time
SETTINGS = {"M_MMAP_MAX": (M_MMAP_MAX, 0), "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, -1),
            "M_TOP_PAD": (M_TOP_PAD, 64 << 20)}  # fmt: skip
_set = False  # reuse_freed_memory() succeeded in this process


def reuse_freed_memory() -> bool:
    """Keep memory freed by tensors in this process for the next ones (Linux with glibc; CPU tensors).

    A forward of a large model on a CPU then spends no time in page faults: here a real-shape Nemotron-H
    forward of 2,048 tokens went from 25 s to 12.5 s. The price: resident memory stays near its peak (here
    3.9 GiB instead of 3.2 GiB for the same work). Returns True once set (a second call sets the same);
    elsewhere (macOS, Windows, musl) it warns, changes nothing and returns False.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        warnings.warn(
            f"reuse_freed_memory needs Linux with glibc (this is {sys.platform}, "
            f"{platform.libc_ver()[0] or 'another C library'}): nothing changed",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    libc = ctypes.CDLL("libc.so.6")
    for name, (option, value) in SETTINGS.items():
        if libc.mallopt(option, value) != 1:
            raise RuntimeError(f"glibc's mallopt refused {name} = {value}; the settings before it were made")
    global _set
    _set = True
    return True


def reusing_freed_memory() -> bool:
    """Whether ``reuse_freed_memory()`` took effect in this process (then a run that keeps large tensors
    copies them into blocks of its own, ``run_with_cache(pack=True)``: see ``core.storage.Blocks``)."""
    return _set
