"""Mamba-2 mixer: in_proj → causal conv → selective scan → gated RMSNorm → out_proj, with every step hooked.

Two paths, as in HF: the chunked scan over a whole sequence (also the first step of generation) and the
one-token recurrent update during decoding. They treat dt differently: the chunked path clamps
softplus(dt + bias) to ``time_step_limit``, the decode step does not (so the state after feeding tokens one
by one differs from the state after one forward over them, by up to ~1e-3 relative where dt is below the
limit); ``hook_dt`` reports the value each token actually used.

The conv step and the scan are HF's own functions where the installed release has them (``hf_step``), so
the cache's bookkeeping is HF's; the mirror computes only what is hooked on the side, and runs its own scan
only when a hook wrote ``hook_dt`` or ``hook_state``.
"""

from __future__ import annotations

import itertools
import sys
import warnings

import torch
import torch.nn.functional as F

from ...core.hooks import Fire
from ...core.layer_types import MAMBA
from ...core.options import state_positions
from ...core.points import names
from ._call import check_keywords, take_cache

HIDDEN_ATTN_WARN_LEN = 2048
# The derived points (points.py: computed on the side, only when hooked): wanting one takes _chunked off
# HF's plain scan; _fire_derived computes all of them but hook_dt, which _chunked fires itself.
_DERIVED = names(MAMBA, derived=True)
_FROM_SSD = tuple(p for p in _DERIVED if p != "hook_dt")
_warned_long = False


def _segmented_scan(hf, mixer, x, dt, A, B, C, positions, states, initial, kwargs):
    """The scan, cut after each position in ``positions`` where the state is replaced by ``states[:, j]``.

    Equivalent to running HF on the prefix up to t, overwriting the recurrent state in its cache and
    continuing. Returns (y (b p h d), final state (b h d n)).
    """
    outs, start, state = [], 0, initial
    cuts = [*positions, x.shape[1] - 1]
    for j, stop in enumerate(cuts):
        if stop >= start:
            seg = slice(start, stop + 1)
            y, state = hf.mamba2_chunk_scan(
                x[:, seg],
                dt[:, seg],
                A,
                B[:, seg],
                C[:, seg],
                chunk_size=mixer.chunk_size,
                D=mixer.D,
                initial_states=state,
                return_final_states=True,
                dt_limit=(0.0, float("inf")),
                **kwargs,
            )
            outs.append(y)
        if j < len(positions):
            state = states[:, j]
        start = stop + 1
    return torch.cat(outs, dim=1), state


def _user_stacklevel() -> int:
    """The ``stacklevel`` for the caller's ``warnings.warn`` that points at the first frame outside
    nemo_explore, torch, transformers, accelerate and kernels: the user's line, not the library's."""
    import os  # noqa: PLC0415 (only when warning)

    packages = [
        sys.modules.get(p) for p in ("nemo_explore", "torch", "transformers", "accelerate", "kernels")
    ]
    dirs = tuple(os.path.dirname(m.__file__) + os.sep for m in packages if getattr(m, "__file__", None))
    skip = (*dirs, sys.modules["contextlib"].__file__)  # `with model.hooks(...)` inside the library
    frame, level = sys._getframe(1), 1  # level 1: the function that calls warnings.warn
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    return level


def _fire_derived(fire: Fire, x, dt, A, B, C, initial) -> tuple[list[int], torch.Tensor] | None:
    """State norms, hidden attention and states of a chunked call, each only when hooked.

    Returns (positions, states (b n_pos h d n)) when a hook wrote ``hook_state``, else None.
    """
    if not any(fire.wants(p) for p in _FROM_SSD):
        return None
    from ...core import ssd  # noqa: PLC0415 (the SSD math is needed only for these derived points)

    seq_len = x.shape[1]
    if fire.wants("hook_state_norm"):
        with torch.no_grad():  # read-only: a description of the computation, not part of it
            norms = ssd.state_norms(x, dt, A, B, initial_state=initial)
        fire("hook_state_norm", norms)
    if fire.wants("hook_hidden_attn"):
        global _warned_long
        if (
            seq_len > HIDDEN_ATTN_WARN_LEN
            and not _warned_long
            and fire.options.hidden_attn_window is None
        ):
            _warned_long = True
            warnings.warn(
                f"hook_hidden_attn at {seq_len} tokens is a b×h×p×p tensor per Mamba layer; restrict it with "
                "hidden_attn_heads=[...] or hidden_attn_window=(start, stop) (query rows)",
                stacklevel=_user_stacklevel(),
            )
        heads, window = fire.options.hidden_attn_heads, fire.options.hidden_attn_window
        with torch.no_grad():
            hidden = ssd.hidden_attention(dt, A, B, C, heads=heads, query_window=window)
        fire("hook_hidden_attn", hidden)
    if fire.wants("hook_state"):
        positions = state_positions(fire.options.state_positions, seq_len)
        states = ssd.states_at(x, dt, A, B, positions, initial_state=initial)
        new = fire("hook_state", states)
        if new is not states or fire.wants_gradient("hook_state"):  # a gradient needs the scan to read it
            return positions, new
    return None


