"""nemo_explore.core.ssd against a sequential float64 recurrence written here, and against HF itself: the
recurrent state HF keeps in its cache after each prefix, and HF's chunked scan output."""

import math

import pytest
import torch
import torch.nn.functional as F
import transformers.models.nemotron_h.modeling_nemotron_h as hf_mod
from models import random_model

from nemo_explore.core import ssd

# Shapes every test uses unless it says otherwise: batch 2, groups 2 of 3 heads, lengths that no chunk
# size below divides.
b, h, d, g, n = 2, 6, 3, 2, 5


def make_inputs(p=37, seed=0, dt_range=(0.01, 0.6), a_range=(0.1, 2.0)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, p, h, d, generator=gen)
    dt = dt_range[0] + (dt_range[1] - dt_range[0]) * torch.rand(b, p, h, generator=gen)
    A = -(a_range[0] + (a_range[1] - a_range[0]) * torch.rand(h, generator=gen))
    B = torch.randn(b, p, g, n, generator=gen)
    C = torch.randn(b, p, g, n, generator=gen)
    D = torch.randn(h, generator=gen)
    S0 = torch.randn(b, h, d, n, generator=gen)
    return x, dt, A, B, C, D, S0


def naive_states(x, dt, A, B, initial=None):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t ⊗ B_t, one token at a time in float64: (b, p, h, d, n)."""
    x, dt, A = x.double(), dt.double(), A.double()
    heads = x.shape[2]
    Bh = B.double().repeat_interleave(heads // B.shape[2], dim=2)
    S = torch.zeros(x.shape[0], heads, x.shape[3], B.shape[3], dtype=torch.float64)
    if initial is not None:
        S = initial.double()
    out = []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        S = decay * S + dt[:, t, :, None, None] * x[:, t, :, :, None] * Bh[:, t, :, None, :]
        out.append(S)
    return torch.stack(out, dim=1)


def naive_output(states, x, C, D):
    """y_t = h_t · C_t + D x_t from the naive states: (b, p, h, d)."""
    Ch = C.double().repeat_interleave(states.shape[2] // C.shape[2], dim=2)
    return torch.einsum("bphdn,bphn->bphd", states, Ch) + D.double()[:, None] * x.double()


def reference_decay(dt, A):
    """exp(A Σ_{r=s+1..t} dt_r) for s ≤ t, else 0, in float64: (b, h, p, p)."""
    cum = torch.cumsum(dt.double() * A.double(), dim=1).transpose(1, 2)  # b h p
    seg = cum[..., :, None] - cum[..., None, :]
    causal = torch.ones(seg.shape[-2:], dtype=torch.bool).tril()
    return torch.where(causal, seg, -math.inf).exp()


def reference_hidden_attention(dt, A, B, C):
    """M[t, s] = (C_t·B_s) exp(A Σ_{r=s+1..t} dt_r) dt_s in float64, per head, from repeated B and C."""
    heads = dt.shape[2]
    Bh = B.double().repeat_interleave(heads // B.shape[2], dim=2)
    Ch = C.double().repeat_interleave(heads // C.shape[2], dim=2)
    cb = torch.einsum("bthn,bshn->bhts", Ch, Bh)
    return cb * reference_decay(dt, A) * dt.double().transpose(1, 2)[:, :, None, :]


# ---------------------------------------------------------------- state norms


@pytest.mark.parametrize("with_initial", [False, True])
@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_state_norms_match_naive_recurrence(with_initial, chunk):
    x, dt, A, B, _, _, S0 = make_inputs()
    initial = S0 if with_initial else None
    ref = naive_states(x, dt, A, B, initial).flatten(3).norm(dim=-1)
    got = ssd.state_norms(x, dt, A, B, initial_state=initial, chunk=chunk)
    assert got.shape == (b, 37, h) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("per_block", [2, 100])
def test_state_norms_same_whatever_the_block_of_chunks(monkeypatch, per_block):
    # A CPU takes one chunk at a time, a GPU many: two per block (a partial last block) and all in one
    # block give what one at a time gives.
    x, dt, A, B, _, _, S0 = make_inputs()
    whole = ssd.state_norms(x, dt, A, B, initial_state=S0, chunk=16)
    monkeypatch.setattr(ssd, "_chunks_per_block", lambda x, chunk: per_block)
    torch.testing.assert_close(ssd.state_norms(x, dt, A, B, initial_state=S0, chunk=16), whole)
    ref = naive_states(x, dt, A, B, S0).flatten(3).norm(dim=-1)
    torch.testing.assert_close(ssd.state_norms(x, dt, A, B, initial_state=S0, chunk=5).double(), ref,
                               rtol=2e-6, atol=1e-7)


def test_state_norms_long_sequence_strong_and_weak_decay():
    # 601 tokens, decay per token from ~1 (dt·A ≈ -0.001) to ~0 (dt·A ≈ -12): the running log decay reaches
    # thousands, which must not cost accuracy.
    x, dt, A, B, _, _, S0 = make_inputs(p=601, seed=3, dt_range=(0.001, 3.0), a_range=(0.5, 4.0))
    ref = naive_states(x, dt, A, B, S0).flatten(3).norm(dim=-1)
    got = ssd.state_norms(x, dt, A, B, initial_state=S0)
    torch.testing.assert_close(got.double(), ref, rtol=2e-6, atol=1e-7)


def test_state_norms_exact_cancellation_gives_zero_not_nan():
    # Token 0 writes exactly minus the decayed initial state: the state becomes 0, and the three terms of
    # the squared norm cancel to a rounding error of either sign.
    gen = torch.Generator().manual_seed(5)
    bb, hh = 64, 4
    S0 = torch.randn(bb, hh, 1, 1, generator=gen)
    dt = torch.rand(bb, 1, hh, generator=gen) + 0.1
    A = -torch.rand(hh, generator=gen) - 0.1
    B = torch.randn(bb, 1, 2, 1, generator=gen)
    decay = torch.exp(dt[:, 0] * A)  # bb hh
    Bh = B[:, 0, :, 0].repeat_interleave(hh // 2, dim=1)
    x = (-(decay * S0[..., 0, 0]) / (dt[:, 0] * Bh))[:, None, :, None]
    got = ssd.state_norms(x, dt, A, B, initial_state=S0)
    assert torch.isfinite(got).all()
    assert (got <= 1e-3 * S0.abs().view(bb, 1, hh)).all()


# ---------------------------------------------------------------- states


@pytest.mark.parametrize("with_initial", [False, True])
def test_states_at_match_naive_recurrence(with_initial):
    x, dt, A, B, _, _, S0 = make_inputs(p=29)
    initial = S0 if with_initial else None
    ref = naive_states(x, dt, A, B, initial)
    got = ssd.states_at(x, dt, A, B, [5, 0, -1, 5, 17, 16], initial_state=initial)  # any order, repeats
    assert got.shape == (b, 6, h, d, n)
    torch.testing.assert_close(got.double(), ref[:, [5, 0, 28, 5, 17, 16]], rtol=1e-5, atol=1e-6)
    one = ssd.states_at(x, dt, A, B, 7, initial_state=initial)
    torch.testing.assert_close(one.double(), ref[:, [7]], rtol=1e-5, atol=1e-6)


def test_states_at_is_differentiable_and_the_read_only_values_ignore_autograd():
    x, dt, A, B, C, _, S0 = make_inputs(p=13)
    A = A.clone().requires_grad_()  # as -exp(A_log) is outside no_grad
    x = x.clone().requires_grad_()
    assert not ssd.state_norms(x, dt, A, B).requires_grad
    assert not ssd.hidden_attention(dt, A, B, C).requires_grad
    weights = torch.randn(b, 2, h, d, n, generator=torch.Generator().manual_seed(9))
    (ssd.states_at(x, dt, A, B, [4, 12], initial_state=S0) * weights).sum().backward()
    x64, A64 = x.detach().double().requires_grad_(), A.detach().double().requires_grad_()
    (naive_states(x64, dt, A64, B, S0)[:, [4, 12]] * weights.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(A.grad.double(), A64.grad, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- hidden attention


def test_hidden_attention_reproduces_hf_scan_and_recurrence():
    x, dt, A, B, C, D, _ = make_inputs(p=37)
    M = ssd.hidden_attention(dt, A, B, C)
    assert M.shape == (b, h, 37, 37) and M.dtype == torch.float32
    y = torch.einsum("bhts,bshd->bthd", M, x) + D[:, None] * x
    for chunk_size in (8, 37, 64):
        hf_y = hf_mod.mamba2_chunk_scan(x, dt, A, B, C, chunk_size=chunk_size, D=D)
        torch.testing.assert_close(y, hf_y, rtol=1e-5, atol=1e-5 * hf_y.abs().max().item())
    naive_y = naive_output(naive_states(x, dt, A, B), x, C, D)
    torch.testing.assert_close(y.double(), naive_y, rtol=1e-5, atol=1e-5 * naive_y.abs().max().item())


def test_hidden_attention_is_causal():
    _, dt, A, B, C, _, _ = make_inputs(p=23)
    M = ssd.hidden_attention(dt, A, B, C)
    upper = torch.ones(23, 23, dtype=torch.bool).triu(1)
    assert (M[..., upper] == 0).all()
    assert (M[..., ~upper] != 0).all()  # random B, C: nothing on or below the diagonal vanishes


@pytest.mark.parametrize("heads,window", [([1, 5], (4, 9)), ([4, 3, 0], None), (None, (22, 23)), (2, (0, 1))])
def test_hidden_attention_heads_and_windows_are_slices_of_the_full_matrix(heads, window):
    _, dt, A, B, C, _, _ = make_inputs(p=23)
    full = ssd.hidden_attention(dt, A, B, C)
    part = ssd.hidden_attention(dt, A, B, C, heads=heads, query_window=window)
    rows = slice(*window) if window else slice(None)
    cols = list(range(h)) if heads is None else [heads] if isinstance(heads, int) else heads
    assert torch.equal(part, full[:, cols, rows])  # bit for bit: blocks are aligned whatever the window
    keys = ssd.hidden_attention(dt, A, B, C, heads=heads, query_window=window, key_window=(3, 11))
    assert torch.equal(keys, full[:, cols, rows, 3:11])


@pytest.mark.parametrize("dt_range,a_range", [((0.001, 0.05), (0.1, 1.0)), ((0.1, 3.0), (0.5, 4.0))])
def test_hidden_attention_keeps_float32_accuracy_on_long_sequences(dt_range, a_range):
    # 613 tokens; the running log decay reaches ~-10 (weak decay) or ~-3000 (strong). Every entry must
    # carry float32 accuracy relative to its own size, near the diagonal as far from it; only where the
    # decay itself is below float32's normal range (< 4e-38) may the entry be flushed to 0.
    _, dt, A, B, C, _, _ = make_inputs(p=613, seed=7, dt_range=dt_range, a_range=a_range)
    M = ssd.hidden_attention(dt, A, B, C).double()
    ref = reference_hidden_attention(dt, A, B, C)
    scale = reference_hidden_attention(dt, A, B.abs(), C.abs())  # |C_t|·|B_s| decay dt: each entry's size
    accurate = (M - ref).abs() <= 1e-5 * scale + 1e-37
    flushed = (reference_decay(dt, A) < 4.5e-38) & (M == 0)
    assert (accurate | flushed).all(), ((M - ref).abs() / scale.clamp_min(1e-300)).max()
    assert (accurate & (M != 0)).sum() > 0.03 * M.numel()  # and not everything was flushed


# ---------------------------------------------------------------- against HF's own cache


def mixer_inputs(model, ids, layer):
    """x, dt, A, B, C of Mamba layer ``layer`` over ``ids``, recomputed from the mixer's weights and the
    input it receives (captured with a plain forward pre-hook)."""
    mixer = model.model.layers[layer].mixer
    seen = []
    handle = mixer.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        model(ids)
    finally:
        handle.remove()
    hidden = seen[0]
    bb, p, _ = hidden.shape
    heads, hd, gg, ns = mixer.num_heads, mixer.head_dim, mixer.n_groups, mixer.ssm_state_size
    _, xBC, dt_raw = mixer.in_proj(hidden).split([mixer.intermediate_size, mixer.conv_dim, heads], dim=-1)
    weight = mixer.conv1d.weight.squeeze(1)
    xBC = hf_mod.causal_conv1d_fn(xBC.transpose(1, 2), weight, mixer.conv1d.bias, activation=mixer.activation)
    x, B, C = xBC.transpose(1, 2).split([mixer.intermediate_size, gg * ns, gg * ns], dim=-1)
    dt = torch.clamp(F.softplus(dt_raw + mixer.dt_bias), min=mixer.time_step_limit[0])
    A = -torch.exp(mixer.A_log.float())
    return x.reshape(bb, p, heads, hd), dt, A, B.reshape(bb, p, gg, ns), C.reshape(bb, p, gg, ns)


def hf_state_after(model, ids, t, layer):
    """The recurrent state HF's chunked path leaves in its cache after the prefix ids[:, :t+1] (a prefix
    forward, not decode steps, whose dt is not clamped)."""
    return model(ids[:, : t + 1], use_cache=True).past_key_values.get_recurrent_state(layer).clone()


@pytest.fixture(scope="module")
def hf_model():
    # chunk_size 8 (tiny_config) against 19 tokens; 8 heads in 2 groups, head_dim 4, d_state 8. An
    # attention layer in between, because HF's cache fails a use_cache forward of an all-Mamba model
    # (get_seq_length wants an attention layer; transformers 5.23).
    return random_model("M*M", seed=2)


@torch.no_grad()
@pytest.mark.parametrize("layer", [0, 2])
def test_state_norms_and_states_equal_hf_cache_after_each_prefix(hf_model, layer):
    ids = torch.randint(3, 97, (2, 19), generator=torch.Generator().manual_seed(1))
    x, dt, A, B, _ = mixer_inputs(hf_model, ids, layer)
    norms = ssd.state_norms(x, dt, A, B, chunk=5)
    times = [0, 4, 7, 8, 15, 18]
    states = ssd.states_at(x, dt, A, B, times)
    for i, t in enumerate(times):
        ref = hf_state_after(hf_model, ids, t, layer)  # b h d n
        torch.testing.assert_close(norms[:, t], ref.flatten(2).norm(dim=-1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(states[:, i], ref, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_state_norms_from_hf_initial_state_continue_hf(hf_model):
    # The state HF holds after 9 tokens, carried through the remaining 10 by state_norms, gives the norms of
    # the states HF holds after each longer prefix.
    ids = torch.randint(3, 97, (2, 19), generator=torch.Generator().manual_seed(4))
    x, dt, A, B, _ = mixer_inputs(hf_model, ids, 2)
    start = hf_state_after(hf_model, ids, 8, 2)
    norms = ssd.state_norms(x[:, 9:], dt[:, 9:], A, B[:, 9:], initial_state=start, chunk=4)
    for t in (9, 12, 13, 18):
        ref = hf_state_after(hf_model, ids, t, 2).flatten(2).norm(dim=-1)
        torch.testing.assert_close(norms[:, t - 9], ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- bad input


def test_bad_input_gets_a_clear_error():
    x, dt, A, B, C, _, S0 = make_inputs(p=11)
    with pytest.raises(ValueError, match="dt must be"):
        ssd.state_norms(x, dt[:, :-1], A, B)
    with pytest.raises(ValueError, match="A must be negative"):
        ssd.state_norms(x, dt, -A, B)
    with pytest.raises(ValueError, match="cannot be split evenly"):
        ssd.state_norms(x, dt, A, torch.randn(b, 11, 4, n))
    with pytest.raises(ValueError, match="initial_state must be"):
        ssd.state_norms(x, dt, A, B, initial_state=S0[:, :, :, :-1])
    with pytest.raises(ValueError, match="chunk must be"):
        ssd.state_norms(x, dt, A, B, chunk=0)
    with pytest.raises(ValueError, match="B and C must have the same shape"):
        ssd.hidden_attention(dt, A, B, C[..., :-1])
    with pytest.raises(IndexError, match="heads"):
        ssd.hidden_attention(dt, A, B, C, heads=[h])
    with pytest.raises(IndexError, match="query_window"):
        ssd.hidden_attention(dt, A, B, C, query_window=(5, 5))
    with pytest.raises(IndexError, match="positions"):
        ssd.states_at(x, dt, A, B, [11])
