"""Writes flow downstream exactly as the equivalent edit of the HF model; hooks always come off."""

import copy

import pytest
import torch
from models import random_model

import nemo_explore as ne
from nemo_explore.core.points import row
from nemo_explore.mirror.mixers.moe import routing_weights


@pytest.fixture(scope="module")
def pair():
    hf = random_model("M*-EM", seed=4)
    return hf, ne.HookedNemotronH(hf)


def ids(b=2, p=13, seed=0):
    return torch.randint(3, 97, (b, p), generator=torch.Generator().manual_seed(seed))


def hf_with(hf, module, hook, pre=False):
    """Run HF with one plain torch hook: the 'equivalent edit' a test compares against."""
    h = module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook)
    return h


def run_edited(hf, x, module, hook, pre=False):
    h = hf_with(hf, module, hook, pre)
    try:
        return hf(x).logits
    finally:
        h.remove()


def test_zero_mixer_out_equals_zeroing_hf_mixer(pair):
    hf, model = pair
    x = ids()
    got = model.run_with_hooks(
        x, fwd_hooks=[("blocks.1.hook_mixer_out", lambda t, hook: torch.zeros_like(t))]
    )
    ref = run_edited(hf, x, hf.model.layers[1].mixer, lambda m, a, out: (torch.zeros_like(out[0]), out[1]))
    assert torch.equal(got, ref)
    assert not torch.equal(got, hf(x).logits)


def test_resid_pre_write(pair):
    hf, model = pair
    x = ids()
    got = model.run_with_hooks(x, fwd_hooks=[("blocks.2.hook_resid_pre", lambda t, hook: t * 0.5)])
    ref = run_edited(hf, x, hf.model.layers[2], lambda m, a: (a[0] * 0.5,), pre=True)
    assert torch.equal(got, ref)


def test_pattern_write_changes_z(pair):
    hf, model = pair
    x = ids()
    b, p = x.shape
    uniform = torch.tril(torch.ones(p, p)) / torch.arange(1, p + 1)[:, None]
    cache = {}
    got = model.run_with_hooks(
        x,
        fwd_hooks=[
            ("blocks.1.attn.hook_pattern", lambda t, hook: uniform.expand_as(t).clone()),
            ("blocks.1.attn.hook_v", lambda t, hook: cache.update(v=t)),
            ("blocks.1.attn.hook_z", lambda t, hook: cache.update(z=t)),
        ],
    )
    # independent: z = mean of the values seen so far, per head (GQA: head j reads kv head j // 2)
    v = cache["v"].repeat_interleave(2, dim=2)  # b p h d
    z_ref = torch.cumsum(v, dim=1) / torch.arange(1, p + 1)[None, :, None, None]
    torch.testing.assert_close(cache["z"], z_ref, rtol=1e-5, atol=1e-6)
    attn = hf.model.layers[1].mixer
    ref = run_edited(hf, x, attn, lambda m, a, out: (attn.o_proj(z_ref.reshape(b, p, -1)), None))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_pattern_rewritten_as_itself_matches_eager(pair):
    hf, model = pair
    x = ids()
    got = model.run_with_hooks(x, fwd_hooks=[("blocks.1.attn.hook_pattern", lambda t, hook: t.clone())])
    eager = copy.deepcopy(hf)
    eager.config._attn_implementation = "eager"
    torch.testing.assert_close(got, eager(x).logits, rtol=0, atol=1e-5)


def test_scores_write_flows_through_softmax(pair):
    hf, model = pair
    x = ids()
    seen = {}

    def mask_first_key(t, hook):
        t = t.clone()
        t[..., 1:, 0] = float("-inf")
        return t

    model.run_with_hooks(
        x,
        fwd_hooks=[
            ("blocks.1.attn.hook_attn_scores", mask_first_key),
            ("blocks.1.attn.hook_pattern", lambda t, hook: seen.update(p=t)),
        ],
    )
    assert torch.equal(seen["p"][..., 1:, 0], torch.zeros_like(seen["p"][..., 1:, 0]))
    torch.testing.assert_close(seen["p"].sum(-1), torch.ones_like(seen["p"].sum(-1)))


