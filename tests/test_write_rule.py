"""One write rule in every grad mode (``hooks.fire``): an in-place edit in a hook is a write, exactly as
returning an edited copy is, with grad enabled, under ``torch.no_grad()`` and ``torch.inference_mode()``."""

import copy

import pytest
import torch
from models import hooked_pair

import nemo_explore as ne

GRAD_MODES = [torch.enable_grad, torch.no_grad, torch.inference_mode]
MODES = pytest.mark.parametrize("mode", GRAD_MODES, ids=lambda m: m.__name__)


@pytest.fixture(scope="module")
def pair():
    return hooked_pair("M*-EM", seed=4)  # 0 Mamba, 1 attention (4 heads, 2 KV heads), 2 MLP, 3 MoE, 4 Mamba


def ids(b=2, p=13, seed=0):
    return torch.randint(3, 97, (b, p), generator=torch.Generator().manual_seed(seed))


def hf_logits(hf, x, module, hook, pre=False):
    """HF's logits with one plain torch hook on ``module``: the hand edit a write is compared against."""
    handle = module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook)
    try:
        return hf(x).logits
    finally:
        handle.remove()


def zero_heads(heads, width):
    """A pre-hook zeroing ``heads`` (of ``width`` features each) in a module's input (b, p, h * width)."""

    def pre(module, args):
        y = args[0].clone()
        for h in heads:
            y[..., h * width : (h + 1) * width] = 0
        return (y, *args[1:])

    return pre


RAW = {}  # hook_in_proj's value, kept by every run for _dt_case


# Each case: the point, an edit made in place on the hook's tensor, and HF's logits under the same edit.
def _pattern_case(hf, x):
    return (
        "blocks.1.attn.hook_pattern",
        lambda t: t[:, 2].zero_(),
        hf_logits(hf, x, hf.model.layers[1].mixer.o_proj, zero_heads([2], 8), pre=True),
    )


def _z_case(hf, x):
    def edit(t):
        t[:, :, 1] = 0

    return (
        "blocks.1.attn.hook_z",
        edit,
        hf_logits(hf, x, hf.model.layers[1].mixer.o_proj, zero_heads([1], 8), pre=True),
    )


def _v_case(hf, x):  # KV head 1 is read by query heads 2 and 3
    def edit(t):
        t[:, :, 1] = 0

    return (
        "blocks.1.attn.hook_v",
        edit,
        hf_logits(hf, x, hf.model.layers[1].mixer.o_proj, zero_heads([2, 3], 8), pre=True),
    )


def _routing_case(hf, x):
    b, p = x.shape
    forced = torch.tensor([4, 1]).repeat(b * p, 1)
    router = hf.model.layers[3].mixer.gate

    def force(module, args, out):  # the router's weights for the forced experts, by the test's own rule
        w = out[0].sigmoid().gather(1, forced)
        return out[0], w / (w.sum(-1, keepdim=True) + 1e-20) * router.routed_scaling_factor, forced

    return (
        "blocks.3.moe.hook_topk_indices",
        lambda t: t.copy_(forced.view(b, p, 2)),
        hf_logits(hf, x, router, force),
    )


def _x_case(hf, x):  # x of Mamba head 5 zeroed: that head's scan output is zero
    def edit(t):
        t[:, :, 5] = 0

    return (
        "blocks.4.mamba.hook_x",
        edit,
        hf_logits(hf, x, hf.model.layers[4].mixer.norm, zero_heads([5], 4), pre=True),
    )


def _dt_case(hf, x):  # dt recomputed with dt_bias + 0.7 equals HF with that bias (needs hook_in_proj)
    mixer = hf.model.layers[0].mixer

    def edit(t):
        dt = torch.nn.functional.softplus(RAW["in_proj"][..., -mixer.num_heads :] + (mixer.dt_bias + 0.7))
        t.copy_(dt.clamp(min=mixer.time_step_limit[0]))

    edited = copy.deepcopy(hf)
    with torch.no_grad():
        edited.model.layers[0].mixer.dt_bias += 0.7
    return "blocks.0.mamba.hook_dt", edit, edited(x).logits


def _post_case(hf, x):
    return (
        "blocks.2.mlp.hook_post",
        lambda t: t.clamp_(max=0.01),
        hf_logits(hf, x, hf.model.layers[2].mixer.down_proj, lambda m, a: (a[0].clamp(max=0.01),), pre=True),
    )


def _resid_case(hf, x):
    return (
        "blocks.3.hook_resid_post",
        lambda t: t.mul_(0.5),
        hf_logits(hf, x, hf.model.layers[3], lambda m, a, out: out * 0.5),
    )


CASES = {
    "attn.hook_pattern": _pattern_case,
    "attn.hook_z": _z_case,
    "attn.hook_v": _v_case,
    "moe.hook_topk_indices": _routing_case,
    "mamba.hook_x": _x_case,
    "mamba.hook_dt": _dt_case,
    "mlp.hook_post": _post_case,
    "hook_resid_post": _resid_case,
}
# A written pattern makes z = pattern · v explicit (mixers/attention.py): equal to SDPA's z up to rounding.
ROUNDED = {"attn.hook_pattern"}


