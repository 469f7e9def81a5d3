"""The state-space math of one Mamba-2 layer, as pure functions over the quantities it computes.

Shapes are batch-first: ``b`` batch, ``p`` positions, ``h`` heads, ``g`` groups, ``d`` head_dim,
``n`` d_state. Inputs are ``x`` (b p h d), the step size ``dt`` (b p h) actually used (after bias, softplus
and clamp), ``A`` (h,) negative, ``B`` and ``C`` (b p g n); head ``j`` reads group ``j // (h // g)``.
Each head keeps a d × n state

    S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_tᵀ,        y_t = S_t C_t + D x_t,

so y_t = Σ_{s≤t} M[t, s] x_s + D x_t with M[t, s] = (C_t·B_s) exp(A Σ_{r=s+1..t} dt_r) dt_s.

Everything is computed in float32. Log decays are accumulated in float64 and split into a float32 high
part and a float32 remainder, so that exp(A Σ_{r=s+1..t} dt_r) keeps float32 accuracy however long the
sequence (a plain float32 cumulative sum loses digits as it grows). Decays below e^-86 ≈ 4e-38, under
float32's normal range, are taken as exactly 0 (subnormal arithmetic is ~50× slower on CPUs).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from .options import query_rows

__all__ = ["hidden_attention", "state_norm_steps", "state_norms", "states_at"]

_BLOCK_ELEMENTS = 1 << 21  # hidden attention is built this many entries (8 MiB) at a time
_ROWS = 16  # hidden attention's query rows per block, aligned to multiples of it
_NORMS_GPU_BLOCK_ELEMENTS = 1 << 24  # state norms on a GPU: chunk matrices (b h c L L) per block, 64 MiB
_LOG_FLOOR = -86.0  # decays below exp(_LOG_FLOOR) ≈ 4e-38 are 0


@torch.no_grad()
def state_norms(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    chunk: int = 64,
) -> torch.Tensor:
    """Frobenius norm of each head's state after each token: (b, p, h).

    The states themselves (b p h d n) are never built. Tokens are cut into chunks of ``chunk``; inside a
    chunk the squared norm of S_t = λ_t S_0 + Σ_s W[t,s] x_s B_sᵀ (S_0 the state the chunk starts from) is
    expanded into the decayed carried norm λ_t² |S_0|², the cross term 2 λ_t Σ_s W[t,s] x_sᵀ S_0 B_s and
    the Gram term Σ_{s,s'} W[t,s] W[t,s'] (x_s·x_s')(B_s·B_s'). A GPU takes many chunks at once (a handful
    of large kernels, not thousands of small ones), a CPU one; only the chunk-start states are carried
    from one chunk to the next. Time linear in p, memory bounded by one block of chunks.
    ``initial_state`` (b h d n) is the state before the first token. Read-only: computed without autograd.
    """
    norms = x.new_empty(x.shape[:3], dtype=torch.float32)
    for _ in state_norm_steps(x, dt, A, B, norms, initial_state=initial_state, chunk=chunk):
        pass
    return norms


def state_norm_steps(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, out: torch.Tensor, **options
) -> Iterator[int]:
    """``state_norms`` a block of chunks at a time, written into ``out`` (b, p, h) float32: an iterator
    that yields the tokens done after each block (a few ms each on a CPU), so that a caller can do other
    work between blocks. Run to the end, ``out`` holds exactly what ``state_norms`` returns. ``options``:
    ``initial_state`` and ``chunk``, as there. The inputs are checked at once, not at the first step."""
    b, p, h, d, g, n = _check(x, dt, A, B)
    initial_state, chunk = options.pop("initial_state", None), options.pop("chunk", 64)
    if options:
        raise TypeError(f"state_norm_steps takes initial_state and chunk, not {', '.join(options)}")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if out.shape != (b, p, h) or out.dtype != torch.float32:
        raise ValueError(f"out must be float32 of shape {(b, p, h)}, got {out.dtype} {tuple(out.shape)}")
    x = x.float()
    state = _initial(initial_state, b, h, d, n, x)
    return _norm_blocks(x, dt.float(), A, B.float(), out, state, chunk)


@torch.no_grad()
def _norm_blocks(x, dt, A, B, out, state, chunk) -> Iterator[int]:
    p = x.shape[1]
    hi, lo = _split(_log_decay_cumsum(dt, A))  # b h p+1; index i = before token i
    per_block = _chunks_per_block(x, chunk)
    for t0 in range(0, p, per_block * chunk):
        t1 = min(t0 + per_block * chunk, p)
        sq, state = _block_norms(x[:, t0:t1], dt[:, t0:t1], B[:, t0:t1], hi, lo, t0, state, chunk)
        out[:, t0:t1] = sq.clamp_min_(0).sqrt_()  # cancellation may leave -ε
        yield t1


def _chunks_per_block(x: torch.Tensor, chunk: int) -> int:
    """How many chunks ``state_norms`` takes at once: one on a CPU (its L×L matrices stay in cache; measured
    fastest), as many as fit 64 MiB of b×h×c×L×L matrices on a GPU (a few large kernels, not thousands)."""
    if not x.is_cuda:
        return 1
    b, _, h, _ = x.shape
    return max(1, _NORMS_GPU_BLOCK_ELEMENTS // (b * h * chunk * chunk))


def _block_norms(x, dt, B, hi, lo, t0, state, L):
    """Squared state norms (b m h) of the m tokens x/dt/B (starting at token t0), cut into chunks of L
    tokens, from the carried ``state`` (b h d n); also returns the state after the last token."""
    b, m, h, d = x.shape
    g, n = B.shape[2:]
    k = h // g
    c = -(-m // L)  # chunks; the last one is padded with tokens of dt = 0 and x = 0, which change nothing
    pad = c * L - m
    x = F.pad(x, (0, 0, 0, 0, 0, pad)).view(b, c, L, h, d)
    B = F.pad(B, (0, 0, 0, 0, 0, pad)).view(b, c, L, g, n)
    dts = F.pad(dt.transpose(1, 2), (0, pad)).view(b, h, c, L)

    # b h c L+1 L+1, row/column 0 the chunk start: W[t, s] the weight of token s's input in S_t and lam[t]
    # what is left of the chunk-start state at t
    def spans(v):  # b h p+1 -> b h c L+1: the running log decay over each chunk, chunk start included
        return F.pad(v[..., t0 : t0 + m + 1], (0, pad), mode="replicate").unfold(-1, L + 1, L)

    weight = torch.cat([dts.new_ones(b, h, c, 1), dts], dim=-1)
    decay = _causal_decay(spans(hi), spans(lo), 0, L + 1, weight)
    lam, W = decay[..., 1:, 0], decay[..., 1:, 1:]

    xx = torch.einsum("bcshd,bcthd->bhcst", x, x)
    bb = torch.einsum("bcsgn,bctgn->bgcst", B, B)  # per group, shared by its k heads
    gram = (xx.view(b, g, k, c, L, L) * bb[:, :, None]).view(b, h, c, L, L)
    fresh = ((W @ gram) * W).sum(-1)

    # what each chunk adds to the state, then the state each chunk starts from: S[c+1] = lam_c S[c] + U_c
    xw = x * W[..., -1, :].permute(0, 2, 3, 1)[..., None]  # b c L h d
    U = torch.einsum("bcsgkd,bcsgn->bcgkdn", xw.view(b, c, L, g, k, d), B).reshape(b, c, h, d, n)
    S = x.new_empty(b, c + 1, h, d, n)
    S[:, 0] = state
    ends = lam[..., -1].transpose(1, 2)[..., None, None]  # b c h 1 1
    for j in range(c):
        torch.addcmul(U[:, j], ends[:, j], S[:, j], out=S[:, j + 1])
    starts = S[:, :c]

    SB = torch.einsum("bcgkdn,bcsgn->bgkcsd", starts.view(b, c, g, k, d, n), B).reshape(b, h, c, L, d)
    cross = (W @ (SB * x.permute(0, 3, 1, 2, 4)).sum(-1, keepdim=True)).squeeze(-1)
    carried = starts.square().sum((-2, -1)).transpose(1, 2)[..., None]  # b h c 1
    sq = lam.square() * carried + 2 * lam * cross + fresh  # b h c L
    return sq.view(b, h, c * L)[..., :m].transpose(1, 2), S[:, c]


@torch.no_grad()
def hidden_attention(
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    heads: int | Sequence[int] | None = None,
    query_window: tuple[int, int] | None = None,
    key_window: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Mamba-2's implicit attention M: (b, h', q, k), with y_t = Σ_s M[t, s] x_s + D x_t.

    M[t, s] = (C_t·B_s) exp(A Σ_{r=s+1..t} dt_r) dt_s for s ≤ t and exactly 0 above the diagonal. It is
    signed and unnormalised. ``heads`` keeps those heads (in the order given); ``query_window=(start,
    stop)`` keeps query rows start..stop-1 and ``key_window`` key columns (default: all p of each).
    Rows are built in blocks of ``_ROWS`` aligned to multiples of ``_ROWS`` whatever the windows, so any
    window holds bit for bit the entries of the whole matrix; C·B is formed per group, never per head, and
    heads are taken a few at a time (about 8 MiB): memory is the output plus one block. Read-only: computed
    without autograd.
    """
    b, p, h = dt.shape
    _check_bc(B, C, b, p, h)
    _check_A(A, h)
    g = B.shape[2]
    k = h // g
    idx = _heads(heads, h)
    start, stop = query_rows(query_window, p, "query_window")
    k0, k1 = query_rows(key_window, p, "key_window")
    dt = dt.float()
    hi, lo = _split(_log_decay_cumsum(dt[:, :, idx], A[idx])[..., 1:])  # b h' p; index i = after token i
    dt_cols = dt[:, :, idx].transpose(1, 2)
    groups = sorted({i // k for i in idx})  # C·B of these groups only (a few heads read a few groups)
    run = groups[-1] - groups[0] + 1 == len(groups)
    pick = slice(groups[0], groups[-1] + 1) if run else groups  # a view where the groups are a run
    B, C = B.float()[:, :, pick], C.float()[:, :, pick]
    slot = {group: j for j, group in enumerate(groups)}
    M = dt.new_zeros(b, len(idx), stop - start, k1 - k0)
    for r0 in range(start - start % _ROWS, stop, _ROWS):
        r1 = min(r0 + _ROWS, p)  # the aligned block: rows r0..r1-1, keys 0..r1-1 (s > t is 0)
        a, z, cols = max(r0, start), min(r1, stop), min(r1, k1)  # its rows in the window, its last key
        if cols <= k0:
            continue
        cb = torch.einsum("bqgn,bsgn->bgqs", C[:, r0:r1], B[:, :r1])  # per group, not per head
        step = max(1, _BLOCK_ELEMENTS // (b * (r1 - r0) * r1))
        for i0 in range(0, len(idx), step):
            part = slice(i0, min(i0 + step, len(idx)))
            decay = _causal_decay(hi[:, part], lo[:, part], r0, r1, dt_cols[:, part, :r1])
            for i, j, group in _group_runs(idx[part], k):
                decay[:, i:j] *= cb[:, slot[group], None]
            M[:, part, a - start : z - start, : cols - k0] = decay[:, :, a - r0 : z - r0, k0:cols]
    return M


def states_at(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    positions: int | Sequence[int],
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """The state of every head after each requested token: (b, len(positions), h, d, n).

    Positions may repeat, come in any order, or be negative (counted from the end). The state jumps from
    one requested position to the next in one contraction over the tokens between them, so the cost is
    linear in p whatever the number of positions. ``initial_state`` (b h d n) is the state before token 0.
    Differentiable.
    """
    b, p, h, d, g, n = _check(x, dt, A, B)
    k = h // g
    wanted = _positions(positions, p)
    x, dt, B = x.float(), dt.float(), B.float()
    state = _initial(initial_state, b, h, d, n, x)
    cum = _log_decay_cumsum(dt, A)  # b h p+1 (float64); index i = before token i
    found, prev = {}, -1
    for t in sorted(set(wanted)):
        span = slice(prev + 1, t + 1)
        carry = _exp_floored(cum[..., t + 1] - cum[..., prev + 1])  # b h
        w = _exp_floored(cum[..., t + 1, None] - cum[..., prev + 2 : t + 2])  # b h m
        xw = x[:, span] * (w * dt[:, span].transpose(1, 2)).transpose(1, 2)[..., None]  # b m h d
        m = t - prev
        update = torch.einsum("bsgkd,bsgn->bgkdn", xw.view(b, m, g, k, d), B[:, span])
        state = carry[..., None, None] * state + update.reshape(b, h, d, n)
        found[t], prev = state, t
    return torch.stack([found[t] for t in wanted], dim=1)


def _group_runs(idx: list[int], k: int) -> list[tuple[int, int, int]]:
    """(i, j, group): runs idx[i:j] of consecutive output heads that read the same group of B/C."""
    runs, i = [], 0
    while i < len(idx):
        j = i + 1
        while j < len(idx) and idx[j] // k == idx[i] // k:
            j += 1
        runs.append((i, j, idx[i] // k))
        i = j
    return runs


def _log_decay_cumsum(dt: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """(b, p, h), (h,) -> (b, h, p+1) float64: entry i is Σ_{r<i} dt_r A, the log decay before token i."""
    log_a = (dt.float() * A.float()).double().transpose(1, 2)
    return torch.nn.functional.pad(log_a.cumsum(-1), (1, 0))


def _exp_floored(log_decay: torch.Tensor) -> torch.Tensor:
    """exp of a float64 log decay as float32, 0 below e^_LOG_FLOOR (where float32 turns subnormal)."""
    return torch.where(log_decay > _LOG_FLOOR, log_decay.exp(), 0.0).float()


def _split(cum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A float64 running log decay (..., m), shifted to start at 0, as float32 hi + lo (lo: what hi lost)."""
    cum = cum - cum[..., :1]
    hi = cum.float()
    return hi, (cum - hi.double()).float()


def _causal_decay(
    hi: torch.Tensor,
    lo: torch.Tensor,
    start: int,
    stop: int,
    col_weight: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """exp(cum[t] - cum[s]) · col_weight[s] for rows t in start..stop-1 and columns s ≤ t, 0 for s > t.

    cum = hi + lo (see ``_split``), shapes (..., m ≥ stop); ``col_weight`` (..., stop). Returns
    (..., stop-start, stop) float32, written into ``out`` if given (no other buffer that size is made).
    exp(hi_t - hi_s) · exp(lo_t) · exp(-lo_s) keeps float32 accuracy relative to the segment cum[t] -
    cum[s] itself, never to the (possibly much larger) running total a plain float32 difference pays.
    Decays below e^-86 ≈ 4e-38 (float32's smallest normal numbers, and slow) are set to exactly 0.
    """
    rows, cols = slice(start, stop), slice(0, stop)
    if out is None:
        out = hi.new_empty(*hi.shape[:-1], stop - start, stop)
    torch.sub(hi[..., rows, None], hi[..., None, cols], out=out)
    out.clamp_(min=_LOG_FLOOR - 1).exp_()  # exp into float32's subnormal range is ~50x slower on CPUs
    torch.nn.functional.threshold_(out, math.exp(_LOG_FLOOR), 0.0)
    out *= lo[..., rows, None].exp()
    col = (-lo[..., cols]).exp_()
    out *= (col if col_weight is None else col * col_weight)[..., None, :]
    out[..., rows].tril_()  # s > t only here; exp may have overflowed there, and tril_ overwrites it
    return out


def _check(x, dt, A, B) -> tuple[int, int, int, int, int, int]:
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, positions, heads, head_dim), got shape {tuple(x.shape)}")
    b, p, h, d = x.shape
    if dt.shape != (b, p, h):
        raise ValueError(f"dt must be (batch, positions, heads) = {(b, p, h)} like x, got {tuple(dt.shape)}")
    _check_A(A, h)
    _check_bc(B, B, b, p, h)
    return b, p, h, d, *B.shape[2:]


def _check_bc(B, C, b, p, h) -> None:
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[:2] != (b, p):
            want = f"(batch, positions, groups, d_state) = ({b}, {p}, g, n)"
            raise ValueError(f"{name} must be {want}, got {tuple(t.shape)}")
    if B.shape != C.shape:
        raise ValueError(f"B and C must have the same shape, got {tuple(B.shape)} and {tuple(C.shape)}")
    if h % B.shape[2]:
        raise ValueError(f"{h} heads cannot be split evenly over {B.shape[2]} groups of B/C")


def _check_A(A, h) -> None:
    if A.shape != (h,):
        raise ValueError(f"A must be (heads,) = ({h},), got {tuple(A.shape)}")
    if (A > 0).any():
        raise ValueError("A must be negative (A = -exp(A_log)); pass -torch.exp(mixer.A_log), not A_log")


def _initial(state, b, h, d, n, like) -> torch.Tensor:
    if state is None:
        return like.new_zeros(b, h, d, n)
    if state.shape != (b, h, d, n):
        want = f"(batch, heads, head_dim, d_state) = {(b, h, d, n)}"
        raise ValueError(f"initial_state must be {want}, got {tuple(state.shape)}")
    return state.float()


def _heads(heads, h) -> list[int]:
    if heads is None:
        return list(range(h))
    idx = [heads] if isinstance(heads, int) else [int(j) for j in heads]
    bad = [j for j in idx if not -h <= j < h]
    if bad or not idx:
        raise IndexError(f"heads {list(idx)} must be a non-empty list of head indices in [0, {h})")
    return [j % h for j in idx]


head_indices = _heads  # public: points.sizes counts the heads hook_hidden_attn keeps with it


def _positions(positions, p) -> list[int]:
    idx = [positions] if isinstance(positions, int) else [int(t) for t in positions]
    bad = [t for t in idx if not -p <= t < p]
    if bad or not idx:
        raise IndexError(f"positions {idx} must be a non-empty list of token indices in [-{p}, {p})")
    return [t % p for t in idx]
