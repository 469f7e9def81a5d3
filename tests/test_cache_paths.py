"""Exact wherever HF runs: static and dynamic caches, chunked prefill, left padding, no cache, and HF's own
``output_attentions`` — every point observed, compared with the plain HF model (and hook_pattern with HF's
eager attention weights, an independent computation of the same probabilities)."""

import contextlib
import copy
import re

import pytest
import torch
from models import hooked_pair
from transformers import DynamicCache, StaticCache

import nemo_explore as ne
from nemo_explore.mirror.versions import cache_keyword

SHAPES = {
    "gqa_groups": ("M*-EM", {}),
    "attention_first": ("*M-ME", dict(chunk_size=5, mamba_num_heads=4, n_groups=4)),
}
EVERYTHING_BUT_HIDDEN_ATTN = lambda n: not n.endswith("hook_hidden_attn")  # noqa: E731


@pytest.fixture(params=list(SHAPES), scope="module")
def pair(request):
    pattern, overrides = SHAPES[request.param]
    return hooked_pair(pattern, seed=4, **overrides)


def ids(b=2, p=9, seed=0, vocab=97):
    return torch.randint(3, vocab, (b, p), generator=torch.Generator().manual_seed(seed))


def left_padded(b=2, p=9, pad=3, seed=0):
    x = ids(b, p, seed)
    mask = torch.ones_like(x)
    mask[1, :pad] = 0
    x[1, :pad] = 0
    return x, mask


def eager(hf):
    twin = copy.deepcopy(hf)
    twin.set_attn_implementation("eager")
    return twin


def observe_all(model):
    return model.hooks([(EVERYTHING_BUT_HIDDEN_ATTN, lambda t, hook: None)])


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
@pytest.mark.parametrize("padded", [False, True])
def test_generation_with_every_point_observed(pair, cache_implementation, padded):
    hf, model = pair
    x, mask = left_padded() if padded else (ids(), None)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, cache_implementation=cache_implementation)
    ref = hf.generate(x, attention_mask=mask, **kw)
    with observe_all(model):
        got = model.generate(x, attention_mask=mask, **kw)
    assert torch.equal(got, ref)


def test_generation_without_a_cache(pair):
    hf, model = pair
    x = ids(b=1, p=7, seed=2)
    ref = hf.generate(x, max_new_tokens=5, do_sample=False, pad_token_id=0, use_cache=False)
    with observe_all(model):
        assert torch.equal(model.generate(x, max_new_tokens=5, use_cache=False), ref)


def test_chunked_prefill_on_a_cache_equals_hf(pair):
    """A multi-token forward on an existing cache (HF's decoder-with-past path), every point observed:
    logits and every cache tensor equal HF's."""
    hf, model = pair
    x = ids(b=2, p=13, seed=5)
    kw = cache_keyword(hf)

    def run():
        cache = DynamicCache(config=hf.config)
        first = hf(x[:, :8], use_cache=True, **{kw: cache}).logits
        second = hf(x[:, 8:], use_cache=True, **{kw: cache}).logits
        return first, second, cache

    ref_first, ref_second, ref_cache = run()
    with observe_all(model):
        first, second, cache = run()
    assert torch.equal(first, ref_first) and torch.equal(second, ref_second)
    for i in model.layers("mamba"):
        assert torch.equal(cache.get_recurrent_state(i), ref_cache.get_recurrent_state(i))
        assert torch.equal(cache.get_conv_state(i), ref_cache.get_conv_state(i))