def mamba_forward(
    mixer, fire: Fire, hidden_states: torch.Tensor, cache=None, attention_mask=None, **kwargs
) -> torch.Tensor:
    """HF's ``NemotronHMamba2Mixer.forward`` (eval mode) with the block's hook points fired between its ops.
    ``kwargs``: only those HF passes on to its kernels (``_call.PASSED_ON``), passed on where HF does."""
    cache = take_cache(fire, cache, kwargs)
    check_keywords(fire, kwargs)
    hf = sys.modules[type(mixer).__module__]
    batch, seq_len, _ = hidden_states.shape
    heads, head_dim, groups, d_state = mixer.num_heads, mixer.head_dim, mixer.n_groups, mixer.ssm_state_size
    dtype = hidden_states.dtype

    hidden_states = hf.apply_mask_to_padding_states(hidden_states, attention_mask)
    projected = fire("hook_in_proj", mixer.in_proj(hidden_states))
    A = -torch.exp(mixer.A_log.float())
    # slices, not split(): the same views, but ones autograd lets a hook edit in place with grad enabled
    gate, xBC, dt_raw = _pieces(projected, [mixer.intermediate_size, mixer.conv_dim, heads])
    gate = fire("hook_gate", gate)

    xBC = _conv(hf, mixer, xBC.transpose(1, 2), cache, kwargs)
    xBC = fire("hook_conv_out", hf.apply_mask_to_padding_states(xBC.transpose(1, 2), attention_mask))
    x, B, C = _pieces(xBC, [mixer.intermediate_size, groups * d_state, groups * d_state])
    x = fire("hook_x", x.view(batch, seq_len, heads, head_dim))
    B = fire("hook_B", B.view(batch, seq_len, groups, d_state))
    C = fire("hook_C", C.view(batch, seq_len, groups, d_state))

    initial = cache.get_recurrent_state(mixer.layer_idx, state_idx=0) if cache is not None else None
    if initial is not None and seq_len == 1:
        y = _decode(hf, mixer, fire, x, dt_raw, A, B, C, cache, initial, kwargs)
    else:
        y = _chunked(hf, mixer, fire, x, dt_raw, A, B, C, cache, initial, kwargs)
    y = fire("hook_ssm_out", y)
    y = mixer.norm(y.reshape(batch, seq_len, -1), gate)
    return mixer.out_proj(y.to(dtype))


def hf_step(hf, name: str):
    """HF's module-level function ``name`` where the installed release has it, else None.

    transformers >= 5.25 moved the conv step (``causal_conv1d_forward``, which also counts the cache's
    tokens) and the scan (``mamba2_scan_forward``, which also keeps the recent states that assisted
    decoding's ``crop`` rolls back to) out of the mixer's forward. Called where they exist, they do that
    bookkeeping exactly as HF does; earlier releases have neither, and the mirror does their steps inline.
    """
    return getattr(hf, name, None)


