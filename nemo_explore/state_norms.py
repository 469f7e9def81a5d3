"""Mamba state norms computed after the run, from the per-token points they are made of.

A Mamba block's ``hook_state_norm`` (b p h) is computed during the forward from its x, dt, B and the
layer's A (``ssd.state_norms``): about a third of the cost of the block's own scan. A run that caches
``hook_x``, ``hook_dt`` and ``hook_B`` instead can have the norms afterwards, bit for bit:
:class:`StateNormJob` computes them block by block, a few milliseconds of work at a time, and puts each
into the cache under its usual name. The Explorer runs one in the kernel's idle time, so that its views
are drawn right after the forward and the norms follow without holding up a click.

Exact for a run that started at the first token (no past cache) and kept its points as computed (no
``dtype=``), which is how the Explorer runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import torch

from .core import ssd
from .mirror import hf_layout

__all__ = ["FROM_POINTS", "POINT", "StateNormJob", "computable"]

POINT = "mamba.hook_state_norm"
FROM_POINTS = ("mamba.hook_x", "mamba.hook_dt", "mamba.hook_B")  # what a block's norms are made of


def computable(cache, layer: int) -> bool:
    """Whether block ``layer``'s state norms can be computed from ``cache`` (its x, dt, B and the model)."""
    hf = getattr(getattr(cache, "model", None), "hf_model", None)
    return (
        hf is not None
        and cache.layer_types[layer] == "mamba"
        and all(f"blocks.{layer}.{p}" in cache for p in FROM_POINTS)
    )


class StateNormJob:
    """The state norms of the Mamba blocks ``layers`` of ``cache`` (default: every one the cache lacks
    and can compute), computed from their per-token points and put into the cache as
    ``blocks.{i}.mamba.hook_state_norm``.

    ``steps()`` does the work a block of tokens at a time (yielding the block index in progress);
    ``compute(i)`` finishes block ``i`` at once; ``finish()`` all of them. ``pending`` lists the blocks
    still to do, ``seconds`` the time spent so far.
    """

    def __init__(self, cache, layers: Sequence[int] | None = None) -> None:
        wanted = cache.layers("mamba") if layers is None else list(layers)
        self.cache = cache
        self.pending = [i for i in wanted if f"blocks.{i}.{POINT}" not in cache]
        bad = [i for i in self.pending if not computable(cache, i)]
        if bad:
            need = ", ".join(f"blocks.{bad[0]}.{p}" for p in FROM_POINTS)
            raise ValueError(
                f"the state norms of block {bad[0]} need {need} and the model the cache was run with"
            )
        self.total = len(self.pending)
        self.seconds = 0.0
        self._current: tuple[int, torch.Tensor, Iterator[int]] | None = None

    @property
    def done(self) -> bool:
        return not self.pending

    def steps(self) -> Iterator[int]:
        """Compute the pending blocks a few milliseconds at a time: yields the block in progress after each
        step, ends when none is pending (blocks finished meanwhile by ``compute`` are skipped)."""
        while self.pending:
            if self._current is None or self._current[0] not in self.pending:
                self._current = self._start(self.pending[0])
            layer, out, blocks = self._current
            t0 = time.perf_counter()
            finished = next(blocks, None) is None
            self.seconds += time.perf_counter() - t0
            if finished:
                self._complete(layer, out)
            yield layer

    def compute(self, layer: int) -> None:
        """Block ``layer``'s norms now (nothing to do if they are in the cache already)."""
        if layer not in self.pending:
            return
        current = self._current
        layer, out, blocks = current if current and current[0] == layer else self._start(layer)
        t0 = time.perf_counter()
        for _ in blocks:
            pass
        self.seconds += time.perf_counter() - t0
        self._complete(layer, out)

    def finish(self) -> None:
        """Every pending block's norms now."""
        for _ in self.steps():
            pass

    def _start(self, layer: int) -> tuple[int, torch.Tensor, Iterator[int]]:
        x, dt, B = (self.cache[f"blocks.{layer}.{p}"] for p in FROM_POINTS)
        mixer = hf_layout.mixer(self.cache.model.hf_model, layer)
        A = -torch.exp(hf_layout.mamba_A_log(mixer).detach().float()).to(x.device)
        out = torch.empty(x.shape[:3], dtype=torch.float32, device=x.device)
        return layer, out, ssd.state_norm_steps(x, dt, A, B, out)

    def _complete(self, layer: int, out: torch.Tensor) -> None:
        self.cache._put(f"blocks.{layer}.{POINT}", out)
        self.pending.remove(layer)
        if self._current is not None and self._current[0] == layer:
            self._current = None
