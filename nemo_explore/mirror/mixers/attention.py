"""Grouped-query attention (no position embedding): q, k, v, scores, pattern, z.

HF runs SDPA, which never forms the pattern. Reading ``hook_attn_scores``/``hook_pattern`` computes them
on the side from q and k; the layer's output still comes from HF's own attention call, so observing is
bit-exact. Only a hook that *replaces* scores or pattern makes z = pattern · v explicit (for
the rows of the ``pattern_window`` option when one is given: the other rows keep HF's output), and so does
a backward hook on them: their gradient is then the one of the explicit path, as HF's eager attention
computes it (the output then equals eager's, within float rounding of SDPA's). Likewise a write or a
backward hook on ``hook_result`` makes the output the sum of the heads' results, and one on ``hook_k`` /
``hook_v`` under ``ungroup_grouped_query_attention`` (a copy of the KV head per query head) makes every
query head read its own copy.
"""

from __future__ import annotations

import sys

import torch

from ...core.hooks import Fire
from ...core.options import query_rows
from ._call import check_keywords, take_cache


def keep_mask(attention_mask: torch.Tensor | None, q_len: int, kv_len: int, device) -> torch.Tensor:
    """Boolean ``(b|1, 1, q, k)`` mask of the key positions each query may see.

    HF hands the attention function a 4-D mask (bool: True = keep; float: 0 = keep) or, where SDPA's own
    causal flag serves, nothing. SDPA then aligns the causal diagonal top-left (query i sees keys 0..i: a
    prefill from position 0, whatever the length of a static cache) and lets a single query see every key.
    """
    if attention_mask is None:
        if q_len == 1:
            return torch.ones(1, 1, 1, kv_len, dtype=torch.bool, device=device)
        q = torch.arange(q_len, device=device)[:, None]
        return (torch.arange(kv_len, device=device)[None, :] <= q)[None, None]
    mask = attention_mask[..., -kv_len:]
    return mask if mask.dtype == torch.bool else mask == 0


ROWS = 16  # scores are computed for aligned blocks of this many query rows, whatever the window


