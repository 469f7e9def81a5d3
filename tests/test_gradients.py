"""Gradients at the hook points: backward hooks, ``run_with_cache(incl_bwd=True)``, ``cache[name + "_grad"]``.

Two independent references:
- where a point is a tensor HF's own modules hand on (a module's input or output: the residual stream, q/k/v,
  z, the Mamba input projection and scan output, the MLP and shared expert, the embedding, the final norm),
  autograd through the plain HF model, with ``retain_grad`` on that tensor: equal bit for bit on the
  residual stream, within float32 rounding inside the mixers (whose backward sums in another order);
- every point with a gradient: autograd's gradient with respect to a zero added to the value there, and
  in float64 the directional derivative of the loss along a random direction of the point, by central
  differences of two forwards that write ``value ± ε·v`` there, equals ⟨grad, v⟩. Points that HF's path
  does not read (the pattern under SDPA, each head's result, dt, the state) are computed through the
  explicit path when their gradient is asked, as when written.
"""

from __future__ import annotations

import pytest
import torch
from models import random_model

import nemo_explore as ne
from nemo_explore.core.hook_names import NO_GRADIENT, parse
from nemo_explore.core.hooks import NoGradientError
from nemo_explore.tl.utils import lm_cross_entropy_loss

PATTERN = "M*EM-"


@pytest.fixture(scope="module")
def pair():
    hf = random_model(PATTERN, seed=1)
    return hf, ne.HookedNemotronH(hf)


@pytest.fixture(scope="module")
def double():
    hf = random_model(PATTERN, seed=2).double()
    hf.config._experts_implementation = "eager"  # the grouped matmul takes no float64: HF's loop over experts
    with torch.no_grad():  # larger x, B, C and steps, so that each weighs on the loss well above float noise
        for layer in hf.model.layers:
            if hasattr(layer.mixer, "dt_bias"):
                layer.mixer.dt_bias.fill_(0.5)
                layer.mixer.in_proj.weight.mul_(4)
                layer.mixer.conv1d.weight.mul_(4)
    return ne.HookedNemotronH(hf)


def ids_for(model, b=2, p=19, seed=0):
    return torch.randint(0, model.cfg.d_vocab, (b, p), generator=torch.Generator().manual_seed(seed))


def hf_reference(hf, ids) -> dict[str, torch.Tensor]:
    """d loss / d (a tensor HF hands between its modules), by autograd through the plain HF model."""
    caught: dict[str, torch.Tensor] = {}

    def out_of(name, index=None):
        def hook(module, args, out):
            t = out[0] if isinstance(out, tuple) else out
            t.retain_grad()
            caught[name] = t

        return hook

    def input_of(name):
        def hook(module, args):
            args[0].retain_grad()
            caught[name] = args[0]

        return hook

    handles = [hf.model.embeddings.register_forward_hook(out_of("hook_embed"))]
    handles.append(hf.model.norm_f.register_forward_hook(out_of("ln_final.hook_normalized")))
    for i, layer in enumerate(hf.model.layers):
        m = layer.mixer
        handles += [
            layer.register_forward_hook(out_of(f"blocks.{i}.hook_resid_post")),
            layer.norm.register_forward_hook(out_of(f"blocks.{i}.hook_mixer_in")),
            m.register_forward_hook(out_of(f"blocks.{i}.hook_mixer_out")),
        ]
        if hasattr(m, "q_proj"):
            for x in "qkv":
                proj = getattr(m, f"{x}_proj")
                handles.append(proj.register_forward_hook(out_of(f"blocks.{i}.attn.hook_{x}")))
            handles.append(m.o_proj.register_forward_pre_hook(input_of(f"blocks.{i}.attn.hook_z")))
        elif hasattr(m, "in_proj"):
            handles.append(m.in_proj.register_forward_hook(out_of(f"blocks.{i}.mamba.hook_in_proj")))
            handles.append(m.norm.register_forward_pre_hook(input_of(f"blocks.{i}.mamba.hook_ssm_out")))
        elif hasattr(m, "shared_experts"):
            handles.append(m.shared_experts.register_forward_hook(out_of(f"blocks.{i}.moe.hook_shared_out")))
        else:
            handles.append(m.up_proj.register_forward_hook(out_of(f"blocks.{i}.mlp.hook_pre")))
            handles.append(m.down_proj.register_forward_pre_hook(input_of(f"blocks.{i}.mlp.hook_post")))
    try:
        hf.zero_grad()
        lm_cross_entropy_loss(hf(ids).logits, ids).backward()  # the loss return_type="loss" computes
    finally:
        for h in handles:
            h.remove()
    return {name: t.grad for name, t in caught.items()}