def test_pattern_window_rows_equal_the_full_patterns_rows(pair):
    hf, model = pair
    x = ids(p=13)
    names = ["blocks.1.attn.hook_pattern", "blocks.1.attn.hook_attn_scores"]
    logits, full = model.run_with_cache(x, names_filter=names)
    got_logits, part = model.run_with_cache(x, names_filter=names, pattern_window=(9, 13))
    assert torch.equal(got_logits, logits) and part.pattern_window == (9, 13)
    for n in names:
        assert part[n].shape == (2, 4, 4, 13)
        torch.testing.assert_close(part[n], full[n][:, :, 9:13], rtol=0, atol=1e-6)


def test_pattern_window_write_changes_only_its_rows(pair):
    """Zeroing the window's pattern rows equals HF with those query positions' z zeroed: the other rows
    keep HF's own attention output."""
    hf, model = pair
    x = ids(p=13)
    got = model.run_with_hooks(
        x, fwd_hooks=[("blocks.1.attn.hook_pattern", lambda t, hook: t * 0)], pattern_window=(5, 9)
    )

    def zero_rows(m, args):
        z = args[0].clone()
        z[:, 5:9] = 0
        return (z,)

    assert torch.equal(got, run_edited(hf, x, hf.model.layers[1].mixer.o_proj, zero_rows, pre=True))
    # a write through the scores: the same rows, via softmax, and nothing else
    def mask_first_key(t, hook):
        t = t.clone()
        t[..., 0] = float("-inf")
        return t

    seen = {}
    windowed = model.run_with_hooks(
        x,
        fwd_hooks=[
            ("blocks.1.attn.hook_attn_scores", mask_first_key),
            ("blocks.1.attn.hook_z", lambda t, hook: seen.update(z=t)),
        ],
        pattern_window=(5, 9),
    )
    full_rows = {}

    def mask_rows(t, hook):
        t = t.clone()
        t[..., 5:9, 0] = float("-inf")
        return t

    everywhere = model.run_with_hooks(
        x,
        fwd_hooks=[
            ("blocks.1.attn.hook_attn_scores", mask_rows),
            ("blocks.1.attn.hook_z", lambda t, hook: full_rows.update(z=t)),
        ],
    )
    torch.testing.assert_close(seen["z"], full_rows["z"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(windowed, everywhere, rtol=1e-5, atol=1e-5)


def test_pattern_window_during_generation(pair):
    """The window cuts the prompt's rows; a decoding step's one row is always given whole."""
    hf, model = pair
    x = ids(b=1, p=9, seed=2)
    shapes = []
    with model.hooks([("blocks.1.attn.hook_pattern", lambda t, hook: shapes.append(tuple(t.shape)))],
                     pattern_window=(6, 9)):
        out = model.generate(x, max_new_tokens=3)
    assert torch.equal(out, hf.generate(x, max_new_tokens=3, do_sample=False, pad_token_id=0))
    assert shapes == [(1, 4, 3, 9), (1, 4, 1, 10), (1, 4, 1, 11)]


def test_bad_options_are_named(pair):
    _, model = pair
    x = ids(p=13)
    with pytest.raises(IndexError, match=r"pattern_window \(9, 20\) must satisfy 0 <= start < stop <= 13"):
        model.run_with_cache(x, names_filter="blocks.1.attn.hook_pattern", pattern_window=(9, 20))
    with pytest.raises(ValueError, match="pattern_window must be a pair"):
        model.run_with_cache(x, names_filter="blocks.1.attn.hook_pattern", pattern_window=9)
    with pytest.raises(TypeError, match="unknown option 'pattern_windw'. Did you mean 'pattern_window'"):
        model.run_with_cache(x, pattern_windw=(0, 4))
    with pytest.raises(TypeError, match="unknown option 'state_position'. Did you mean 'state_positions'"):
        model.run_with_hooks(x, state_position=3)


def test_forced_routing_equals_hf_router_edit(pair):
    hf, model = pair
    x = ids()
    b, p = x.shape
    router = hf.model.layers[3].mixer.gate
    forced = torch.tensor([4, 1]).expand(b, p, 2).clone()
    cache = {}
    got = model.run_with_hooks(
        x,
        fwd_hooks=[
            ("blocks.3.moe.hook_topk_indices", lambda t, hook: forced),
            ("blocks.3.moe.hook_topk_weights", lambda t, hook: cache.update(w=t)),
            ("blocks.3.moe.hook_router_scores", lambda t, hook: cache.update(s=t)),
        ],
    )

    def force(m, a, out):
        logits = out[0]
        scores = logits.sigmoid()
        w = scores.gather(1, forced.reshape(b * p, 2))
        w = w / (w.sum(-1, keepdim=True) + 1e-20) * router.routed_scaling_factor  # the test's own rule
        return logits, w, forced.reshape(b * p, 2)

    ref = run_edited(hf, x, router, force)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    s = cache["s"][..., [4, 1]]
    torch.testing.assert_close(cache["w"], s / s.sum(-1, keepdim=True) * router.routed_scaling_factor)
    assert not torch.allclose(got, hf(x).logits)


def test_topk_weights_override_after_forcing(pair):
    hf, model = pair
    x = ids()
    half = model.run_with_hooks(x, fwd_hooks=[("blocks.3.moe.hook_topk_weights", lambda t, hook: t * 0)])
    zero_routed = model.run_with_hooks(x, fwd_hooks=[("blocks.3.moe.hook_routed_out", lambda t, h: t * 0)])
    torch.testing.assert_close(half, zero_routed, rtol=0, atol=1e-6)


def test_dt_write_equals_changing_dt_bias(pair):
    hf, model = pair
    x = ids()
    mixer = hf.model.layers[0].mixer
    raw = {}

    def new_dt(t, hook):
        dt_raw = raw["in_proj"][..., -mixer.num_heads :]
        return torch.nn.functional.softplus(dt_raw + (mixer.dt_bias + 0.7)).clamp(
            min=mixer.time_step_limit[0]
        )

    got = model.run_with_hooks(
        x,
        fwd_hooks=[
            ("blocks.0.mamba.hook_in_proj", lambda t, h: raw.update(in_proj=t)),
            ("blocks.0.mamba.hook_dt", new_dt),
        ],
    )
    edited = copy.deepcopy(hf)
    with torch.no_grad():
        edited.model.layers[0].mixer.dt_bias += 0.7
    torch.testing.assert_close(got, edited(x).logits, rtol=0, atol=1e-6)
    assert not torch.allclose(got, hf(x).logits)


def test_ssm_out_write_equals_editing_norm_input(pair):
    hf, model = pair
    x = ids()
    b, p = x.shape

    def zero_head(t, hook):
        t = t.clone()
        t[:, :, 3] = 0
        return t

    got = model.run_with_hooks(x, fwd_hooks=[("blocks.4.mamba.hook_ssm_out", zero_head)])
    mixer = hf.model.layers[4].mixer

    def pre(m, args):
        y = args[0].clone().view(b, p, mixer.num_heads, -1)
        y[:, :, 3] = 0
        return (y.view(b, p, -1), *args[1:])

    assert torch.equal(got, run_edited(hf, x, mixer.norm, pre, pre=True))


def test_mlp_post_write(pair):
    hf, model = pair
    x = ids()
    got = model.run_with_hooks(x, fwd_hooks=[("blocks.2.mlp.hook_post", lambda t, h: t.clamp(max=0.01))])
    ref = run_edited(
        hf, x, hf.model.layers[2].mixer.down_proj, lambda m, a: (a[0].clamp(max=0.01),), pre=True
    )
    assert torch.equal(got, ref)


def attached(hf):
    """Everything a hook could have left on the HF model."""
    left = []
    for name, m in hf.named_modules():
        if (
            m._forward_hooks
            or m._forward_pre_hooks
            or "forward" in m.__dict__
            or "_old_forward" in m.__dict__
        ):
            left.append(name)
    return left


def test_raising_hook_leaves_nothing_behind_and_no_weight_changed(pair):
    hf, model = pair
    before = {k: v.clone() for k, v in hf.state_dict().items()}

    def boom(t, hook):
        raise RuntimeError("boom")

    # every point that may be written (the derived hook_state too: cheap at this length), the last one raising
    names = [n for n in model.hook_names() if row(n).writable]
    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(
            ids(),
            fwd_hooks=[(n, lambda t, h: t * 1.5 if t.is_floating_point() else t.clone()) for n in names[:-1]]
            + [(names[-1], boom)],
        )
    assert attached(hf) == [] and model._installed == {}
    assert all(torch.equal(before[k], v) for k, v in hf.state_dict().items())
    assert torch.equal(model(ids()), hf(ids()).logits)


def test_contexts_nest_and_remove_only_their_own(pair):
    hf, model = pair
    seen = []
    with model.hooks([("blocks.0.hook_resid_post", lambda t, h: seen.append("outer"))]):
        with model.hooks([("blocks.0.hook_resid_post", lambda t, h: seen.append("inner"))]):
            _, cache = model.run_with_cache(ids(), names_filter=["blocks.0.hook_resid_post"])
        assert seen == ["outer", "inner"] and "blocks.0.hook_resid_post" in cache
        model(ids())
        assert seen == ["outer", "inner", "outer"]
    model(ids())
    assert seen == ["outer", "inner", "outer"] and attached(hf) == []


def test_misspelt_name_suggests_closest(pair):
    _, model = pair
    with pytest.raises(ne.HookNameError, match=r"blocks\.1\.attn\.hook_pattern"):
        model.run_with_cache(ids(), names_filter=["blocks.1.attn.hook_patern"])


def test_wrong_kind_names_the_kind_and_nearest_point(pair):
    _, model = pair
    with pytest.raises(
        ne.HookNameError, match=r"block 0 is a mamba layer.*blocks\.0\.mamba\.hook_hidden_attn"
    ):
        model.run_with_hooks(ids(), fwd_hooks=[("blocks.0.attn.hook_pattern", lambda t, h: None)])
    with pytest.raises(
        ne.HookNameError, match=r"block 1 is an attention layer.*blocks\.1\.attn\.hook_pattern"
    ):
        model.run_with_cache(ids(), names_filter=["blocks.1.mamba.hook_hidden_attn"])


def test_wrong_layer_index(pair):
    _, model = pair
    with pytest.raises(ne.HookNameError, match="has 5 blocks"):
        model.run_with_cache(ids(), names_filter=["blocks.9.hook_resid_post"])


def test_bad_hook_return_and_bad_inputs(pair):
    _, model = pair
    with pytest.raises(ValueError, match="returned shape"):
        model.run_with_hooks(ids(), fwd_hooks=[("blocks.0.hook_resid_post", lambda t, h: t[:, :1])])
    with pytest.raises(TypeError, match="returned torch.float32 for a torch.int64 point"):
        model.run_with_hooks(ids(), fwd_hooks=[("blocks.3.moe.hook_topk_indices", lambda t, h: t * 1.0)])
    with pytest.raises(ValueError, match=r"expert ids in \[0, 6\)"):
        model.run_with_hooks(ids(), fwd_hooks=[("blocks.3.moe.hook_topk_indices", lambda t, h: t + 6)])
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 97\)"):
        model(torch.tensor([[5, 200]]))
    with pytest.raises(ValueError, match="no tokenizer"):
        model("some text")
    with pytest.raises(ne.NotNemotronHError, match="NemotronHForCausalLM"):
        ne.HookedNemotronH(torch.nn.Linear(2, 2))


def test_routing_weights_helper_matches_hf_router(pair):
    hf, _ = pair
    router = hf.model.layers[3].mixer.gate
    h = torch.randn(7, 32)
    logits, w, idx = router(h)
    torch.testing.assert_close(routing_weights(router, logits.sigmoid(), idx), w, rtol=0, atol=0)


def test_in_place_edit_is_a_write_even_for_side_computed_points(pair):
    hf, model = pair
    x = ids()

    def uniform_in_place(t, hook):
        p = t.shape[-1]
        t.copy_((torch.tril(torch.ones(p, p)) / torch.arange(1, p + 1)[:, None]).expand_as(t))

    def uniform_new(t, hook):
        p = t.shape[-1]
        return (torch.tril(torch.ones(p, p)) / torch.arange(1, p + 1)[:, None]).expand_as(t).clone()

    with torch.no_grad():
        in_place = model.run_with_hooks(x, fwd_hooks=[("blocks.1.attn.hook_pattern", uniform_in_place)])
        new = model.run_with_hooks(x, fwd_hooks=[("blocks.1.attn.hook_pattern", uniform_new)])
        assert torch.equal(in_place, new) and not torch.allclose(new, hf(x).logits)
        with pytest.raises(ne.ReadOnlyHookError):
            model.run_with_hooks(x, fwd_hooks=[("blocks.0.mamba.hook_state_norm", lambda t, h: t.mul_(2))])
