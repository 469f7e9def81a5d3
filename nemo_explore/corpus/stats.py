"""Reductions per block kind, done inside hook functions: counts, float64 sums and moments, streaming top-k.

Each kind's ``Stats`` hooks the points it reads, reduces every batch into per-block accumulators (on the
device of that block, so ``device_map`` models work) and hands back a *partial*: plain numpy arrays whose
size depends on the model and settings, never on the amount of text. ``fold`` combines two partials
exactly (integers and float64 sums added in a fixed order, moments by Chan's formula, top-k re-selected).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..core.layer_types import ATTENTION, HOOK_PREFIX, MAMBA, MOE
from ..mirror import hf_layout
from . import topk
from .batches import Batch
from .text import CLASSES

LN2 = math.log(2.0)
# Memory-horizon histogram: half-lives in tokens on powers of two. Bin 0 is [0, 2^-3), bin i (1..23) is
# [2^(i-4), 2^(i-3)), bin 24 is [2^20, inf] (a zero step size, an infinite half-life, lands there).
HORIZON_EDGES = 2.0 ** np.arange(-3, 21)


def bin_bounds() -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bound (tokens) of each horizon bin, ``(len(HORIZON_EDGES) + 1,)`` each."""
    return np.concatenate([[0.0], HORIZON_EDGES]), np.concatenate([HORIZON_EDGES, [np.inf]])


class Stats:
    """The accumulators of one kind over its blocks; subclasses say which points they hook and how a batch
    reduces. ``current()`` returns the batch being run."""

    kind: str
    points: tuple[str, ...]
    rules: dict[str, str]  # accumulator -> how two partials fold: 'sum', 'max' or 'moments'

    def __init__(self, model, blocks: list[int], current: Callable[[], Batch], top_k: int, window: int):
        self.model, self.blocks, self.current = model, blocks, current
        self.slot = {b: j for j, b in enumerate(blocks)}
        self.top_k, self.window = top_k, window
        self.reset()

    def reset(self) -> None:
        self.acc: list[dict[str, torch.Tensor] | None] = [None] * len(self.blocks)
        self.top = topk.TopK(self.top_k, self.window)

    def hooks(self) -> list[tuple[str, Callable]]:
        prefix = HOOK_PREFIX[self.kind]
        return [(f"blocks.{b}.{prefix}.{p}", getattr(self, p.removeprefix("hook")))
                for b in self.blocks
                for p in self.points]  # fmt: skip

    def zeros(self, device) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _acc(self, layer: int, device) -> tuple[int, dict[str, torch.Tensor]]:
        j = self.slot[layer]
        if self.acc[j] is None:
            self.acc[j] = self.zeros(device)
        return j, self.acc[j]

    def partial(self) -> dict[str, np.ndarray]:
        """This shard's accumulators as numpy arrays ``(blocks, ...)``, plus the contexts (``ctx.*``)."""
        cpu = self.zeros("cpu")
        out = {k: np.stack([(a or cpu)[k].cpu().numpy() for a in self.acc]) for k in cpu}
        out["blocks"] = np.asarray(self.blocks, dtype=np.int64)
        out |= {f"ctx.{f}": v for f, v in self.top.best.items()}
        return out


def moments_merge(n1, mean1, m21, n2, mean2, m22):
    """Chan et al.'s parallel merge of (count, mean, sum of squared deviations); numpy or torch."""
    n = n1 + n2
    safe = n + (n == 0)
    delta = mean2 - mean1
    mean = mean1 + delta * (n2 / safe)
    return n, mean, m21 + m22 + delta * delta * (n1 * n2 / safe)