def _pieces(t: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """``t`` cut along its last axis into pieces of ``sizes``, as slices of it (what ``split`` returns,
    without the view kind that forbids in-place edits under autograd)."""
    edges = [0, *itertools.accumulate(sizes)]
    return [t[..., a:b] for a, b in itertools.pairwise(edges)]


def _conv(hf, mixer, xBC, cache, kwargs) -> torch.Tensor:
    """The causal conv1d + activation with the cache's conv state, as HF runs it: (b conv_dim p)."""
    conv = hf_step(hf, "causal_conv1d_forward")
    if conv is not None:
        return conv(mixer.conv1d, xBC, cache, mixer.layer_idx, activation=mixer.activation, **kwargs)
    seq_len, weight = xBC.shape[-1], mixer.conv1d.weight.squeeze(1)
    conv_state = cache.get_conv_state(mixer.layer_idx, state_idx=0) if cache is not None else None
    if conv_state is not None and seq_len == 1 and not cache.is_recording_past(mixer.layer_idx):
        return hf.causal_conv1d_update(
            xBC, conv_state, weight, mixer.conv1d.bias, activation=mixer.activation
        )
    if cache is not None:
        xBC = cache.update_conv_state(xBC, mixer.layer_idx, conv_kernel_size=mixer.conv_kernel_size)
    xBC = hf.causal_conv1d_fn(xBC, weight, mixer.conv1d.bias, activation=mixer.activation, **kwargs)
    return xBC[:, :, -seq_len:] if cache is not None else xBC


def _hf_scan(hf, mixer, x, dt_raw, A, B, C, cache, kwargs) -> torch.Tensor:
    """HF's own selective scan from raw dt, the cache read and written as HF does: y (b p h d)."""
    batch, seq_len, heads, head_dim = x.shape
    scan = hf_step(hf, "mamba2_scan_forward")
    if scan is not None:
        flat = (batch, seq_len, -1)
        y = scan(mixer, x.reshape(flat), B.reshape(flat), C.reshape(flat), dt_raw, cache, **kwargs)
        return y.view(batch, seq_len, heads, head_dim)
    initial = cache.get_recurrent_state(mixer.layer_idx, state_idx=0) if cache is not None else None
    if initial is not None and seq_len == 1:  # decoding: HF updates the cache's state in place
        dt = dt_raw.transpose(1, 2).expand(-1, -1, head_dim)
        bias = mixer.dt_bias[:, None].expand(-1, head_dim)
        return _state_update(hf, mixer, initial, x[:, 0], dt, A, B[:, 0], C[:, 0], bias, kwargs)[:, None]
    y, final = hf.mamba2_chunk_scan(
        x,
        dt_raw,
        A,
        B,
        C,
        chunk_size=mixer.chunk_size,
        D=mixer.D,
        z=None,
        return_final_states=True,
        dt_bias=mixer.dt_bias,
        dt_softplus=True,
        initial_states=initial,
        dt_limit=mixer.time_step_limit,
        **kwargs,
    )
    if cache is not None:
        cache.update_recurrent_state(final, layer_idx=mixer.layer_idx)
    return y


def _state_update(hf, mixer, state, x, dt, A, B, C, dt_bias, kwargs) -> torch.Tensor:
    """One recurrent step on ``state`` (b h d n, updated in place) for one token: x (b h d), dt (b h d),
    A (h), B and C (b g n); ``dt_bias`` None when dt is already final. Returns y (b h d)."""
    head_dim = x.shape[-1]
    return hf.mamba2_selective_state_update(
        state,
        x,
        dt,
        A[:, None, None].expand(-1, head_dim, mixer.ssm_state_size),
        B,
        C,
        mixer.D[:, None].expand(-1, head_dim),
        z=None,
        dt_bias=dt_bias,
        dt_softplus=dt_bias is not None,
        **kwargs,
    )


def _states_to_keep(cache, layer_idx: int, seq_len: int) -> int:
    """How many of a chunked call's last tokens HF steps one by one, keeping each state for a later
    ``crop`` (transformers >= 5.25, while assisted decoding records the past; else 0)."""
    if cache is None or not hasattr(cache, "get_recurrent_states_to_keep"):
        return 0
    return min(cache.get_recurrent_states_to_keep(layer_idx), seq_len)


def _softplus_dt(mixer, dt_raw) -> torch.Tensor:
    """softplus(dt + dt_bias) (b p h), unclamped: what HF's one-token steps use."""
    return F.softplus(dt_raw + mixer.dt_bias.to(dt_raw.dtype))


def _dt_used(mixer, dt_raw, keep: int) -> torch.Tensor:
    """softplus(dt + dt_bias) (b p h) as HF uses it: clamped to ``time_step_limit`` where the chunked scan
    runs, not on the last ``keep`` tokens, which HF steps one by one."""
    dt = _softplus_dt(mixer, dt_raw)
    lo, hi = mixer.time_step_limit
    clamped = torch.clamp(dt, min=lo, max=hi)
    if keep == 0:
        return clamped
    head = dt_raw.shape[1] - keep
    return torch.cat([clamped[:, :head], dt[:, head:]], dim=1)


def _chunked(hf, mixer, fire: Fire, x, dt_raw, A, B, C, cache, initial, kwargs) -> torch.Tensor:
    """The path of a call with more than one token (or the first one on a fresh cache): y (b p h d)."""
    if not any(fire.wants(p) for p in _DERIVED):
        return _hf_scan(hf, mixer, x, dt_raw, A, B, C, cache, kwargs)

    keep = _states_to_keep(cache, mixer.layer_idx, x.shape[1])
    dt = _dt_used(mixer, dt_raw, keep)
    new_dt = fire("hook_dt", dt)
    written_states = _fire_derived(fire, x.float(), new_dt, A, B, C, initial)
    # a gradient of dt needs the scan to read it (as a written dt is read)
    if written_states is None and new_dt is dt and not fire.wants_gradient("hook_dt"):
        return _hf_scan(hf, mixer, x, dt_raw, A, B, C, cache, kwargs)
    positions, states = written_states or ([], None)
    return _written_scan(hf, mixer, x, new_dt, A, B, C, cache, initial, keep, positions, states, kwargs)


def _written_scan(hf, mixer, x, dt, A, B, C, cache, initial, keep, positions, states, kwargs):
    """HF's scan with a dt that is already final and the state replaced by ``states[:, j]`` after each
    position ``positions[j]``: the chunked scan up to the last ``keep`` tokens, which are stepped one by
    one as HF does (their states handed to the cache for a later ``crop``). Returns y (b p h d)."""
    batch, seq_len, heads, head_dim = x.shape
    head = seq_len - keep
    outs, state = [], initial
    if head > 0:
        early = [j for j, t in enumerate(positions) if t < head]
        part = slice(0, head)
        y, state = _segmented_scan(
            hf, mixer, x[:, part], dt[:, part], A, B[:, part], C[:, part],
            [positions[j] for j in early], states[:, early] if early else None, initial, kwargs,
        )  # fmt: skip
        outs.append(y)
    if keep:  # stepped in place from here on: never the cache's or the hook's own tensor
        shape = (batch, heads, head_dim, mixer.ssm_state_size)
        state = state.clone() if state is not None else x.new_zeros(shape, dtype=torch.float32)
    replace = {t: j for j, t in enumerate(positions) if t >= head}
    history = []
    for t in range(head, seq_len):
        dt_t = dt[:, t, :, None].expand(-1, -1, head_dim)
        outs.append(
            _state_update(hf, mixer, state, x[:, t], dt_t, A, B[:, t], C[:, t], None, kwargs)[:, None]
        )
        if t in replace:
            state.copy_(states[:, replace[t]])
        history.append(state.clone())
    if cache is not None:  # a list: the states of the tokens stepped one by one, for a later crop
        cache.update_recurrent_state(history if len(history) > 1 else state, layer_idx=mixer.layer_idx)
    return torch.cat(outs, dim=1)


def _decode(hf, mixer, fire: Fire, x, dt_raw, A, B, C, cache, initial, kwargs) -> torch.Tensor:
    """One token on a cache whose state is ``initial``: HF's recurrent step (or the same step with a
    written dt), then the new state's points. Returns y (b 1 h d)."""
    batch, _, heads, head_dim = x.shape
    dt = new_dt = None
    if fire.wants("hook_dt"):
        dt = _softplus_dt(mixer, dt_raw)
        new_dt = fire("hook_dt", dt)
    if new_dt is dt:
        y = _hf_scan(hf, mixer, x, dt_raw, A, B, C, cache, kwargs)
    else:
        y = _written_scan(hf, mixer, x, new_dt, A, B, C, cache, initial, 1, [], None, kwargs)
    state = cache.get_recurrent_state(mixer.layer_idx, state_idx=0)
    if fire.wants("hook_state_norm"):
        fire("hook_state_norm", state.float().flatten(2).norm(dim=-1).view(batch, 1, heads))
    if fire.wants("hook_state"):
        observed = state.clone().unsqueeze(1)
        new = fire("hook_state", observed)
        if new is not observed:
            state.copy_(new[:, 0])
    return y
