"""Work done in the kernel's idle time: between the messages a notebook sends, never in the way of one.

A Jupyter kernel handles each message (a cell, a click on a widget) on one asyncio event loop. An
:class:`IdleTask` runs an iterator's steps on that loop in slices of about ``SLICE_S`` and hands the loop
back after each slice, so a click that arrives meanwhile waits one slice at most. Outside a running loop
(a script, a test) there is no idle time to use: ``start`` says so and the caller does the work at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

from ._cores import leave_a_core

SLICE_S = 0.05  # the longest a click waits for the work in the background
_END = object()


class IdleTask:
    """Run ``steps`` to the end in the event loop's idle time.

    ``on_step()`` after each slice, ``on_done()`` at the end, ``on_error(err)`` if a step raises (the
    task then stops). ``slice_s``: the work done before the loop is handed back (default ``SLICE_S``).
    ``cancel()`` stops it between slices.
    """

    def __init__(
        self,
        steps: Iterator,
        *,
        on_step: Callable[[], None] | None = None,
        on_done: Callable[[], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        slice_s: float | None = None,
    ) -> None:
        self._steps = steps
        self._on_step, self._on_done, self._on_error = on_step, on_done, on_error
        self._slice = SLICE_S if slice_s is None else slice_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.Handle | None = None
        self.running = False

    def start(self) -> bool:
        """Begin in the running event loop; False (and nothing done) where none runs."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self.running = True
        self._handle = self._loop.call_soon(self._tick)
        return True

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self.running = False

    def _tick(self) -> None:
        if not self.running:
            return
        t0 = time.perf_counter()
        try:
            with leave_a_core():  # the browser may be drawing meanwhile
                while True:  # one step at least, then as many as fit in the slice
                    if next(self._steps, _END) is _END:
                        self.running = False
                        break
                    if time.perf_counter() - t0 >= self._slice:
                        break
        except Exception as err:  # reported where the task's owner shows it: a callback has no caller
            self.running = False
            if self._on_error is None:
                raise
            self._on_error(err)
            return
        if self.running:
            if self._on_step is not None:
                self._on_step()
            self._handle = self._loop.call_soon(self._tick)
        elif self._on_done is not None:
            self._on_done()