def scores_and_pattern(
    q: torch.Tensor,
    k: torch.Tensor,
    keep: torch.Tensor,
    scaling: float,
    rows: slice = slice(None),
    keys: slice = slice(None),
    *,
    kv: list[int] | None = None,
    scores: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``q`` (b h q d), ``k`` (b h_kv k d) -> scaled masked scores and softmax pattern of query rows ``rows``
    (a slice of q's rows; ``keep`` (b|1, 1, n_rows, k) bool is for those rows) × key columns ``keys``,
    both (b h n_rows n_keys); the scores only if ``scores`` (else None). ``kv``: each of q's heads' KV
    head (default: consecutive query heads share one, as GQA groups them).

    Masked positions score -inf; a query that sees no key (a padding row) gets an all-zero pattern. Every
    step runs on blocks of ``ROWS`` rows aligned to multiples of ``ROWS``, each head's q·kᵀ one (ROWS, d) ×
    (d, n) product, so that a window of rows or heads holds bit for bit what the whole matrix does (a float32
    matmul's rounding depends on its shape). n is the block's last row + 1 when its rows see no later key
    (causal: half the products of a whole map), else every key. A KV head's keys are laid out once and read
    by each of its query heads (no copy per query head).
    """
    start, stop, _ = rows.indices(q.shape[2])
    k0, k1, _ = keys.indices(k.shape[2])
    b, h = q.shape[:2]
    kv = [i * k.shape[1] // h for i in range(h)] if kv is None else kv
    kt = k.transpose(2, 3)
    kt = kt if kt.is_contiguous() else kt.contiguous()  # b h_kv d k
    reading = {}  # KV head -> the query heads that read it: a slice where they are a run
    for j in dict.fromkeys(kv):
        heads = [i for i in range(h) if kv[i] == j]
        first, last = heads[0], heads[-1] + 1
        reading[j] = slice(first, last) if heads == list(range(first, last)) else heads
    # without autograd, each block's steps run in place in a buffer per KV head, reused from block to block
    in_place = not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad))
    shape = (b, h, stop - start, k1 - k0)
    pattern = q.new_empty(shape)
    kept = q.new_empty(shape) if scores else None
    seen = keep.flatten(0, 1).any(0)  # n_rows k: the keys each asked row sees in some batch row
    ends = torch.where(seen.any(-1), seen.shape[-1] - seen.flip(-1).byte().argmax(-1), 0).tolist()
    buffers = {}
    for r0 in range(start - start % ROWS, stop, ROWS):
        r1 = min(r0 + ROWS, q.shape[2])
        a, z = max(r0, start), min(r1, stop)
        n = r1 if max(ends[a - start : z - start]) <= r1 else k.shape[2]  # causal: no key after its rows
        e = min(max(k0, n), k1)  # of the key columns asked, k0..e-1 are computed; the rest are masked
        out = slice(a - start, z - start)
        for bi in range(b):
            rows_q = q[bi, :, r0:r1].contiguous()  # one layout whatever q's strides
            masked = ~keep[bi if keep.shape[0] > 1 else 0, :, a - start : z - start, :n]
            for j, at in reading.items():
                heads_q = rows_q[at]
                m = len(heads_q)
                products = None
                if in_place:  # the start of its buffer: a 1-row product's rounding depends on where it lands
                    if j not in buffers:
                        buffers[j] = q.new_empty(m * ROWS * k.shape[2])
                    products = buffers[j][: m * (r1 - r0) * n].view(m, r1 - r0, n)
                products = torch.bmm(heads_q, kt[bi, j, :, :n].expand(m, -1, -1), out=products)
                these = products[:, a - r0 : z - r0]
                if in_place:
                    these.mul_(scaling).masked_fill_(masked, float("-inf"))
                else:
                    these = (these * scaling).masked_fill(masked, float("-inf"))
                if kept is not None:
                    kept[bi, at, out, : e - k0] = these[..., k0:e]
                if e > k0:
                    pattern[bi, at, out, : e - k0] = softmax_pattern(these, q.dtype)[..., k0:e]
        if kept is not None:
            kept[:, :, out, e - k0 :] = float("-inf")
        pattern[:, :, out, e - k0 :] = 0
    return kept, pattern


def softmax_pattern(scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32)
    if pattern.requires_grad:  # softmax's backward reads its output: no in-place step on it
        return torch.nan_to_num(pattern, nan=0.0).to(dtype)
    return pattern.nan_to_num_(nan=0.0).to(dtype)


def pattern_rows(window, q_len: int) -> slice:
    """The query rows ``hook_pattern`` / ``hook_attn_scores`` carry: the ``pattern_window=(start, stop)``
    option's rows of this call's queries, all of them without a window or for a decoding step's one row."""
    if window is None or q_len == 1:
        return slice(None)
    start, stop = query_rows(window, q_len, "pattern_window")
    return slice(start, stop)


def pattern_times_v(pattern: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``pattern`` (b h q k) · ``v`` (b h_kv k d), GQA-expanded -> z (b q h d), as HF's attention gives it."""
    n_rep = pattern.shape[1] // v.shape[1]
    v = v.repeat_interleave(n_rep, dim=1) if n_rep > 1 else v
    return torch.matmul(pattern, v).transpose(1, 2).contiguous()


def attention_forward(
    attn, fire: Fire, hidden_states: torch.Tensor, attention_mask=None, cache=None, **kwargs
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """HF's ``NemotronHAttention.forward`` with the block's hook points; returns ``(output, weights)`` as HF
    does (weights: what the attention function gives, e.g. eager's under ``output_attentions``)."""
    cache = take_cache(fire, cache, kwargs)
    check_keywords(fire, kwargs)
    hf = sys.modules[type(attn).__module__]
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, attn.head_dim)

    q = fire("hook_q", attn.q_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
    n_heads = q.shape[1]
    k, k_copies = fire_kv(fire, "hook_k", attn.k_proj(hidden_states).view(hidden_shape), n_heads)
    v, v_copies = fire_kv(fire, "hook_v", attn.v_proj(hidden_states).view(hidden_shape), n_heads)
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    explicit = k_copies or v_copies  # one key / value per query head: z = pattern · v, explicitly
    if cache is not None:
        if explicit:
            raise NotImplementedError(
                "writing (or asking the gradient of) hook_k / hook_v per query head "
                "(ungroup_grouped_query_attention) while decoding with a KV cache: the cache keeps the KV "
                "heads. Write them without ungrouping, or run a forward without the cache"
            )
        k, v = cache.update(k, v, attn.layer_idx, kwargs=kwargs)

    written, rows = False, slice(None)
    if explicit or fire.wants("hook_attn_scores") or fire.wants("hook_pattern"):
        rows = pattern_rows(fire.options.pattern_window, q.shape[2])
        keep = keep_mask(attention_mask, q.shape[2], k.shape[2], q.device)
        fired = fire.wants("hook_attn_scores")
        scores, pattern = scores_and_pattern(q, k, keep[..., rows, :], attn.scaling, rows, scores=fired)
        if fired:
            new_scores = fire("hook_attn_scores", scores)
            # the pattern from the scores the hooks return, or from those whose gradient is asked
            if new_scores is not scores or fire.wants_gradient("hook_attn_scores"):
                written, pattern = True, softmax_pattern(new_scores, q.dtype)
        new_pattern = fire("hook_pattern", pattern)
        written = written or new_pattern is not pattern
        # a gradient of scores or pattern needs the output computed from them
        written = written or fire.wants_gradient("hook_attn_scores") or fire.wants_gradient("hook_pattern")
        if explicit and rows != slice(None):  # the hooks saw a window of rows: z needs them all
            _, full = scores_and_pattern(q, k, keep, attn.scaling, scores=False)
            if written:
                full[:, :, rows] = new_pattern
            new_pattern, rows = full, slice(None)
        written = written or explicit

    if written and rows == slice(None):  # every row rewritten: z = pattern · v, explicitly
        z = pattern_times_v(new_pattern, v)
        weights = new_pattern if attn.config._attn_implementation == "eager" else None
    else:
        interface = hf.ALL_ATTENTION_FUNCTIONS.get_interface(
            attn.config._attn_implementation, hf.eager_attention_forward
        )
        z, weights = interface(
            attn,
            q,
            k,
            v,
            attention_mask,
            dropout=0.0 if not attn.training else attn.attention_dropout,
            scaling=attn.scaling,
            **kwargs,
        )
        if written:  # the window's rows rewritten: only they change
            z = z.clone()
            z[:, rows] = pattern_times_v(new_pattern, v)
            if weights is not None:
                weights = weights.clone()
                weights[:, :, rows] = new_pattern
    z = fire("hook_z", z)
    if fire.wants("hook_result"):
        result = head_results(z, attn.o_proj.weight)
        new_result = fire("hook_result", result)
        if new_result is not result or fire.wants_gradient("hook_result"):  # the output: the heads' sum
            bias = attn.o_proj.bias
            out = new_result.sum(dim=2)
            return (out if bias is None else out + bias), weights
    return attn.o_proj(z.reshape(*input_shape, -1).contiguous()), weights


def fire_kv(fire: Fire, point: str, grouped: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, bool]:
    """``hook_k`` / ``hook_v`` on ``grouped`` (b p h_kv d): ``(what the attention reads, per_query_head)``.

    With the ``ungroup_grouped_query_attention`` option the point carries one copy of its KV head per query
    head (b p h d), as TransformerLens' option does; the attention still reads the KV heads (HF's call,
    bit-exact) unless a hook wrote the copies or asks their gradient: then it reads the copies
    (``per_query_head``), and the caller computes z explicitly."""
    n_rep = n_heads // grouped.shape[2]
    if not fire.options.ungroup_grouped_query_attention or n_rep == 1:
        return fire(point, grouped), False
    copies = grouped.repeat_interleave(n_rep, dim=2)
    new = fire(point, copies)
    if new is copies and not fire.wants_gradient(point):
        return grouped, False
    return new, True


def head_results(z: torch.Tensor, o_weight: torch.Tensor) -> torch.Tensor:
    """Each head's output ``z[:, :, h] @ W_O[h]`` (b p h d) from z (b p h d_head) and ``o_proj``'s weight
    (d, h·d_head): they sum to ``o_proj(z)`` (without its bias), up to float rounding."""
    w = o_weight.view(o_weight.shape[0], z.shape[2], z.shape[3]).to(z.dtype)  # d h e
    return torch.einsum("bphe,dhe->bphd", z, w)