def test_gradients_of_hf_tensors_equal_autograd(pair):
    """Residual-stream points (torch hooks on HF's own modules): bit for bit. Inside the mixers, whose
    forward the mirror runs op for op, the backward sums some terms in another order: within float32
    rounding (1e-6 of the largest gradient of the point)."""
    hf, model = pair
    ids = ids_for(model)
    ref = hf_reference(hf, ids)
    stream = [n for n in ref if parse(n)[1] is None]
    for names, exact in ((stream, True), (list(ref), False)):
        loss, cache = model.run_with_cache(ids, names_filter=names, return_type="loss", incl_bwd=True)
        assert torch.equal(loss, lm_cross_entropy_loss(hf(ids).logits, ids))
        for name in names:
            got, want = cache[f"{name}_grad"], ref[name].reshape(cache[f"{name}_grad"].shape)
            if exact:
                assert torch.equal(got, want), name
            else:
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
            assert want.abs().sum() > 0, name


def loss64(model, ids, fwd_hooks=(), bwd_hooks=()) -> torch.Tensor:
    """The next-token loss in float64, from the final norm's output (HF's logits are float32 even in a
    float64 model, too coarse for central differences)."""
    final = {}
    hooks = [*fwd_hooks, ("ln_final.hook_normalized", lambda t, hook: final.update(x=t))]
    model.run_with_hooks(ids, hooks, bwd_hooks=bwd_hooks, return_type=None)
    return lm_cross_entropy_loss(final["x"] @ model.W_U, ids)


def directional(model, ids, name, grad, eps=1e-3, seed=0):
    """(d loss along v by central differences, ⟨grad, v⟩, ‖grad‖‖v‖) for a random direction v of ``name``."""
    v = None

    def shift(sign):
        def hook(t, hook):
            nonlocal v
            if v is None:
                v = torch.randn(t.shape, generator=torch.Generator().manual_seed(seed), dtype=t.dtype)
                finite = torch.isfinite(t)  # masked scores are -inf: they stay so
                v = v * finite / (v * finite).norm() * t[finite].norm().clamp_min(1)  # a step of eps relative
            return t + sign * eps * v

        return hook

    with torch.no_grad():
        up, down = (loss64(model, ids, [(name, shift(sign))]) for sign in (1, -1))
    return float((up - down) / (2 * eps)), float((grad * v).sum()), float(grad.norm() * v.norm())


def test_every_point_with_a_gradient_is_the_gradient_of_the_loss(double):
    """At every point with a gradient (each kind's, in float64): the backward hook's gradient is autograd's
    gradient with respect to that value as it flows on (a zero added there, requiring grad: bit for bit),
    and the loss changes along a random direction by ⟨grad, v⟩ (central differences within 1%, or 0.1% of
    ‖grad‖‖v‖, at one of
    four steps: HF's norms and scan compute in float32 even in a float64 model)."""
    model = double
    ids = ids_for(model, b=1, p=11, seed=3)
    names = [n for n in model.hook_names() if parse(n)[2] not in NO_GRADIENT]
    assert {"hook_pattern", "hook_result", "hook_dt", "hook_state", "hook_topk_weights"} <= {
        parse(n)[2] for n in names
    }
    grads, zero = {}, {}

    def plus_zero(t, hook):
        zero["z"] = torch.zeros_like(t, requires_grad=True)
        return t + zero["z"]

    for name in names:
        loss = loss64(model, ids, [(name, plus_zero)], [(name, lambda g, hook: grads.update(g=g.clone()))])
        (by_autograd,) = torch.autograd.grad(loss, zero["z"])
        assert torch.equal(grads["g"], by_autograd), name
        # the step: small enough for curvature, large enough for float32 noise; one of four must agree
        tried = [directional(model, ids, name, grads["g"], eps) for eps in (1e-3, 3e-3, 1e-2, 3e-2)]
        assert any(n == pytest.approx(a, rel=1e-2, abs=1e-3 * scale) for n, a, scale in tried), (name, tried)


