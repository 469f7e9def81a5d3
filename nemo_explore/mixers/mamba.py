"""Mamba-2 mixer: in_proj → causal conv → selective scan → gated RMSNorm → out_proj, with every step hooked.

Two paths, as in HF: the chunked scan over a whole sequence (also the first step of generation) and the
one-token recurrent update during decoding. They treat dt differently (PITFALLS 1): the chunked path
clamps softplus(dt + bias) at ``time_step_min``, the decode step does not; ``hook_dt`` reports the value
the path actually uses.
"""

from __future__ import annotations

import math
import sys
import warnings

import torch
import torch.nn.functional as F

from ..hooks import Fire
from ..options import state_positions
from ._call import check_keywords, take_cache

HIDDEN_ATTN_WARN_LEN = 2048
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
    nemo_explore, torch, transformers and accelerate: the user's line, not the library's."""
    import os  # noqa: PLC0415 (only when warning)

    packages = [sys.modules.get(p) for p in ("nemo_explore", "torch", "transformers", "accelerate")]
    dirs = tuple(os.path.dirname(m.__file__) + os.sep for m in packages if getattr(m, "__file__", None))
    skip = (*dirs, sys.modules["contextlib"].__file__)  # `with model.hooks(...)` inside the library
    frame, level = sys._getframe(1), 1  # level 1: the function that calls warnings.warn
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    return level


def _fire_derived(fire: Fire, x, dt, A, B, C, initial) -> torch.Tensor | None:
    """State norms, hidden attention and states of a chunked call, each only when hooked.

    Returns the states written through ``hook_state`` (b n_pos h d n), or None if nobody wrote them.
    """
    if not any(fire.wants(p) for p in ("hook_state_norm", "hook_hidden_attn", "hook_state")):
        return None
    from .. import ssd  # noqa: PLC0415 (the SSD math is needed only for these derived points)

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
            and fire.options.get("hidden_attn_window") is None
        ):
            _warned_long = True
            warnings.warn(
                f"hook_hidden_attn at {seq_len} tokens is a b×h×p×p tensor per Mamba layer; restrict it with "
                "hidden_attn_heads=[...] or hidden_attn_window=(start, stop) (query rows)",
                stacklevel=_user_stacklevel(),
            )
        heads, window = fire.options.get("hidden_attn_heads"), fire.options.get("hidden_attn_window")
        with torch.no_grad():
            hidden = ssd.hidden_attention(dt, A, B, C, heads=heads, query_window=window)
        fire("hook_hidden_attn", hidden)
    if fire.wants("hook_state"):
        positions = state_positions(fire.options.get("state_positions"), seq_len)
        states = ssd.states_at(x, dt, A, B, positions, initial_state=initial)
        new = fire("hook_state", states)
        if new is not states:
            fire.options["_state_cut"] = positions
            return new
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
    if cache is not None:
        conv_state = cache.get_conv_state(mixer.layer_idx, state_idx=0)
        recurrent_state = cache.get_recurrent_state(mixer.layer_idx, state_idx=0)
    else:
        conv_state, recurrent_state = None, None

    hidden_states = hf.apply_mask_to_padding_states(hidden_states, attention_mask)
    projected = fire("hook_in_proj", mixer.in_proj(hidden_states))
    A = -torch.exp(mixer.A_log.float())
    gate, xBC, dt_raw = projected.split([mixer.intermediate_size, mixer.conv_dim, heads], dim=-1)
    gate = fire("hook_gate", gate)

    # Causal conv1d (+ activation), exactly HF's two paths.
    xBC = xBC.transpose(1, 2)
    weight = mixer.conv1d.weight.squeeze(1)
    if conv_state is not None and seq_len == 1 and not cache.is_recording_past(mixer.layer_idx):
        xBC = hf.causal_conv1d_update(xBC, conv_state, weight, mixer.conv1d.bias, activation=mixer.activation)
    else:
        if cache is not None:
            xBC = cache.update_conv_state(xBC, mixer.layer_idx, conv_kernel_size=mixer.conv_kernel_size)
        xBC = hf.causal_conv1d_fn(xBC, weight, mixer.conv1d.bias, activation=mixer.activation, **kwargs)
        if cache is not None:
            xBC = xBC[:, :, -seq_len:]
    xBC = fire("hook_conv_out", hf.apply_mask_to_padding_states(xBC.transpose(1, 2), attention_mask))
    x, B, C = torch.split(xBC, [mixer.intermediate_size, groups * d_state, groups * d_state], dim=-1)
    x = fire("hook_x", x.view(batch, seq_len, heads, head_dim))
    B = fire("hook_B", B.view(batch, seq_len, groups, d_state))
    C = fire("hook_C", C.view(batch, seq_len, groups, d_state))

    if recurrent_state is not None and seq_len == 1:
        y = _decode_step(hf, mixer, fire, x, dt_raw, A, B, C, recurrent_state, kwargs)
    else:
        y, final_state = _chunked(hf, mixer, fire, x, dt_raw, A, B, C, recurrent_state, kwargs)
        if cache is not None:
            cache.update_recurrent_state(final_state, layer_idx=mixer.layer_idx)
    y = fire("hook_ssm_out", y)
    y = mixer.norm(y.reshape(batch, seq_len, -1), gate)
    return mixer.out_proj(y.to(dtype))


def _chunked(hf, mixer, fire: Fire, x, dt_raw, A, B, C, initial, kwargs):
    """The full-sequence path. Returns (y (b p h d), final state or None)."""
    limit = mixer.time_step_limit
    derived = ("hook_dt", "hook_state_norm", "hook_hidden_attn", "hook_state")
    if not any(fire.wants(p) for p in derived):
        return _hf_chunk_scan(hf, mixer, x, dt_raw, A, B, C, initial, kwargs, dt_done=False)

    dt = torch.clamp(F.softplus(dt_raw + mixer.dt_bias.to(dt_raw.dtype)), min=limit[0], max=limit[1])
    new_dt = fire("hook_dt", dt)
    new_states = _fire_derived(fire, x.float(), new_dt, A, B, C, initial)
    if new_states is not None:
        positions = fire.options.pop("_state_cut")
        return _segmented_scan(hf, mixer, x, new_dt, A, B, C, positions, new_states, initial, kwargs)
    if new_dt is not dt:
        return _hf_chunk_scan(hf, mixer, x, new_dt, A, B, C, initial, kwargs, dt_done=True)
    return _hf_chunk_scan(hf, mixer, x, dt_raw, A, B, C, initial, kwargs, dt_done=False)


def _hf_chunk_scan(hf, mixer, x, dt, A, B, C, initial, kwargs, *, dt_done: bool):
    """HF's chunked scan, called as HF calls it (``dt_done=False``: raw dt, HF adds bias, softplus, clamp)
    or with a dt that is already final (``dt_done=True``)."""
    return hf.mamba2_chunk_scan(
        x,
        dt,
        A,
        B,
        C,
        chunk_size=mixer.chunk_size,
        D=mixer.D,
        z=None,
        return_final_states=True,
        dt_bias=None if dt_done else mixer.dt_bias,
        dt_softplus=not dt_done,
        initial_states=initial,
        dt_limit=(0.0, math.inf) if dt_done else mixer.time_step_limit,
        **kwargs,
    )


def _decode_step(hf, mixer, fire: Fire, x, dt_raw, A, B, C, state, kwargs):
    """One-token recurrent update (state mutated in place, as HF does). Returns y (b 1 h d)."""
    batch, _, heads, head_dim = x.shape
    dt_exp = dt_raw.transpose(1, 2).expand(-1, -1, head_dim)
    bias_exp = mixer.dt_bias[:, None].expand(-1, head_dim)
    dt_done = False
    if fire.wants("hook_dt"):
        dt = F.softplus(dt_exp + bias_exp.to(dt_exp.dtype))[..., 0].reshape(batch, 1, heads)
        new_dt = fire("hook_dt", dt)
        if new_dt is not dt:
            dt_exp, dt_done = new_dt.reshape(batch, heads, 1).expand(-1, -1, head_dim), True
    y = hf.mamba2_selective_state_update(
        state,
        x.view(batch, heads, head_dim),
        dt_exp,
        A[:, None, None].expand(-1, head_dim, mixer.ssm_state_size),
        B.view(batch, mixer.n_groups, -1),
        C.view(batch, mixer.n_groups, -1),
        mixer.D[:, None].expand(-1, head_dim),
        z=None,
        dt_bias=None if dt_done else bias_exp,
        dt_softplus=not dt_done,
        **kwargs,
    )
    if fire.wants("hook_state_norm"):
        fire("hook_state_norm", state.float().flatten(2).norm(dim=-1).view(batch, 1, heads))
    if fire.wants("hook_state"):
        observed = state.clone().unsqueeze(1)
        new = fire("hook_state", observed)
        if new is not observed:
            state.copy_(new[:, 0])
    return y.view(batch, 1, heads, head_dim)
