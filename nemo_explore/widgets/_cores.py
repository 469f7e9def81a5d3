"""The threads a view's computation uses: all of torch's but one core, left to the browser.

A JupyterLab on the same machine as its kernel draws while the kernel computes: a click's computation (a
window of a p×p map, a pooled overview, a layer's state norms) runs while the browser lays out what the
click changed, and the state norms computed in idle time run while it draws a Run. With torch on every
core, each parallel step then waits for the thread the browser pushed aside. On a 2-core machine, clicks on
a real shape at 4k tokens took 0.68-1.02 s at 2 threads beside one busy core and 0.25-0.55 s at 1 thread
(0.12-0.35 s at 2 threads with nothing else running; README, "The Explorer at real size and length").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def leave_a_core() -> Iterator[None]:
    """torch's intra-op threads lowered to one fewer than the cores (if they were more) inside the block."""
    n = torch.get_num_threads()
    want = max(1, min(n, cores() - 1))
    if want == n:
        yield
        return
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(n)
