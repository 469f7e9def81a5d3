"""A block's p × p maps — attention pattern, Mamba-2 hidden attention — as windows computed on demand.

An h × p × p map per layer does not fit in memory at long inputs (64 heads at 4,096 tokens: 4 GiB), but
what it is made of is per-token and small: an attention layer's pattern comes from its queries and keys
(``hook_q``, ``hook_k``: O(p·d)), a Mamba layer's hidden attention from ``hook_dt``, ``hook_B``, ``hook_C``
and the layer's A. :func:`pairwise_maps` gives, for one block and one batch row, an object that computes
any window of query rows × key columns from those — with the very functions the hook points run, so a
window equals the rows ``hook_pattern`` / ``hook_hidden_attn`` carry bit for bit — or slices the map itself
when the cache holds it. The views read p × p maps only through it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import ssd
from .mirror import hf_layout
from .mirror.mixers.attention import ROWS, scores_and_pattern

__all__ = [
    "HiddenAttentionFromSSM",
    "PairwiseMaps",
    "PatternFromQK",
    "StoredMaps",
    "available",
    "pairwise_maps",
]

POINT = {"attention": "attn.hook_pattern", "mamba": "mamba.hook_hidden_attn"}
# the per-token points each map is computed from
PER_TOKEN = {
    "attention": ("attn.hook_q", "attn.hook_k"),
    "mamba": ("mamba.hook_dt", "mamba.hook_B", "mamba.hook_C"),
}
POOLED_ENTRIES = 1 << 24  # a pooled overview computes at most about this many map entries
POOLED_CALL_ENTRIES = 1 << 20  # ... this many at a time


class PairwiseMaps:
    """One block's maps for one batch row: ``n_heads`` maps of query rows ``rows`` (start, stop) × ``n_keys``
    key columns. ``window`` computes any rectangle, ``pooled`` a block-mean overview of one head."""

    kind: str  # 'attention' or 'mamba'
    n_heads: int
    n_keys: int
    rows: tuple[int, int]  # the query rows it can give

    def window(self, start: int, stop: int, key_start: int = 0, key_stop: int | None = None, heads=None):
        """Query rows start..stop-1 × key columns key_start..key_stop-1: (h', n_q, n_k) float32 on the CPU,
        or (n_q, n_k) for one ``heads`` int (None: every head)."""
        q0, q1 = self.rows
        key_stop = self.n_keys if key_stop is None else key_stop
        if not (q0 <= start < stop <= q1 and 0 <= key_start < key_stop <= self.n_keys):
            raise IndexError(
                f"window rows {start}..{stop - 1} × keys {key_start}..{key_stop - 1} outside the "
                f"{q0}..{q1 - 1} × 0..{self.n_keys - 1} this {self.kind} map has"
            )
        idx = ssd.head_indices(heads, self.n_heads)
        maps = self._window(start, stop, key_start, key_stop, idx).float().cpu()
        return maps[0] if isinstance(heads, int) else maps

    def _window(self, start: int, stop: int, key_start: int, key_stop: int, heads: list[int]) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def pooled(
        self, start: int, stop: int, key_start: int, key_stop: int, head: int, size: int, transform=None
    ) -> tuple[torch.Tensor, int]:
        """Block means of one head's query rows start..stop-1 × keys key_start..key_stop-1, at most ``size``
        a side, and how many rows each mean covers: ``((t, u), rows)``. The bins are adaptive pooling's.
        When a bin has more rows than ``POOLED_ENTRIES`` allows, its mean is over the run of that many rows
        at its centre (the map is never built whole: at 32k tokens a head's is 4 GiB). ``transform`` maps
        each computed block of rows (n, m) before it is averaged, row by row (e.g. to shares of the row)."""
        n, m = stop - start, key_stop - key_start
        t, u = min(n, size), min(m, size)
        bins = [(start + i * n // t, start + -(-(i + 1) * n // t)) for i in range(t)]
        take = max(1, min(max(b - a for a, b in bins), POOLED_ENTRIES // (t * m)))
        centres = [a + max(0, b - a - take) // 2 for a, b in bins]  # each bin's run starts here
        runs = [(c, min(b, c + take)) for c, (_, b) in zip(centres, bins, strict=True)]
        means = torch.empty(t, m)
        most = max(1, POOLED_CALL_ENTRIES // m)  # rows computed in one call
        i = 0
        while i < t:  # runs that follow on from each other are computed together, up to `most` rows
            j, first = i + 1, runs[i][0]
            while j < t and runs[j][0] == runs[j - 1][1] and runs[j][1] - first <= most:
                j += 1
            rows = self.window(first, runs[j - 1][1], key_start, key_stop, head)
            rows = rows if transform is None else transform(rows)
            for k in range(i, j):
                means[k] = rows[runs[k][0] - first : runs[k][1] - first].mean(0)
            i = j
        low = F.adaptive_avg_pool1d(means[None], u)[0] if u < m else means
        return low, take


class StoredMaps(PairwiseMaps):
    """A map the cache holds (``hook_pattern`` / ``hook_hidden_attn``): ``maps`` (h, q, p) of query rows
    ``q0``..``q0 + q - 1``."""

    def __init__(self, kind: str, maps: torch.Tensor, q0: int = 0) -> None:
        self.kind, self._maps = kind, maps
        self.n_heads, q, self.n_keys = maps.shape
        self.rows = (q0, q0 + q)

    def _window(self, start, stop, key_start, key_stop, heads):
        q0 = self.rows[0]
        return self._maps[heads, start - q0 : stop - q0, key_start:key_stop]


class PatternFromQK(PairwiseMaps):
    """An attention layer's pattern from its queries ``q`` (p, h, d) and keys ``k`` (p, h_kv, d) (``hook_q``,
    ``hook_k`` of one batch row), ``keep`` (p,) bool the keys that are not padding (None: all), and the
    layer's ``scaling``: scores and softmax exactly as ``hook_pattern`` computes them, for the rows asked."""

    kind = "attention"

    def __init__(
        self, q: torch.Tensor, k: torch.Tensor, scaling: float, keep: torch.Tensor | None = None
    ) -> None:
        self._q = q.transpose(0, 1)[None]  # 1 h p d, as the mixer has them
        self._k = k.permute(1, 2, 0).contiguous().transpose(1, 2)[None]  # 1 h_kv p d, laid out as kᵀ
        self._scaling, self._keep = scaling, keep
        p, self.n_heads, _ = q.shape
        self.n_keys, self.rows = k.shape[0], (0, p)
        self._rep = self.n_heads // k.shape[1]

    def _window(self, start, stop, key_start, key_stop, heads):
        # the aligned blocks of rows the window lies in, sliced before the heads are picked (no copy of q)
        a0, a1 = start - start % ROWS, min(self.rows[1], -(-stop // ROWS) * ROWS)
        q = self._q[:, :, a0:a1][:, heads]
        # the keys a query may see: up to itself (a causal prefill from position 0), never padding
        keep = torch.arange(self.n_keys)[None, :] <= torch.arange(start, stop)[:, None]
        if self._keep is not None:
            keep = keep & self._keep.cpu()[None, :]
        keep = keep.to(q.device)[None, None]
        rows, keys = slice(start - a0, stop - a0), slice(key_start, key_stop)
        kv = [h // self._rep for h in heads]  # each query head's key head (GQA)
        _, pattern = scores_and_pattern(q, self._k, keep, self._scaling, rows, keys, kv=kv, scores=False)
        return pattern[0]


class HiddenAttentionFromSSM(PairwiseMaps):
    """A Mamba-2 layer's hidden attention M from ``dt`` (p, h) (``hook_dt``: the step sizes used), ``B``,
    ``C`` (p, g, n) and the layer's ``A`` (h,): ``ssd.hidden_attention``, as ``hook_hidden_attn`` computes
    it."""

    kind = "mamba"

    def __init__(self, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> None:
        self._dt, self._A, self._B, self._C = dt[None], A, B[None], C[None]
        p, self.n_heads = dt.shape
        self.n_keys, self.rows = p, (0, p)

    def _window(self, start, stop, key_start, key_stop, heads):
        M = ssd.hidden_attention(
            self._dt, self._A, self._B, self._C, heads=heads, query_window=(start, stop),
            key_window=(key_start, key_stop),
        )  # fmt: skip
        return M[0]


def available(cache, layer: int) -> bool:
    """Whether :func:`pairwise_maps` can give block ``layer``'s maps from ``cache``."""
    kind = cache.layer_types[layer]
    if kind not in POINT:
        return False
    if f"blocks.{layer}.{POINT[kind]}" in cache:
        return True
    has_model = getattr(getattr(cache, "model", None), "hf_model", None) is not None
    return has_model and all(f"blocks.{layer}.{p}" in cache for p in PER_TOKEN[kind])


def pairwise_maps(cache, layer: int, batch: int = 0, query_start: int | None = None) -> PairwiseMaps:
    """Block ``layer``'s p × p maps for row ``batch`` of ``cache``: sliced from ``hook_pattern`` /
    ``hook_hidden_attn`` when the cache holds it, else computed from the per-token points it is made of
    (which needs the model the cache was run with, ``cache.model``). A clear error says what to cache.
    ``query_start``: the first query row a stored map holds when it holds a window of rows (default: the
    window the cache says it was run with)."""
    kind = cache.layer_types[layer]
    if kind not in POINT:
        raise ValueError(f"block {layer} is a {kind} layer: p × p maps exist for attention and Mamba layers")
    stored = f"blocks.{layer}.{POINT[kind]}"
    if stored in cache:
        maps = cache[stored]
        if not 0 <= batch < maps.shape[0]:
            raise IndexError(f"batch={batch} out of range: {stored} holds {maps.shape[0]} rows")
        maps = maps[batch].detach()
        if kind == "mamba" and cache.options.hidden_attn_heads is not None:
            raise ValueError(
                f"{stored} holds the heads hidden_attn_heads={cache.options.hidden_attn_heads!r} only: "
                "cache every head"
            )
        h, q, p = maps.shape
        if q != p and query_start is None:
            option = "pattern_window" if kind == "attention" else "hidden_attn_window"
            window = getattr(cache.options, option)
            if window is None or window[1] - window[0] != q:
                raise ValueError(
                    f"{stored} holds {q} query rows of {p} positions: say which, with the rows it was "
                    f"computed for ({option}=(start, stop))"
                )
            query_start = window[0]
        return StoredMaps(kind, maps, query_start or 0)
    names = [f"blocks.{layer}.{p}" for p in PER_TOKEN[kind]]
    missing = [n for n in names if n not in cache]
    hf = getattr(getattr(cache, "model", None), "hf_model", None)
    if missing or hf is None:
        raise ValueError(
            f"block {layer}'s {POINT[kind].split('.')[1]} needs {stored}, or {', '.join(names)} and the "
            f"model (missing: {', '.join(missing) or 'the model: run it with model.run_with_cache'}): "
            f"cache them, e.g. model.run_with_cache(text, names_filter={names!r})"
        )
    first = cache[names[0]]
    if not 0 <= batch < first.shape[0]:
        raise IndexError(f"batch={batch} out of range: {names[0]} holds {first.shape[0]} rows")
    mixer = hf_layout.mixer(hf, layer)
    if kind == "attention":
        q, k = (cache[n][batch].detach() for n in names)
        mask = cache.attention_mask
        keep = None if mask is None else torch.as_tensor(mask)[batch].bool()
        return PatternFromQK(q, k, hf_layout.attn_scaling(mixer), keep)
    dt, B, C = (cache[n][batch].detach() for n in names)
    A = -torch.exp(hf_layout.mamba_A_log(mixer).detach().float()).to(dt.device)
    return HiddenAttentionFromSSM(dt, A, B, C)
