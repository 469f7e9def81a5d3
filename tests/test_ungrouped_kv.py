"""``ungroup_grouped_query_attention`` (TransformerLens' option): ``hook_k`` / ``hook_v`` carry a copy of the
KV head per query head. Observing them is bit-exact; writing one copy changes what that query head alone
reads (against attention computed by hand); gradients of the copies sum to the KV head's."""

import pytest
import torch
from models import hooked_pair

import nemo_explore as ne

ATTN = 1  # the attention block of "M*-EM"


@pytest.fixture(scope="module")
def pair():
    hf, model = hooked_pair("M*-EM", seed=3)
    assert model.cfg.n_heads // model.cfg.n_key_value_heads > 1  # grouped-query attention
    return hf, model


def tokens(b=2, p=11, seed=0):
    return torch.randint(3, 97, (b, p), generator=torch.Generator().manual_seed(seed))


def test_observing_the_copies_is_bit_exact(pair):
    hf, model = pair
    ids = tokens()
    names = [f"blocks.{ATTN}.attn.hook_{p}" for p in ("k", "v")]
    logits, cache = model.run_with_cache(ids, names_filter=names, ungroup_grouped_query_attention=True)
    _, grouped = model.run_with_cache(ids, names_filter=names)
    assert torch.equal(logits, hf(ids).logits)
    n_rep = model.cfg.n_heads // model.cfg.n_key_value_heads
    for name in names:
        assert cache[name].shape == (2, 11, model.cfg.n_heads, model.cfg.d_head)
        assert torch.equal(cache[name], grouped[name].repeat_interleave(n_rep, dim=2))
    shapes = ne.describe(model).hook_shapes(11, 2, names, ungroup_grouped_query_attention=True)
    assert all(shapes[n] == tuple(cache[n].shape) for n in names)
    assert cache.options.ungroup_grouped_query_attention
    assert not grouped.options.ungroup_grouped_query_attention


def by_hand(hf, model, ids, k_edit=None, v_edit=None):
    """The attention block's output computed by hand from its input: eager attention, causal, every query
    head reading its own (possibly edited) copy of its KV head."""
    attn = hf.model.layers[ATTN].mixer
    _, cache = model.run_with_cache(ids, names_filter=f"blocks.{ATTN}.hook_mixer_in")
    x = cache[f"blocks.{ATTN}.hook_mixer_in"]
    b, p, _ = x.shape
    h, d = model.cfg.n_heads, model.cfg.d_head
    n_rep = h // model.cfg.n_key_value_heads
    q = attn.q_proj(x).view(b, p, h, d)
    k = attn.k_proj(x).view(b, p, -1, d).repeat_interleave(n_rep, dim=2)
    v = attn.v_proj(x).view(b, p, -1, d).repeat_interleave(n_rep, dim=2)
    k = k if k_edit is None else k_edit(k)
    v = v if v_edit is None else v_edit(v)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * attn.scaling
    scores = scores.masked_fill(~torch.ones(p, p, dtype=torch.bool).tril(), float("-inf"))
    z = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    return attn.o_proj(z.reshape(b, p, h * d))


@pytest.mark.parametrize("point", ["k", "v"])
def test_writing_one_query_heads_copy_changes_that_head_alone(pair, point):
    hf, model = pair
    ids = tokens()
    head = 1  # shares its KV head with head 0

    def edit(t):
        t = t.clone()
        t[:, :, head] = 4.0 * t[:, :, head] + 1.0
        return t

    name = f"blocks.{ATTN}.attn.hook_{point}"
    with torch.no_grad():
        with model.hooks([(name, lambda t, hook: edit(t))], ungroup_grouped_query_attention=True):
            _, cache = model.run_with_cache(
                ids, names_filter=[f"blocks.{ATTN}.hook_mixer_out", f"blocks.{ATTN}.attn.hook_z"]
            )
        want = by_hand(hf, model, ids, **{f"{point}_edit": edit})
        _, plain = model.run_with_cache(ids, names_filter=f"blocks.{ATTN}.attn.hook_z")
    torch.testing.assert_close(cache[f"blocks.{ATTN}.hook_mixer_out"], want, rtol=1e-5, atol=1e-5)
    z, z0 = cache[f"blocks.{ATTN}.attn.hook_z"], plain[f"blocks.{ATTN}.attn.hook_z"]
    others = [h for h in range(model.cfg.n_heads) if h != head]
    torch.testing.assert_close(z[:, :, others], z0[:, :, others], rtol=1e-5, atol=1e-6)  # head 0 unmoved
    assert (z[:, :, head] - z0[:, :, head]).abs().max() > 1e-3


def test_a_gradient_of_the_copies_sums_to_the_kv_heads(pair):
    hf, model = pair
    ids = tokens(b=1)
    n_rep = model.cfg.n_heads // model.cfg.n_key_value_heads
    grads = {}
    for ungroup in (False, True):
        _, cache = model.run_with_cache(
            ids,
            names_filter=f"blocks.{ATTN}.attn.hook_k",
            return_type="loss",
            incl_bwd=True,
            ungroup_grouped_query_attention=ungroup,
        )
        grads[ungroup] = cache[f"blocks.{ATTN}.attn.hook_k_grad"]
    per_copy = grads[True]
    assert per_copy.shape[2] == model.cfg.n_heads
    summed = per_copy.unflatten(2, (-1, n_rep)).sum(3)
    torch.testing.assert_close(summed, grads[False], rtol=1e-4, atol=1e-7)
    hf.zero_grad(set_to_none=True)


def test_the_model_wide_switch_and_its_refusals(pair):
    hf, model = pair
    ids = tokens(b=1, p=6)
    assert model.cfg.ungroup_grouped_query_attention is False
    model.set_ungroup_grouped_query_attention(True)
    try:
        assert model.cfg.ungroup_grouped_query_attention is True
        _, cache = model.run_with_cache(ids, names_filter=f"blocks.{ATTN}.attn.hook_v")
        assert cache["v", ATTN].shape[2] == model.cfg.n_heads
        with model.hooks(), pytest.raises(RuntimeError, match="call it outside"):
            model.set_ungroup_grouped_query_attention(False)
        # observing while decoding with HF's cache: the same tokens; a write there says why it cannot
        with model.hooks([(f"blocks.{ATTN}.attn.hook_k", lambda k, hook: None)]):
            assert torch.equal(model.generate(ids, max_new_tokens=3), hf.generate(ids, max_new_tokens=3))
        with pytest.raises(NotImplementedError, match="the cache keeps the KV heads"):
            double = [(f"blocks.{ATTN}.attn.hook_k", lambda k, hook: k * 2)]
            model.generate(ids, max_new_tokens=2, fwd_hooks=double)
    finally:
        model.set_ungroup_grouped_query_attention(False)
    _, cache = model.run_with_cache(ids, names_filter=f"blocks.{ATTN}.attn.hook_v")
    assert cache["v", ATTN].shape[2] == model.cfg.n_key_value_heads


def test_load_takes_the_switch():
    model = ne.load("tiny", ungroup_grouped_query_attention=True)
    assert model.cfg.ungroup_grouped_query_attention
    attn = model.layers("attention")[0]
    _, cache = model.run_with_cache("The cat sat.", names_filter=f"blocks.{attn}.attn.hook_k")
    assert cache["k", attn].shape[2] == model.cfg.n_heads
