"""Folded partials -> the output tables (pyarrow), one row per block × unit (× class / label / bin / expert).

Means are ratios of the folded sums, computed once here, so a table never depends on how the corpus was
sharded.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..core.layer_types import ATTENTION, MAMBA, MOE
from . import topk
from .stats import LN2, bin_bounds
from .text import CLASSES

CONTEXT_SCHEMA = pa.schema([
    ("kind", pa.string()), ("block", pa.int32()), ("unit", pa.int32()), ("rank", pa.int32()),
    ("score", pa.float64()), ("doc", pa.int64()), ("position", pa.int64()), ("centre", pa.int32()),
    ("token_ids", pa.list_(pa.int32())), ("tokens", pa.list_(pa.string())),
    ("values", pa.list_(pa.float32())),
])  # fmt: skip


UNIT_COUNT = {MOE: "load", MAMBA: "n", ATTENTION: "queries"}  # an accumulator shaped (blocks, units)


def _grid(blocks: np.ndarray, units: int, **cols) -> pa.Table:
    """A block × unit table: ``cols`` are ``(blocks, units)`` arrays, flattened block-major."""
    b = np.repeat(blocks.astype(np.int32), units)
    u = np.tile(np.arange(units, dtype=np.int32), len(blocks))
    return pa.table({"block": b, "unit": u, **{k: np.asarray(v).reshape(-1) for k, v in cols.items()}})


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _named(table: pa.Table, unit: str) -> pa.Table:
    return table.rename_columns([unit if c == "unit" else c for c in table.column_names])


def moe_tables(p: dict, tokens: int, labels: list[str]) -> dict[str, pa.Table]:
    blocks, (nb, e) = p["blocks"], p["load"].shape
    experts = _named(
        _grid(
            blocks,
            e,
            load=p["load"],
            share=p["load"] / max(tokens, 1),
            mean_weight=_ratio(p["weight_sum"], p["load"]),
            weight_sum=p["weight_sum"],
        ),
        "expert",
    )
    c = len(CLASSES)
    per_class = pa.table({
        "block": np.repeat(blocks.astype(np.int32), c * e),
        "class": np.tile(np.repeat(np.array(CLASSES, dtype=object), e), nb),
        "expert": np.tile(np.arange(e, dtype=np.int32), nb * c),
        "load": p["class_load"].reshape(-1),
    })  # fmt: skip
    n = len(labels)
    per_label = pa.table({
        "block": pa.array(np.repeat(blocks.astype(np.int32), n * e), pa.int32()),
        "label": pa.array(np.tile(np.repeat(np.array(labels, dtype=object), e), nb), pa.string()),
        "expert": pa.array(np.tile(np.arange(e, dtype=np.int32), nb * n), pa.int32()),
        "load": pa.array(p["label_load"].reshape(-1), pa.int64()),
    })  # fmt: skip
    cosel = pa.table({
        "block": np.repeat(blocks.astype(np.int32), e * e),
        "expert_a": np.tile(np.repeat(np.arange(e, dtype=np.int32), e), nb),
        "expert_b": np.tile(np.arange(e, dtype=np.int32), nb * e),
        "count": p["coselection"].reshape(-1),
    })  # fmt: skip
    return {"moe_experts": experts, "moe_class_load": per_class, "moe_label_load": per_label,
            "moe_coselection": cosel}  # fmt: skip


def mamba_tables(p: dict) -> dict[str, pa.Table]:
    blocks, (nb, h) = p["blocks"], p["n"].shape
    n = p["n"]
    rate = _ratio(p["rate_sum"], n)
    heads = _named(_grid(
        blocks, h, count=n.astype(np.int64), norm_mean=np.where(n > 0, p["mean"], np.nan),
        norm_std=np.sqrt(_ratio(p["m2"], n)), norm_max=np.where(n > 0, p["max"], np.nan), mean_rate=rate,
        mean_rate_horizon=_ratio(np.full_like(rate, LN2), rate),
    ), "head")  # fmt: skip
    lo, hi = bin_bounds()
    bins = len(lo)
    hist = pa.table({
        "block": np.repeat(blocks.astype(np.int32), h * bins),
        "head": np.tile(np.repeat(np.arange(h, dtype=np.int32), bins), nb),
        "bin": np.tile(np.arange(bins, dtype=np.int32), nb * h),
        "lo": np.tile(lo, nb * h), "hi": np.tile(hi, nb * h),
        "count": p["hist"].reshape(-1),
    })  # fmt: skip
    return {"mamba_heads": heads, "mamba_horizon_hist": hist}


def attention_tables(p: dict) -> dict[str, pa.Table]:
    q, iq = p["queries"], p["induction_queries"]
    heads = _named(_grid(
        p["blocks"], q.shape[1], queries=q.astype(np.int64), entropy=_ratio(p["entropy"], q),
        sink=_ratio(p["sink"], q), prev_token=_ratio(p["prev"], q), induction=_ratio(p["induction"], iq),
        induction_queries=iq.astype(np.int64), distance=_ratio(p["distance"], q),
    ), "head")  # fmt: skip
    return {"attention_heads": heads}


def context_table(parts: dict[str, dict], token_text: dict[int, str]) -> pa.Table:
    """Every kind's contexts in one table; windows trimmed to their row (``centre`` indexes the token)."""
    rows: dict[str, list] = {f.name: [] for f in CONTEXT_SCHEMA}
    for kind, p in parts.items():
        units = p[UNIT_COUNT[kind]].shape[1]
        key, ids, values = p["ctx.key"], p["ctx.ids"], p["ctx.values"]
        rank = topk.ranks(key)
        for i in range(len(key)):
            inside = ids[i] >= 0
            first = int(np.argmax(inside))
            rows["kind"].append(kind)
            rows["block"].append(int(p["blocks"][key[i] // units]))
            rows["unit"].append(int(key[i] % units))
            rows["rank"].append(int(rank[i]))
            rows["score"].append(float(p["ctx.score"][i]))
            rows["doc"].append(int(p["ctx.doc"][i]))
            rows["position"].append(int(p["ctx.pos"][i]))
            rows["centre"].append(len(inside) // 2 - first)
            rows["token_ids"].append(ids[i][inside].tolist())
            rows["tokens"].append([token_text[int(t)] for t in ids[i][inside]])
            rows["values"].append(values[i][inside].tolist())
    return pa.table(rows, schema=CONTEXT_SCHEMA)


def build(parts: dict[str, dict], tokens: int, labels: list[str], token_text: dict[int, str]) -> dict:
    """Folded partials by kind -> ``{table name: pyarrow.Table}``."""
    out: dict[str, pa.Table] = {}
    if MOE in parts:
        out |= moe_tables(parts[MOE], tokens, labels)
    if MAMBA in parts:
        out |= mamba_tables(parts[MAMBA])
    if ATTENTION in parts:
        out |= attention_tables(parts[ATTENTION])
    out["contexts"] = context_table(parts, token_text)
    return out


UNIT_TABLES = {MOE: "moe_experts", MAMBA: "mamba_heads", ATTENTION: "attention_heads"}