def test_chunked_prefill_points_continue_the_full_forward(pair):
    """On the cache, the second chunk's pattern rows and state norms are those of a forward over the whole."""
    hf, model = pair
    x = ids(b=1, p=13, seed=6)
    attn, mamba = model.layers("attention")[0], model.layers("mamba")[0]
    names = [f"blocks.{attn}.attn.hook_pattern", f"blocks.{mamba}.mamba.hook_state_norm"]
    _, full = model.run_with_cache(x, names_filter=names)
    seen = {}
    cache, kw = DynamicCache(config=hf.config), cache_keyword(hf)
    with model.hooks([(n, lambda t, hook: seen.__setitem__(hook.name, t.clone())) for n in names]):
        hf(x[:, :8], use_cache=True, **{kw: cache})
        hf(x[:, 8:], use_cache=True, **{kw: cache})
    torch.testing.assert_close(seen[names[0]], full[names[0]][:, :, 8:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen[names[1]], full[names[1]][:, 8:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padded", [False, True])
def test_pattern_on_a_static_cache_equals_hf_eager_attentions(pair, padded):
    """A static cache hands attention max_cache_len keys, the empty slots included; the pattern must put
    weight exactly where HF's eager attention does (the prefill and each decoding step)."""
    hf, model = pair
    x, mask = left_padded(p=7, pad=2) if padded else (ids(p=7), None)
    layer = model.layers("attention")[0]
    twin, kw = eager(hf), cache_keyword(hf)
    steps = [x, x[:, -1:] * 0 + 5, x[:, -1:] * 0 + 7]

    def run(m, capture):
        cache = StaticCache(config=hf.config, max_cache_len=16)
        out, full_mask = [], mask
        for n, step in enumerate(steps):
            if full_mask is not None and n:
                full_mask = torch.cat([full_mask, torch.ones_like(step)], dim=1)
            res = m(step, attention_mask=full_mask, use_cache=True, output_attentions=capture, **{kw: cache})
            out.append(res.attentions[0] if capture else None)  # one entry per attention block
        return out

    ref = run(twin, capture=True)
    got = []
    with model.hooks([(f"blocks.{layer}.attn.hook_pattern", lambda t, hook: got.append(t.clone()))]):
        run(hf, capture=False)
    assert [g.shape for g in got] == [r.shape for r in ref]
    if padded:  # padding queries see no key: all-zero rows here, HF's eager spreads them evenly
        real = mask[1].bool()
        got[0], ref[0] = got[0][1, :, real], ref[0][1, :, real]
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_output_attentions_survive_hooks(pair):
    """HF's ``output_attentions=True`` (eager) returns the same weights whether or not a point is hooked,
    and they equal hook_pattern."""
    hf, model = pair
    twin = eager(hf)
    hooked = ne.HookedNemotronH(twin)
    x, mask = left_padded()
    ref = twin(x, attention_mask=mask, output_attentions=True)
    layer = model.layers("attention")[0]  # HF's attentions: one entry per attention block, this is the first
    got = {}
    with hooked.hooks([(f"blocks.{layer}.attn.hook_pattern", lambda t, hook: got.update(p=t.clone()))]):
        out = twin(x, attention_mask=mask, output_attentions=True)
    assert torch.equal(out.logits, ref.logits)
    assert all(torch.equal(a, b) for a, b in zip(out.attentions, ref.attentions, strict=True))
    rows = mask.bool()  # padding queries see no key: all-zero rows here, HF's eager spreads them evenly
    want = ref.attentions[0]
    torch.testing.assert_close(got["p"][0], want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["p"][1][:, rows[1]], want[1][:, rows[1]], rtol=1e-5, atol=1e-6)


def generate_twice(hf, model, x, observe: bool, hooks=None, **extra):
    """Greedy generation on one cache, then again on the same cache with two more prompt tokens: the
    sequences, every step's logits and the cache's token count after each call."""
    cache = DynamicCache(config=hf.config)
    kw = dict(do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_logits=True, **extra)
    kw[cache_keyword(hf)] = cache
    out = []
    with model.hooks(hooks) if hooks else observe_all(model) if observe else contextlib.nullcontext():
        first = hf.generate(x, max_new_tokens=4, **kw)
        out += [first.sequences, *first.logits, int(cache.get_seq_length())]
        again = hf.generate(torch.cat([first.sequences, x[:, :2]], dim=1), max_new_tokens=4, **kw)
        out += [again.sequences, *again.logits, int(cache.get_seq_length())]
    return out


def assert_same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w) if isinstance(w, torch.Tensor) else g == w


def test_generate_twice_on_one_cache_equals_hf(pair):
    """The second generate continues from the cache the first one left: its recurrent and conv states and
    its bookkeeping (transformers >= 5.25 counts tokens in the Mamba layers) must be HF's exactly."""
    hf, model = pair
    assert_same(generate_twice(hf, model, ids(b=1), observe=True), generate_twice(hf, model, ids(b=1), False))


def test_prompt_lookup_decoding_equals_hf(pair):
    """Assisted (prompt-lookup) decoding verifies several drafted tokens in one call and crops the cache
    back to the accepted ones: the Mamba layers must keep the states HF keeps for that crop. Releases that
    refuse assisted decoding for Nemotron-H (before 5.25) refuse it with every point observed too."""
    hf, model = pair
    x = torch.cat([ids(b=1, p=6), ids(b=1, p=3)], dim=1)  # ends on a 3-gram seen before: drafts to verify
    lookup = dict(prompt_lookup_num_tokens=3)
    try:
        want = generate_twice(hf, model, x, observe=False, **lookup)
    except ValueError as refused:
        with pytest.raises(ValueError, match=re.escape(str(refused)[:60])):
            generate_twice(hf, model, x, observe=True, **lookup)
        return
    assert_same(generate_twice(hf, model, x, observe=True, **lookup), want)
    # dt written back unchanged (a copy): the instrumented scan, with the drafted tokens stepped one by one
    # and their states kept for the crop as HF keeps them, must give HF's numbers exactly
    mamba = [i for i, t in enumerate(model.layer_types) if t == "mamba"]
    rewrite = [(f"blocks.{i}.mamba.hook_dt", lambda dt, hook: dt.clone()) for i in mamba]
    assert_same(generate_twice(hf, model, x, observe=False, hooks=rewrite, **lookup), want)
