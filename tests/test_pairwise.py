"""p × p maps computed from per-token points (``nemo_explore.pairwise``) equal the hook points bit for bit.

The reference is what ``run_with_cache`` caches for ``hook_pattern`` / ``hook_hidden_attn`` (themselves
tested against HF's eager attention and a naive SSD in test_parity / test_ssd); the maps under test are
computed from ``hook_q``/``hook_k`` and ``hook_dt``/``hook_B``/``hook_C`` of another run, one batch row at a
time, for windows of rows, keys and heads, on padded batches and on inputs longer than a block of rows.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from models import random_model

import nemo_explore as ne
from nemo_explore.pairwise import (
    PER_TOKEN,
    HiddenAttentionFromSSM,
    PatternFromQK,
    StoredMaps,
    available,
    pairwise_maps,
)

MAPS = ("hook_pattern", "hook_hidden_attn")
PARTS = tuple(p.split(".")[1] for kind in PER_TOKEN.values() for p in kind)


@pytest.fixture(scope="module")
def model():
    return ne.HookedNemotronH(random_model("M*EM*", seed=3))


def runs(model, ids, mask=None):
    """(a cache of the maps themselves, a cache of the per-token points only)."""
    _, full = model.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n.endswith(MAPS))
    _, small = model.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n.endswith(PARTS))
    return full, small


def test_whole_maps_equal_the_hook_points_on_a_padded_batch(model):
    ids = torch.randint(0, model.cfg.d_vocab, (3, 150))
    mask = torch.ones(3, 150, dtype=torch.long)
    mask[1, :37] = 0  # left padding
    mask[2, 121:] = 0  # right padding: the batch's rows see keys this row does not
    full, small = runs(model, ids, mask)
    for i in model.layers("attention") + model.layers("mamba"):
        for b, (lo, hi) in enumerate([(0, 150), (37, 150), (0, 121)]):
            ref, got = pairwise_maps(full, i, b), pairwise_maps(small, i, b)
            assert isinstance(ref, StoredMaps)
            kind = PatternFromQK if i in model.layers("attention") else HiddenAttentionFromSSM
            assert isinstance(got, kind)
            # padding rows: HF's choice there is not a pattern anyone reads
            assert torch.equal(got.window(lo, hi, 0, 150), ref.window(lo, hi, 0, 150)), (i, b)


def test_any_window_equals_the_slice_of_the_whole_map(model):
    ids = torch.randint(0, model.cfg.d_vocab, (1, 333))  # several aligned blocks of rows, and a part one
    full, small = runs(model, ids)
    rng = random.Random(0)
    for i in model.layers("attention") + model.layers("mamba"):
        ref, got = pairwise_maps(full, i), pairwise_maps(small, i)
        h = got.n_heads
        for _ in range(12):
            s = rng.randrange(333)
            e = rng.randrange(s + 1, 334)
            ks = rng.randrange(333)
            ke = rng.randrange(ks + 1, 334)
            heads = rng.choice([None, rng.randrange(h), [h - 1, 0]])
            assert torch.equal(got.window(s, e, ks, ke, heads), ref.window(s, e, ks, ke, heads)), (i, s, e)


def test_a_window_equals_the_hook_point_run_for_those_rows(model):
    """The views' rows equal what run_with_cache gives for that window (same function, same blocks)."""
    ids = torch.randint(0, model.cfg.d_vocab, (1, 200))
    _, small = runs(model, ids)
    a, m = model.layers("attention")[0], model.layers("mamba")[0]
    _, ref = model.run_with_cache(
        ids, names_filter=lambda n: n.endswith(MAPS), pattern_window=(70, 141), hidden_attn_window=(70, 141)
    )
    pattern, hidden = ref[f"blocks.{a}.attn.hook_pattern"][0], ref[f"blocks.{m}.mamba.hook_hidden_attn"][0]
    assert torch.equal(small.pairwise(a).window(70, 141), pattern.float())
    assert torch.equal(small.pairwise(m).window(70, 141), hidden.float())
    stored = pairwise_maps(ref, a)
    assert stored.rows == (70, 141)
    assert torch.equal(stored.window(100, 120, 5, 9), small.pairwise(a).window(100, 120, 5, 9))