def _per_head(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x`` (b, h, p) summed in float64 over the positions ``keep`` (b, p) -> (h,)."""
    return x.transpose(1, 2)[keep].double().sum(0)


class MoEStats(Stats):
    """Per block × expert: load, routing-weight sum, load per token class and per label, co-selection,
    and the contexts with the highest routing weight."""

    kind, points = MOE, ("hook_topk_indices", "hook_topk_weights")
    rules = {
        "load": "sum",
        "weight_sum": "sum",
        "class_load": "sum",
        "coselection": "sum",
        "label_load": "labels",
    }

    def __init__(self, model, blocks, current, top_k, window):
        self.n_experts = hf_layout.n_experts(model.config)
        self.n_labels = 0
        super().__init__(model, blocks, current, top_k, window)

    def zeros(self, device):
        e = self.n_experts
        z = lambda *shape, dtype=torch.int64: torch.zeros(*shape, dtype=dtype, device=device)  # noqa: E731
        return {"load": z(e), "weight_sum": z(e, dtype=torch.float64), "class_load": z(len(CLASSES), e),
                "coselection": z(e, e), "label_load": z(self.n_labels, e)}  # fmt: skip

    def reset(self) -> None:
        self.n_labels = 0
        super().reset()

    def _topk_indices(self, indices: torch.Tensor, hook) -> None:
        self._indices = indices

    def _topk_weights(self, weights: torch.Tensor, hook) -> None:
        j, acc = self._acc(hook.layer, weights.device)
        batch = self.current().on(weights.device)
        valid, e = batch.valid, self.n_experts
        indices = self._indices
        dense = torch.zeros(*weights.shape[:2], e, dtype=weights.dtype, device=weights.device)
        dense.scatter_(-1, indices, weights)  # b p e: each expert's weight, 0 where not chosen
        chosen = torch.zeros_like(dense, dtype=torch.bool).scatter_(-1, indices, True)
        c = chosen[valid].double()  # tokens e, 0/1: float64 sums and products of it are exact counts
        acc["load"] += c.sum(0).long()
        acc["weight_sum"] += dense[valid].double().sum(0)
        acc["class_load"] += (F.one_hot(batch.classes[valid], len(CLASSES)).double().T @ c).long()
        acc["coselection"] += (c.T @ c).long()
        if self.n_labels:
            self._grow_labels(acc)
            label = batch.label[:, None].expand_as(valid)[valid]
            has = label >= 0
            acc["label_load"] += (F.one_hot(label[has], self.n_labels).double().T @ c[has]).long()
        scores = dense.float().masked_fill(~(chosen & valid[..., None]), -torch.inf)
        self.top.add(batch, scores, j * e, lambda r, p, u, idx: dense[r[:, None], idx, u[:, None]])

    def _grow_labels(self, acc: dict[str, torch.Tensor]) -> None:
        """Pad ``acc['label_load']``'s rows with zeros up to the labels seen so far."""
        load, missing = acc["label_load"], self.n_labels - acc["label_load"].shape[0]
        if missing > 0:
            acc["label_load"] = torch.cat([load, load.new_zeros(missing, self.n_experts)])

    def partial(self):
        # blocks that saw fewer labels than the shard has are padded before stacking
        for a in self.acc:
            if a is not None:
                self._grow_labels(a)
        return super().partial()


class MambaStats(Stats):
    """Per block × head: state-norm count / mean / M2 / max, decay-rate sum, half-life histogram, and the
    contexts where the state norm jumps most."""

    kind, points = MAMBA, ("hook_dt", "hook_state_norm")
    rules = {
        "n": "moments",
        "mean": "moments",
        "m2": "moments",
        "max": "max",
        "rate_sum": "sum",
        "hist": "sum",
    }

    def __init__(self, model, blocks, current, top_k, window):
        self.n_heads = hf_layout.n_mamba_heads(model.config)
        mixers = {b: hf_layout.mixer(model.hf_model, b) for b in blocks}
        # exp(A_log) = -A: each head's decay rate per unit of dt
        self.rate_scale = {b: hf_layout.mamba_A_log(m).detach().double().exp() for b, m in mixers.items()}
        self.edges = torch.tensor(HORIZON_EDGES)
        super().__init__(model, blocks, current, top_k, window)

    def zeros(self, device):
        h, bins = self.n_heads, len(HORIZON_EDGES) + 1
        f64 = dict(dtype=torch.float64, device=device)
        return {"n": torch.zeros(h, **f64), "mean": torch.zeros(h, **f64), "m2": torch.zeros(h, **f64),
                "max": torch.full((h,), -torch.inf, **f64), "rate_sum": torch.zeros(h, **f64),
                "hist": torch.zeros(h, bins, dtype=torch.int64, device=device)}  # fmt: skip

    def _dt(self, dt: torch.Tensor, hook) -> None:
        self._step = dt

    def _state_norm(self, norm: torch.Tensor, hook) -> None:
        j, acc = self._acc(hook.layer, norm.device)
        batch = self.current().on(norm.device)
        valid, h = batch.valid, self.n_heads
        x = norm[valid].double()  # tokens h
        acc["n"], acc["mean"], acc["m2"] = moments_merge(
            acc["n"], acc["mean"], acc["m2"], float(x.shape[0]), mean := x.mean(0), (x - mean).square().sum(0)
        )
        acc["max"] = torch.maximum(acc["max"], x.max(0).values)
        rate = self._step[valid].double() * self.rate_scale[hook.layer].to(norm.device)  # -dt·A ≥ 0
        acc["rate_sum"] += rate.sum(0)
        bins = torch.bucketize(LN2 / rate, self.edges.to(norm.device), right=True)  # tokens h
        n_bins = len(HORIZON_EDGES) + 1
        heads = torch.arange(h, device=norm.device)
        acc["hist"] += torch.bincount((heads * n_bins + bins).flatten(), minlength=h * n_bins).view(h, n_bins)
        jump = torch.full_like(norm, -torch.inf)
        jump[:, 1:] = (norm[:, 1:] - norm[:, :-1]).masked_fill(~valid[:, 1:, None], -torch.inf)
        self.top.add(batch, jump, j * h, lambda r, p, u, idx: norm[r[:, None], idx, u[:, None]])


class AttentionStats(Stats):
    """Per block × query head: sums of entropy, sink share, previous-token share, induction share and
    attention distance, and the queries with the largest mean attention distance."""

    kind, points = ATTENTION, ("hook_pattern",)
    rules = {
        k: "sum" for k in ("queries", "entropy", "sink", "prev", "distance", "induction", "induction_queries")
    }

    def __init__(self, model, blocks, current, top_k, window):
        self.n_heads = model.config.num_attention_heads
        super().__init__(model, blocks, current, top_k, window)

    def zeros(self, device):
        return {k: torch.zeros(self.n_heads, dtype=torch.float64, device=device) for k in self.rules}

    def _pattern(self, pattern: torch.Tensor, hook) -> None:
        j, acc = self._acc(hook.layer, pattern.device)
        batch = self.current().on(pattern.device)
        P = pattern.float()  # b h q k
        valid = batch.valid
        later = valid.clone()
        later[:, 0] = False  # queries q ≥ 1: the first query of a row can only attend to itself
        q = torch.arange(P.shape[-1], device=P.device, dtype=P.dtype)
        distance = q * P.sum(-1) - P @ q  # Σ_k P[q, k]·(q − k)
        copy = batch.earlier_copy()
        acc["queries"] += later.sum()
        acc["entropy"] += _per_head(-torch.special.xlogy(P, P).sum(-1), later)
        acc["sink"] += _per_head(P[..., 0], later)
        acc["prev"] += _per_head(F.pad(P.diagonal(-1, 2, 3), (1, 0)), later)
        acc["distance"] += _per_head(distance, later)
        has_copy = copy.any(-1)
        acc["induction"] += _per_head(torch.einsum("bhqk,bqk->bhq", P, copy.to(P.dtype)), has_copy)
        acc["induction_queries"] += has_copy.sum()
        scores = distance.transpose(1, 2).masked_fill(~valid[..., None], -torch.inf)  # b q h
        h = self.n_heads
        self.top.add(batch, scores, j * h, lambda r, p, u, idx: P[r[:, None], u[:, None], p[:, None], idx])


STATS: dict[str, type[Stats]] = {MOE: MoEStats, MAMBA: MambaStats, ATTENTION: AttentionStats}
UNITS = {MOE: "expert", MAMBA: "head", ATTENTION: "head"}


def fold(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], kind: str, k: int, labels: tuple[list, list]
) -> dict:
    """Two partials of one kind -> one (``a`` first), keeping ``k`` contexts per unit. ``labels``: the label
    names of ``a`` and of ``b``; label rows are re-indexed to their sorted union."""
    if not np.array_equal(a["blocks"], b["blocks"]):
        raise ValueError(f"{kind} partials cover different blocks: {a['blocks']} and {b['blocks']}")
    rules = STATS[kind].rules
    out = {"blocks": a["blocks"]}
    for key, rule in rules.items():
        if rule == "sum":
            out[key] = a[key] + b[key]
        elif rule == "max":
            out[key] = np.maximum(a[key], b[key])
        elif rule == "labels":
            out[key] = _labels_union(a[key], b[key], *labels)
    if "m2" in rules:
        out["n"], out["mean"], out["m2"] = moments_merge(
            a["n"], a["mean"], a["m2"], b["n"], b["mean"], b["m2"]
        )
    sets = [{f: p[f"ctx.{f}"] for f in topk.FIELDS} for p in (a, b)]
    out |= {f"ctx.{f}": v for f, v in topk.select(sets, k).items()}
    return out


def _labels_union(x: np.ndarray, y: np.ndarray, names_x: list, names_y: list) -> np.ndarray:
    names = sorted(set(names_x) | set(names_y))
    out = np.zeros((x.shape[0], len(names), x.shape[2]), dtype=np.int64)
    for arr, own in ((x, names_x), (y, names_y)):
        if own:
            out[:, [names.index(n) for n in own]] += arr
    return out
