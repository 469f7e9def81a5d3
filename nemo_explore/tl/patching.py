"""TransformerLens' ``patching`` functions over this model's points: ``from nemo_explore.tl import patching``.

Each ``get_act_patch_*(model, corrupted_tokens, clean_cache, patching_metric)`` runs the corrupted tokens
once per index, with the activation at that index taken from ``clean_cache`` (the clean run's
``run_with_cache``), and returns ``patching_metric(logits)`` per index, as TL does: a float tensor whose first
axis is the block (``n_layers`` rows, every block of the model, as TL's layer axis), then the position and/or
the head.

Heads exist in attention blocks only. TL's plots reshape per-head results to ``(n_layers, n_heads)``; here a
block that has no attention heads gets a row of NaN there (plotted as a gap), never made-up numbers:
``model.layers("attention")`` lists the rows that hold values. ``hook_k`` / ``hook_v`` have the
``n_key_value_heads`` KV heads (grouped-query attention), so their head axis is that long, unless the model
gives a copy per query head (``set_ungroup_grouped_query_attention(True)``, TL's option): then patching
one is patching what that query head alone reads, and ``*_every`` stacks all five as TL does.
The natural extensions for the other kinds: ``get_act_patch_mamba_out`` (each Mamba block's output),
``get_act_patch_mamba_head_out_all_pos`` / ``_by_pos`` (a Mamba head's scan output ``hook_ssm_out``), and
``get_act_patch_moe_routing_by_pos`` (the experts chosen for a token, ``hook_topk_indices``).
Nemotron-H blocks have one residual add each, so there is no ``resid_mid``: its function says so.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.layer_types import ATTENTION, MAMBA, MLP, MOE

Metric = Callable[[torch.Tensor], torch.Tensor]

__all__ = [
    "get_act_patch_attn_head_all_pos_every",
    "get_act_patch_attn_head_by_pos_every",
    "get_act_patch_attn_head_k_all_pos",
    "get_act_patch_attn_head_k_by_pos",
    "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_out_by_pos",
    "get_act_patch_attn_head_pattern_all_pos",
    "get_act_patch_attn_head_pattern_by_pos",
    "get_act_patch_attn_head_q_all_pos",
    "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_v_by_pos",
    "get_act_patch_attn_out",
    "get_act_patch_block_every",
    "get_act_patch_mamba_head_out_all_pos",
    "get_act_patch_mamba_head_out_by_pos",
    "get_act_patch_mamba_out",
    "get_act_patch_mlp_out",
    "get_act_patch_moe_routing_by_pos",
    "get_act_patch_resid_mid",
    "get_act_patch_resid_pre",
    "patch_grid",
]


def patch_grid(
    model,
    corrupted_tokens: torch.Tensor,
    clean_cache,
    patching_metric: Metric,
    point: str,
    kinds: tuple[str, ...] | None,
    by_pos: bool,
    by_head: bool,
) -> torch.Tensor:
    """The engine of every function here: ``point`` (a block-level name, ``'attn.hook_z'``) patched from
    ``clean_cache`` into the corrupted run at each (block, [position], [head]); blocks whose kind is not in
    ``kinds`` (None: every block) get NaN. Returns (n_layers, [pos], [heads]) float32."""
    tokens = model.to_tokens(corrupted_tokens) if isinstance(corrupted_tokens, str) else corrupted_tokens
    p = tokens.shape[-1]
    blocks = [i for i, t in enumerate(model.layer_types) if kinds is None or t in kinds]
    if not blocks:
        raise ValueError(f"this model has no {' or '.join(kinds or ())} block to patch {point} in")
    names = {i: f"blocks.{i}.{point}" for i in blocks}
    missing = [n for n in names.values() if n not in clean_cache]
    if missing:
        raise KeyError(
            f"clean_cache lacks {missing[0]}: run model.run_with_cache(clean_tokens) with every point, or "
            f"names_filter=lambda n: n.endswith({point.rsplit('.', 1)[-1]!r})"
        )
    head_axis = 1 if point.endswith("hook_pattern") else 2  # (b h q k); the others (b p h ...)
    heads = clean_cache[names[blocks[0]]].shape[head_axis] if by_head else None
    shape = (model.cfg.n_layers, *((p,) if by_pos else ()), *((heads,) if by_head else ()))
    out = torch.full(shape, float("nan"))
    for i in blocks:
        clean = clean_cache[names[i]].to(model.cfg.device)
        for index in _indices(p if by_pos else None, heads):
            out[(i, *index)] = _patched_metric(
                model, tokens, names[i], clean, index, by_pos, by_head, patching_metric
            )
    return out


def _indices(p: int | None, heads: int | None) -> list[tuple[int, ...]]:
    """Every (position, head) index of the grid, each part only where it is an axis."""
    pos = [(j,) for j in range(p)] if p is not None else [()]
    hs = [(h,) for h in range(heads)] if heads is not None else [()]
    return [a + b for a in pos for b in hs]


def _patched_metric(model, tokens, name, clean, index, by_pos, by_head, metric) -> float:
    """One corrupted run with ``clean`` copied into point ``name`` at ``index`` (position and/or head)."""
    pos = index[0] if by_pos else slice(None)
    head = index[-1] if by_head else slice(None)
    # (b p ...) points: position, then head; the pattern (b h q k): head, then destination (query) row
    where = (slice(None), head, pos) if name.endswith("hook_pattern") else (slice(None), pos, head)

    def hook(value: torch.Tensor, hook) -> torch.Tensor:
        value = value.clone()
        value[where] = clean[where].to(value.dtype)
        return value

    with torch.no_grad():
        logits = model.run_with_hooks(tokens, [(name, hook)])
    return float(metric(logits))


def _patcher(point: str, kinds: tuple[str, ...] | None, by_pos: bool, by_head: bool, doc: str) -> Callable:
    """A ``get_act_patch_*`` function: ``point`` patched at each index of its grid (see ``patch_grid``)."""

    def patch(model, corrupted_tokens, clean_cache, patching_metric) -> torch.Tensor:
        return patch_grid(
            model, corrupted_tokens, clean_cache, patching_metric, point, kinds, by_pos, by_head
        )

    patch.__doc__ = doc
    return patch


def _head(point: str, kinds: tuple[str, ...], by_pos: bool, what: str) -> Callable:
    when = (
        "at each position: (n_layers, pos, heads)"
        if by_pos
        else "at every position at once: (n_layers, heads)"
    )
    return _patcher(
        point, kinds, by_pos, True, f"Patch each head's {what} {when}, NaN rows for other blocks."
    )


def _stack(*fns: Callable) -> Callable:
    def patch(model, corrupted_tokens, clean_cache, patching_metric) -> torch.Tensor:
        return torch.stack([f(model, corrupted_tokens, clean_cache, patching_metric) for f in fns])

    return patch


def get_act_patch_resid_mid(*args, **kwargs):
    """TL's residual stream between attention and MLP: Nemotron-H blocks have one mixer and one residual
    add each, so there is none."""
    raise NotImplementedError(
        "Nemotron-H has no resid_mid: each block is one mixer (Mamba, attention, MLP or MoE) and one "
        "residual add. Patch get_act_patch_resid_pre (entering block L) or the mixers' outputs "
        "(get_act_patch_attn_out, get_act_patch_mlp_out, get_act_patch_mamba_out)"
    )


_ATTN, _MAMBA, _MOE, _DENSE = (ATTENTION,), (MAMBA,), (MOE,), (MLP, MOE)
get_act_patch_resid_pre = _patcher(
    "hook_resid_pre", None, True, False, "Patch the residual stream entering each block at each position: "
    "(n_layers, pos)."
)  # fmt: skip
get_act_patch_attn_out = _patcher(
    "hook_mixer_out", _ATTN, True, False, "Patch each attention block's output at each position: "
    "(n_layers, pos), NaN rows for other blocks."
)  # fmt: skip
get_act_patch_mlp_out = _patcher(
    "hook_mixer_out", _DENSE, True, False, "Patch each MLP and MoE block's output at each position: "
    "(n_layers, pos), NaN rows for other blocks."
)  # fmt: skip
get_act_patch_mamba_out = _patcher(
    "hook_mixer_out", _MAMBA, True, False, "Patch each Mamba block's output at each position: "
    "(n_layers, pos), NaN rows for other blocks."
)  # fmt: skip
get_act_patch_moe_routing_by_pos = _patcher(
    "moe.hook_topk_indices", _MOE, True, False, "Give each token of each MoE block the experts the clean run "
    "chose for it (hook_topk_indices): (n_layers, pos), NaN rows for other blocks."
)  # fmt: skip
get_act_patch_attn_head_out_all_pos = _head("attn.hook_z", _ATTN, False, "output z")
get_act_patch_attn_head_out_by_pos = _head("attn.hook_z", _ATTN, True, "output z")
get_act_patch_attn_head_q_all_pos = _head("attn.hook_q", _ATTN, False, "query")
get_act_patch_attn_head_q_by_pos = _head("attn.hook_q", _ATTN, True, "query")
get_act_patch_attn_head_k_all_pos = _head("attn.hook_k", _ATTN, False, "key (KV heads, or copies)")
get_act_patch_attn_head_k_by_pos = _head("attn.hook_k", _ATTN, True, "key (KV heads, or copies)")
get_act_patch_attn_head_v_all_pos = _head("attn.hook_v", _ATTN, False, "value (KV heads, or copies)")
get_act_patch_attn_head_v_by_pos = _head("attn.hook_v", _ATTN, True, "value (KV heads, or copies)")
get_act_patch_attn_head_pattern_all_pos = _head("attn.hook_pattern", _ATTN, False, "pattern")
get_act_patch_attn_head_pattern_by_pos = _head("attn.hook_pattern", _ATTN, True, "pattern (destination rows)")
get_act_patch_mamba_head_out_all_pos = _head("mamba.hook_ssm_out", _MAMBA, False, "Mamba scan output")
get_act_patch_mamba_head_out_by_pos = _head("mamba.hook_ssm_out", _MAMBA, True, "Mamba scan output")
get_act_patch_block_every = _stack(get_act_patch_resid_pre, get_act_patch_attn_out, get_act_patch_mlp_out)
get_act_patch_block_every.__doc__ = (
    "resid_pre, attn_out and mlp_out (MLP and MoE blocks) stacked: (3, n_layers, pos)."
)


def _every(out: Callable, q: Callable, k: Callable, v: Callable, pattern: Callable, grid: str) -> Callable:
    """TL's ``*_every``: z, q, k, v and pattern stacked, ``(5, n_layers, *grid)`` as TL has them, where k and
    v have a head per query head (``ungroup_grouped_query_attention``, or no grouping); with the KV heads
    grouped their head axis is shorter, so z, q and pattern only: ``(3, ...)``."""

    every, grouped = _stack(out, q, k, v, pattern), _stack(out, q, pattern)

    def patch(model, corrupted_tokens, clean_cache, patching_metric) -> torch.Tensor:
        cfg = model.cfg
        per_head = cfg.ungroup_grouped_query_attention or cfg.n_key_value_heads == cfg.n_heads
        return (every if per_head else grouped)(model, corrupted_tokens, clean_cache, patching_metric)

    patch.__doc__ = (
        f"z, q, k, v, pattern of each head {grid}, stacked as TL's: (5, n_layers, ...), when k and v have a "
        "head per query head (model.set_ungroup_grouped_query_attention(True), TL's option for grouped-query "
        "attention); with their KV heads grouped, z, q and pattern: (3, n_layers, ...)."
    )
    return patch


get_act_patch_attn_head_all_pos_every = _every(
    get_act_patch_attn_head_out_all_pos,
    get_act_patch_attn_head_q_all_pos,
    get_act_patch_attn_head_k_all_pos,
    get_act_patch_attn_head_v_all_pos,
    get_act_patch_attn_head_pattern_all_pos,
    "at every position at once",
)
get_act_patch_attn_head_by_pos_every = _every(
    get_act_patch_attn_head_out_by_pos,
    get_act_patch_attn_head_q_by_pos,
    get_act_patch_attn_head_k_by_pos,
    get_act_patch_attn_head_v_by_pos,
    get_act_patch_attn_head_pattern_by_pos,
    "at each position",
)
