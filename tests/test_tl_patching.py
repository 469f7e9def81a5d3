"""TransformerLens' ``patching`` functions (``nemo_explore.patching``): the grid of each equals one
corrupted run per index with that index copied from the clean cache by hand; blocks without the point are
NaN rows."""

from __future__ import annotations

import math

import pytest
import torch
from models import random_model

import nemo_explore as ne
from nemo_explore import patching

P = 6


@pytest.fixture(scope="module")
def setup():
    model = ne.HookedNemotronH(random_model("M*EM-", seed=4))
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(3, model.cfg.d_vocab, (1, P), generator=gen)
    corrupted = torch.randint(3, model.cfg.d_vocab, (1, P), generator=gen)
    _, cache = model.run_with_cache(clean)
    return model, clean, corrupted, cache


def metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[0, -1, 5] - logits[0, -1, 7]


def by_hand(model, corrupted, cache, name, where) -> float:
    def hook(value, hook):
        value = value.clone()
        value[where] = cache[name][where]
        return value

    with torch.no_grad():
        return float(metric(model.run_with_hooks(corrupted, [(name, hook)])))


def rows_with_values(grid: torch.Tensor) -> list[int]:
    return [i for i in range(grid.shape[0]) if not torch.isnan(grid[i]).all()]


def test_grids_equal_one_patched_run_per_index(setup):
    model, clean, corrupted, cache = setup
    attn, mamba, moe = model.layers("attention")[0], model.layers("mamba")[1], model.layers("moe")[0]
    all_ = slice(None)
    checks = [
        (patching.get_act_patch_resid_pre, (model.n_layers, P), None, "blocks.2.hook_resid_pre", (2, 3),
         (all_, 3)),
        (patching.get_act_patch_attn_out, (model.n_layers, P), [attn], f"blocks.{attn}.hook_mixer_out",
         (attn, 4), (all_, 4)),
        (patching.get_act_patch_mlp_out, (model.n_layers, P), model.layers("mlp") + [moe],
         f"blocks.{moe}.hook_mixer_out", (moe, 1), (all_, 1)),
        (patching.get_act_patch_mamba_out, (model.n_layers, P), model.layers("mamba"),
         f"blocks.{mamba}.hook_mixer_out", (mamba, 5), (all_, 5)),
        (patching.get_act_patch_attn_head_out_by_pos, (model.n_layers, P, model.cfg.n_heads), [attn],
         f"blocks.{attn}.attn.hook_z", (attn, 5, 2), (all_, 5, 2)),
        (patching.get_act_patch_attn_head_out_all_pos, (model.n_layers, model.cfg.n_heads), [attn],
         f"blocks.{attn}.attn.hook_z", (attn, 1), (all_, all_, 1)),
        (patching.get_act_patch_attn_head_k_all_pos, (model.n_layers, model.cfg.n_key_value_heads), [attn],
         f"blocks.{attn}.attn.hook_k", (attn, 0), (all_, all_, 0)),
        (patching.get_act_patch_attn_head_pattern_by_pos, (model.n_layers, P, model.cfg.n_heads), [attn],
         f"blocks.{attn}.attn.hook_pattern", (attn, 4, 3), (all_, 3, 4)),
        (patching.get_act_patch_mamba_head_out_all_pos, (model.n_layers, model.cfg.mamba_num_heads),
         model.layers("mamba"), f"blocks.{mamba}.mamba.hook_ssm_out", (mamba, 2), (all_, all_, 2)),
        (patching.get_act_patch_moe_routing_by_pos, (model.n_layers, P), [moe],
         f"blocks.{moe}.moe.hook_topk_indices", (moe, 5), (all_, 5)),
    ]  # fmt: skip
    for fn, shape, rows, name, index, where in checks:
        grid = fn(model, corrupted, cache, metric)
        assert grid.shape == shape, fn.__name__
        assert rows_with_values(grid) == sorted(rows or range(model.n_layers)), fn.__name__
        assert grid[index] == pytest.approx(by_hand(model, corrupted, cache, name, where), abs=0), fn.__name__
    with torch.no_grad():
        restored = float(metric(model(clean)))
    resid = patching.get_act_patch_resid_pre(model, corrupted, cache, metric)
    assert resid[0, -1] != resid[0, 0] and not math.isnan(resid[0, 0])
    # block 0's stream at every position is the clean input: patched whole, the clean metric comes back
    whole = by_hand(model, corrupted, cache, "blocks.0.hook_resid_pre", (all_, all_))
    assert whole == pytest.approx(restored)


def test_stacked_grids_and_what_does_not_exist(setup):
    model, clean, corrupted, cache = setup
    every = patching.get_act_patch_block_every(model, corrupted, cache, metric)
    assert every.shape == (3, model.n_layers, P)
    assert torch.equal(every[0], patching.get_act_patch_resid_pre(model, corrupted, cache, metric))
    heads = patching.get_act_patch_attn_head_all_pos_every(model, corrupted, cache, metric)
    assert heads.shape == (3, model.n_layers, model.cfg.n_heads)
    with pytest.raises(NotImplementedError, match="no resid_mid"):
        patching.get_act_patch_resid_mid(model, corrupted, cache, metric)
    _, partial = model.run_with_cache(clean, names_filter=lambda n: "resid" in n)
    with pytest.raises(KeyError, match=r"clean_cache lacks blocks\.\d+\.attn\.hook_z"):
        patching.get_act_patch_attn_head_out_all_pos(model, corrupted, partial, metric)


def test_with_a_key_per_query_head_every_stacks_all_five_as_tl(setup):
    """Under TL's ungroup_grouped_query_attention, k and v have a head per query head: their grids are
    (n_layers, n_heads), each entry a run with that query head's copy patched by hand, and *_every stacks
    z, q, k, v, pattern as TL does."""
    model, clean, corrupted, _ = setup
    attn = model.layers("attention")[0]
    model.set_ungroup_grouped_query_attention(True)
    try:
        _, cache = model.run_with_cache(clean)
        k = patching.get_act_patch_attn_head_k_all_pos(model, corrupted, cache, metric)
        assert k.shape == (model.n_layers, model.cfg.n_heads)
        name = f"blocks.{attn}.attn.hook_k"
        for head in (0, 1):  # two query heads that share a KV head: patched apart, they differ
            assert k[attn, head] == pytest.approx(
                by_hand(model, corrupted, cache, name, (slice(None), slice(None), head)), abs=0
            )
        assert k[attn, 0] != k[attn, 1]
        every = patching.get_act_patch_attn_head_all_pos_every(model, corrupted, cache, metric)
        assert every.shape == (5, model.n_layers, model.cfg.n_heads)
        assert torch.allclose(every[2], k, equal_nan=True, rtol=0, atol=0)
    finally:
        model.set_ungroup_grouped_query_attention(False)
