"""Exact streaming top-k contexts per unit, ordered by (score desc, doc asc, position asc).

A unit is one (block, expert) or (block, head), numbered ``block_slot * units + unit``. Each batch offers
its best tokens per unit (every token tied with the batch's k-th best included, so ties are resolved by
document and position, never by which kernel ran); the running set keeps the k best. Merging two sets is
the same selection, so shard partials fold into the exact top-k of the whole corpus.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .batches import Batch

FIELDS = ("key", "score", "doc", "pos", "ids", "values")


def empty(width: int) -> dict[str, np.ndarray]:
    """A set with no context; ``ids``/``values`` are ``(n, width)``."""
    return {
        "key": np.zeros(0, np.int64), "score": np.zeros(0, np.float64), "doc": np.zeros(0, np.int64),
        "pos": np.zeros(0, np.int64), "ids": np.zeros((0, width), np.int64),
        "values": np.zeros((0, width), np.float32),
    }  # fmt: skip


def select(sets: list[dict[str, np.ndarray]], k: int) -> dict[str, np.ndarray]:
    """The k best of each unit over the union of ``sets``, sorted by unit then rank."""
    both = {f: np.concatenate([s[f] for s in sets]) for f in FIELDS}
    order = np.lexsort((both["pos"], both["doc"], -both["score"], both["key"]))
    key = both["key"][order]
    first = np.searchsorted(key, key, side="left")  # index where each unit's run starts
    keep = order[np.arange(len(key)) - first < k]
    return {f: both[f][keep] for f in FIELDS}


def ranks(key: np.ndarray) -> np.ndarray:
    """0, 1, 2... within each unit of a selected (sorted) set."""
    return np.arange(len(key)) - np.searchsorted(key, key, side="left")


class TopK:
    """The running top-k contexts of one kind's units, fed a batch at a time."""

    def __init__(self, k: int, window: int) -> None:
        self.k, self.window = k, window
        self.offsets = None
        self.best = empty(2 * window + 1)

    def add(
        self,
        batch: Batch,
        scores: torch.Tensor,
        key_offset: int,
        values: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> None:
        """``scores`` ``(b, p, u)``: -inf where a token may not be a context. ``values(row, pos, unit, idx)``
        -> ``(n, 2w+1)`` shading values of each candidate's window positions ``idx`` (clamped to the row)."""
        b, p, u = scores.shape
        flat = scores.reshape(b * p, u)
        kth = flat.topk(min(self.k, b * p), dim=0).values[-1]  # (u,)
        token, unit = ((flat >= kth) & (flat > -torch.inf)).nonzero(as_tuple=True)
        if token.numel() == 0:
            return
        row, pos = token // p, token % p
        if self.offsets is None or self.offsets.device != scores.device:
            self.offsets = torch.arange(-self.window, self.window + 1, device=scores.device)
        idx = pos[:, None] + self.offsets
        inside = (idx >= 0) & (idx < batch.lengths[row, None])
        idx = idx.clamp(0, p - 1)
        ids = torch.where(inside, batch.ids[row[:, None], idx], -1)
        vals = torch.where(inside, values(row, pos, unit, idx).float(), 0.0)
        offered = {
            "key": (unit + key_offset).cpu().numpy(),
            "score": flat[token, unit].double().cpu().numpy(),
            "doc": batch.doc[row].cpu().numpy(),
            "pos": (batch.start[row] + pos).cpu().numpy(),
            "ids": ids.cpu().numpy(),
            "values": vals.cpu().numpy(),
        }
        self.best = select([self.best, offered], self.k)