def test_a_one_row_block_with_and_without_autograd_gives_the_same_bits(model):
    """A last block of one row (the rounding of a float32 product of one row depends on where it is
    written), for any heads, and the pattern a hook sees with autograd on (steps out of place)."""
    ids = torch.randint(0, model.cfg.d_vocab, (1, 161))
    full, small = runs(model, ids)
    a = model.layers("attention")[0]
    ref, got = pairwise_maps(full, a), pairwise_maps(small, a)
    for heads in (None, 0, [1, 0], [got.n_heads - 1]):
        assert torch.equal(got.window(150, 161, 0, 161, heads), ref.window(150, 161, 0, 161, heads)), heads
    seen = {}

    def look(pattern, hook):
        seen.update(grad=pattern.requires_grad, pattern=pattern.detach().clone())

    assert torch.is_grad_enabled()
    model.run_with_hooks(ids, fwd_hooks=[(f"blocks.{a}.attn.hook_pattern", look)])
    assert seen["grad"] and torch.equal(seen["pattern"][0], ref.window(0, 161))


def test_pooled_overview_is_block_means(model):
    ids = torch.randint(0, model.cfg.d_vocab, (1, 300))
    full, small = runs(model, ids)
    m = model.layers("mamba")[1]
    whole = pairwise_maps(full, m).window(0, 300, 0, 300, 2)
    low, rows = small.pairwise(m).pooled(0, 300, 0, 300, 2, 64)
    want = F.adaptive_avg_pool2d(whole[None, None], (64, 64))[0, 0]
    assert rows == 6 and low.shape == (64, 64)  # adaptive pooling's bins: 5 or 6 rows
    torch.testing.assert_close(low, want, rtol=1e-5, atol=1e-7)
    # a sub-rectangle, shares of each row, and a budget that makes each bin's mean a run of rows at its centre
    share = lambda r: r.abs() / r.abs().sum(-1, keepdim=True)  # noqa: E731
    low, _ = small.pairwise(m).pooled(100, 300, 0, 300, 2, 40, transform=share)
    want = F.adaptive_avg_pool2d(share(whole[100:300])[None, None], (40, 40))[0, 0]
    torch.testing.assert_close(low, want, rtol=1e-5, atol=1e-7)
    import nemo_explore.pairwise as pw

    budget, pw.POOLED_ENTRIES = pw.POOLED_ENTRIES, 2 * 30 * 300
    try:
        low, rows = small.pairwise(m).pooled(0, 300, 0, 300, 2, 30)  # 10 rows a bin, 2 of them kept
    finally:
        pw.POOLED_ENTRIES = budget
    assert rows == 2
    centre = torch.stack([whole[10 * j + 4 : 10 * j + 6].mean(0) for j in range(30)])
    torch.testing.assert_close(low, F.adaptive_avg_pool1d(centre[None], 30)[0], rtol=1e-5, atol=1e-7)


def test_what_is_missing_is_named(model):
    ids = torch.randint(0, model.cfg.d_vocab, (2, 20))
    a = model.layers("attention")[0]
    _, cache = model.run_with_cache(ids, names_filter=f"blocks.{a}.attn.hook_q")
    assert not available(cache, a) and not available(cache, model.layers("moe")[0])
    with pytest.raises(ValueError, match=rf"missing: blocks\.{a}\.attn\.hook_k\).*names_filter="):
        pairwise_maps(cache, a)
    with pytest.raises(ValueError, match=r"is a moe layer: p × p maps exist for attention and Mamba"):
        pairwise_maps(cache, model.layers("moe")[0])
    _, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith(PARTS))
    with pytest.raises(IndexError, match="batch=2 out of range"):
        pairwise_maps(cache, a, batch=2)
    with pytest.raises(IndexError, match=r"outside the 0\.\.19 × 0\.\.19"):
        cache.pairwise(a).window(5, 21)
    cache.model = None  # a cache without its model cannot compute the map
    with pytest.raises(ValueError, match="missing: the model"):
        pairwise_maps(cache, a)
    m = model.layers("mamba")[0]
    _, some = model.run_with_cache(ids, names_filter=lambda n: n.endswith(MAPS), hidden_attn_heads=[1])
    with pytest.raises(ValueError, match=r"hidden_attn_heads=\[1\] only"):
        pairwise_maps(some, m)