@pytest.mark.parametrize(
    ("case", "mode"),
    [pytest.param(case, mode, id=f"{case}-{mode.__name__}") for case in CASES for mode in GRAD_MODES],
)
def test_in_place_edit_equals_returning_a_copy_and_the_hand_edit(pair, case, mode):
    hf, model = pair
    x = ids()
    keep_in_proj = ("blocks.0.mamba.hook_in_proj", lambda t, hook: RAW.update(in_proj=t))
    with mode():
        name, edit, want = CASES[case](hf, x)

        def in_place(t, hook):
            edit(t)

        def in_place_returned(t, hook):
            edit(t)
            return t

        def returning_a_copy(t, hook):
            t = t.clone()
            edit(t)
            return t

        runs = [
            model.run_with_hooks(x, fwd_hooks=[keep_in_proj, (name, fn)])
            for fn in (in_place, in_place_returned, returning_a_copy)
        ]
        plain = hf(x).logits
    assert not torch.allclose(runs[2], plain)  # the edit matters
    assert torch.equal(runs[0], runs[2]) and torch.equal(runs[1], runs[2])
    if case in ROUNDED:
        torch.testing.assert_close(runs[0], want, rtol=0, atol=1e-6)
    else:
        assert torch.equal(runs[0], want)


def test_a_hook_holds_the_tensor_that_flows_on_with_grad_enabled(pair):
    """Its gradient (``retain_grad``) is the gradient at the point; an in-place edit keeps its gradient."""
    _, model = pair
    x = ids()
    kept = {}

    def keep(t, hook):
        t.retain_grad()
        kept[hook.name] = t

    names = [
        "blocks.1.attn.hook_q",
        "blocks.1.attn.hook_z",
        "blocks.4.mamba.hook_x",
        "blocks.3.moe.hook_router_scores",
        "blocks.3.hook_resid_post",
    ]
    model.run_with_hooks(x, fwd_hooks=[(n, keep) for n in names], return_type="loss").backward()
    for name in names:
        assert kept[name].grad is not None and kept[name].grad.any(), name
    grads = []
    for fn in (lambda t, h: t.mul_(0.5), lambda t, h: t * 0.5):
        model.hf_model.zero_grad()
        model.run_with_hooks(x, fwd_hooks=[("blocks.1.attn.hook_pattern", fn)], return_type="loss").backward()
        grads.append([p.grad.clone() for p in model.hf_model.parameters() if p.grad is not None])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    model.hf_model.zero_grad(set_to_none=True)


@MODES
def test_observing_hooks_leave_logits_bit_identical(pair, mode):
    hf, model = pair
    x = ids()
    with mode():
        want = hf(x).logits
        for fn in (lambda t, h: None, lambda t, h: t):
            assert torch.equal(model.run_with_hooks(x, fwd_hooks=[(lambda n: True, fn)]), want)


@MODES
@pytest.mark.parametrize("point", ["blocks.0.mamba.hook_state_norm", "blocks.4.mamba.hook_hidden_attn"])
def test_in_place_edit_of_a_read_only_point_raises(pair, mode, point):
    _, model = pair

    def set_first(t, hook):
        t[0] = 0

    with mode():
        for fn in (lambda t, h: t.mul_(2), set_first):
            with pytest.raises(ne.ReadOnlyHookError, match=f"{point} is read-only"):
                model.run_with_hooks(ids(), fwd_hooks=[(point, fn)])


@MODES
def test_cached_values_equal_the_no_grad_run(pair, mode):
    """run_with_cache under in-place edits of two points that flow on only if the write is seen."""
    _, model = pair
    x = ids()

    def zero_head(t, hook):
        t[:, 1] = 0

    edits = [("blocks.1.attn.hook_pattern", zero_head), ("blocks.4.mamba.hook_dt", lambda t, h: t.mul_(2))]
    with torch.no_grad(), model.hooks(edits):
        want_logits, want = model.run_with_cache(x)
    with mode(), model.hooks(edits):
        logits, cache = model.run_with_cache(x)
    assert torch.equal(logits, want_logits) and set(cache) == set(want)
    for name in want:
        assert torch.equal(cache[name], want[name]), name
    assert not cache["blocks.1.attn.hook_pattern"][:, 1].any()


@MODES
def test_in_place_routing_is_checked_as_a_returned_one(pair, mode):
    _, model = pair
    with mode(), pytest.raises(ValueError, match=r"expert ids in \[0, 6\)"):
        model.run_with_hooks(ids(), fwd_hooks=[("blocks.3.moe.hook_topk_indices", lambda t, h: t.fill_(9))])


@MODES
def test_hooks_of_one_point_share_the_tensor_until_one_writes(pair, mode):
    """A cache hook before an in-place edit sees the edit (they hold the same tensor), one after it sees the
    value that flowed on: the same in every mode."""
    _, model = pair
    x = ids()
    name = "blocks.1.attn.hook_pattern"
    seen = {}

    def edit(t, hook):
        t[:, 0] = 0

    with mode():
        model.run_with_hooks(
            x,
            fwd_hooks=[
                (name, lambda t, h: seen.update(before=t)),
                (name, edit),
                (name, lambda t, h: seen.update(after=t)),
            ],
        )
    assert seen["before"] is not seen["after"]
    for t in seen.values():
        assert not t[:, 0].any() and t[:, 1:].any()


def test_indexing_a_query_head_of_hook_v_names_the_kv_heads():
    model = ne.load("tiny")  # 4 query heads, 2 KV heads
    name = f"blocks.{model.layers('attention')[0]}.attn.hook_v"

    def zero_head_3(v, hook):
        v[:, :, 3] = 0

    with pytest.raises(IndexError, match="n_key_value_heads = 2") as raised:
        model.run_with_hooks(ids(p=5), fwd_hooks=[(name, zero_head_3)])
    message = str(raised.value)
    assert name in message and "h // (n_heads // n_key_value_heads)" in message
    assert "set_ungroup_grouped_query_attention(True)" in message
    assert isinstance(raised.value.__cause__, IndexError)
    # other points' IndexErrors are the hook's own
    q = name.replace("hook_v", "hook_q")
    with pytest.raises(IndexError) as raised:
        model.run_with_hooks(ids(p=5), fwd_hooks=[(q, lambda t, h: t[:, :, 9])])
    assert "n_key_value_heads" not in str(raised.value)