def test_backward_hooks_run_after_the_call_and_may_replace_the_gradient(pair):
    hf, model = pair
    ids = ids_for(model)
    last = f"blocks.{len(model.layer_types) - 1}.hook_resid_post"
    seen = []
    note = [(last, lambda g, hook: seen.append(hook.name))]
    loss = model.run_with_hooks(ids, bwd_hooks=note, return_type="loss")
    assert not seen  # the hooks left with the call; the tensors keep theirs
    loss.backward()
    assert seen == [last]
    _, plain = model.run_with_cache(ids, names_filter="hook_embed", return_type="loss", incl_bwd=True)
    model.add_hook(last, lambda g, hook: 2 * g, dir="bwd")  # the gradient, doubled from there on
    model.add_hook("hook_embed", lambda t, hook: None)  # a forward hook stays through reset(direction='bwd')
    try:
        _, doubled = model.run_with_cache(ids, names_filter="hook_embed", return_type="loss", incl_bwd=True)
    finally:
        model.reset_hooks(direction="bwd")
    torch.testing.assert_close(doubled["hook_embed_grad"], 2 * plain["hook_embed_grad"], rtol=1e-6, atol=0)
    assert model._registry.names() == {"hook_embed"}
    model.reset_hooks()


def test_what_has_no_gradient_says_so(pair):
    hf, model = pair
    ids = ids_for(model)
    mamba, moe = model.layers("mamba")[0], model.layers("moe")[0]
    with pytest.raises(NoGradientError, match=r"hook_state_norm has no gradient: it is read-only"):
        model.add_hook(f"blocks.{mamba}.mamba.hook_state_norm", lambda g, hook: None, dir="bwd")
    with pytest.raises(NoGradientError, match="integers"):
        model.run_with_hooks(ids, bwd_hooks=[(f"blocks.{moe}.moe.hook_topk_indices", print)])
    with torch.no_grad(), pytest.raises(NoGradientError, match="ran without grad"):
        model.run_with_hooks(ids, bwd_hooks=[("hook_embed", print)])
    with pytest.raises(ValueError, match="must be a scalar"):
        model.run_with_cache(ids, names_filter="hook_embed", incl_bwd=True)
    with pytest.raises(ValueError, match="dir must be 'fwd' or 'bwd'"):
        model.add_hook("hook_embed", print, dir="backward")
    _, cache = model.run_with_cache(ids, return_type="loss", incl_bwd=True)  # every point: those with one
    grads = {n.removesuffix("_grad") for n in cache if n.endswith("_grad")}
    assert grads == {n for n in model.hook_names() if parse(n)[2] not in NO_GRADIENT}


def test_a_backward_hook_on_a_filter_takes_the_points_with_a_gradient(pair):
    """TL's attribution patching adds a backward hook with a names filter over every point: the read-only
    and integer points are skipped there. A list naming such a point is refused, and nothing is added."""
    hf, model = pair
    ids = ids_for(model)
    seen = set()
    model.add_hook(lambda name: True, lambda g, hook: seen.add(hook.name), dir="bwd")
    try:
        model(ids, return_type="loss").backward()
    finally:
        model.reset_hooks()
    assert seen == {n for n in model.hook_names() if parse(n)[2] not in NO_GRADIENT}
    mamba = model.layers("mamba")[0]
    with pytest.raises(NoGradientError):
        model.add_hook(["hook_embed", f"blocks.{mamba}.mamba.hook_state_norm"], print, dir="bwd")
    assert not model._registry.names()  # hook_embed was not added either
