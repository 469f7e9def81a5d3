"""The derived Mamba points against HF itself: state norms and states against the recurrent state HF holds
in its cache after a forward over each prefix; hidden attention against HF's scan output; state patching
against continuing HF from a cache whose state was replaced."""

import dataclasses

import pytest
import torch
from models import random_model

import nemo_explore as ne
from nemo_explore.mirror.versions import cache_keyword


@pytest.fixture(scope="module")
def pair():
    hf = random_model("M*ME", seed=11, chunk_size=5)
    return hf, ne.HookedNemotronH(hf)


def ids(b=2, p=13, seed=0):
    return torch.randint(3, 97, (b, p), generator=torch.Generator().manual_seed(seed))


def hf_state_after(hf, x, t, layer):
    """The recurrent state HF's own chunked path leaves in its cache after the prefix x[:, :t+1]."""
    out = hf(x[:, : t + 1], use_cache=True)
    return out.past_key_values.get_recurrent_state(layer).clone()


def test_state_norms_and_states_equal_hf_cache_after_each_prefix(pair):
    hf, model = pair
    x = ids()
    names = ["blocks.0.mamba.hook_state_norm", "blocks.2.mamba.hook_state_norm", "blocks.2.mamba.hook_state"]
    logits, cache = model.run_with_cache(x, names_filter=names)
    assert torch.equal(logits, hf(x).logits)  # observing derived points never perturbs
    assert cache.state_positions == list(range(13))
    for t in [0, 3, 4, 7, 12]:  # chunk_size 5: inside, at and across chunk boundaries
        for layer in (0, 2):
            ref = hf_state_after(hf, x, t, layer)  # b h d n
            norms = cache[f"blocks.{layer}.mamba.hook_state_norm"][:, t]
            torch.testing.assert_close(norms, ref.flatten(2).norm(dim=-1), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(
            cache["blocks.2.mamba.hook_state"][:, t], hf_state_after(hf, x, t, 2), rtol=1e-4, atol=1e-6
        )


def test_hidden_attention_reproduces_ssm_out_and_is_causal(pair):
    hf, model = pair
    x = ids()
    _, cache = model.run_with_cache(x, names_filter=lambda n: n.startswith("blocks.0.mamba."))
    M = cache["blocks.0.mamba.hook_hidden_attn"]  # b h q k
    xs = cache["blocks.0.mamba.hook_x"]  # b p h d
    D = hf.model.layers[0].mixer.D
    y = torch.einsum("bhqk,bkhd->bqhd", M, xs) + D[:, None] * xs
    torch.testing.assert_close(y, cache["blocks.0.mamba.hook_ssm_out"], rtol=1e-4, atol=1e-5)
    upper = torch.ones(13, 13, dtype=torch.bool).triu(1)
    assert torch.equal(M[..., upper], torch.zeros_like(M[..., upper]))


def test_hidden_attention_heads_and_window(pair):
    _, model = pair
    x = ids()
    name = "blocks.0.mamba.hook_hidden_attn"
    _, full = model.run_with_cache(x, names_filter=[name])
    _, part = model.run_with_cache(
        x, names_filter=[name], hidden_attn_heads=[1, 5], hidden_attn_window=(4, 9)
    )
    torch.testing.assert_close(part[name], full[name][:, [1, 5], 4:9], rtol=1e-5, atol=1e-6)


def test_read_only_points_refuse_writes(pair):
    _, model = pair
    for point in ("hook_state_norm", "hook_hidden_attn"):
        with pytest.raises(ne.ReadOnlyHookError, match=f"blocks.0.mamba.{point} is read-only"):
            model.run_with_hooks(ids(), fwd_hooks=[(f"blocks.0.mamba.{point}", lambda t, h: t * 2)])
    model.run_with_hooks(
        ids(), fwd_hooks=[("blocks.0.mamba.hook_state_norm", lambda t, h: t)]
    )  # observing ok


def test_state_patching_equals_feeding_hf_that_state(pair):
    hf, model = pair
    x, other = ids(seed=1), ids(seed=2)
    t, layer = 6, 2
    # a state of realistic size (this random model's own states are ~1e-6): another prompt's, plus noise
    donor = hf_state_after(hf, other, t, layer)
    donor = donor + torch.randn(donor.shape, generator=torch.Generator().manual_seed(3))
    # reference: HF over the prefix, the cache's state replaced, then HF continues from that cache
    prefix = hf(x[:, : t + 1], use_cache=True)
    cache = prefix.past_key_values
    cache.update_recurrent_state(donor.clone(), layer_idx=layer)
    rest = hf(x[:, t + 1 :], use_cache=True, **{cache_keyword(hf): cache})
    ref = torch.cat([prefix.logits, rest.logits], dim=1)

    got = model.run_with_hooks(
        x, fwd_hooks=[(f"blocks.{layer}.mamba.hook_state", lambda s, h: donor[:, None])], state_positions=[t]
    )
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert torch.equal(got[:, : t + 1], hf(x).logits[:, : t + 1])  # nothing before the patch moved
    assert not torch.allclose(got[:, t + 1 :], hf(x).logits[:, t + 1 :], atol=1e-3)


def test_state_positions_validation(pair):
    _, model = pair
    for bad in ([40], [], -14):
        with pytest.raises(IndexError, match="out of range"):
            model.run_with_cache(ids(), names_filter=["blocks.0.mamba.hook_state"], state_positions=bad)
    _, cache = model.run_with_cache(
        ids(), names_filter=["blocks.0.mamba.hook_state"], state_positions=[-1, 2]
    )
    assert cache.state_positions == [2, 12] and cache["blocks.0.mamba.hook_state"].shape[1] == 2


def test_options_of_an_outer_context_shape_the_cache_and_say_so(pair):
    """Options nest: those of a ``hooks()`` context apply to a ``run_with_cache`` inside it, and the cache
    carries the options its points were made with (one immutable ``RunOptions``), not only the call's."""
    _, model = pair
    x = ids()
    name = "blocks.2.mamba.hook_state"
    with model.hooks(state_positions=[3, 7]):
        _, inner = model.run_with_cache(x, names_filter=[name], hidden_attn_heads=[1])
    assert inner[name].shape[1] == 2 and inner.state_positions == [3, 7]
    assert inner.options == ne.RunOptions(state_positions=[3, 7], hidden_attn_heads=[1])
    _, alone = model.run_with_cache(x, names_filter=[name])
    assert alone.state_positions == list(range(13)) and alone.options == ne.RunOptions()
    torch.testing.assert_close(inner[name], alone[name][:, [3, 7]], rtol=1e-6, atol=1e-7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        inner.options.state_positions = [1]
    with pytest.raises(TypeError, match="unknown option 'state_position'. Did you mean 'state_positions'"):
        model.run_with_cache(x, names_filter=[name], state_position=[1])
