"""TransformerLens' build-your-own hooked model (``tl.hooked_module``): HookPoint modules in a
HookedRootModule, on the package's one hook mechanism (registry, write rule, backward hooks)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nemo_explore.core.hook_names import HookNameError
from nemo_explore.core.hooks import HookPoint as HookRecord
from nemo_explore.core.hooks import NoGradientError
from nemo_explore.tl.hooked_module import HookedRootModule, HookPoint

ORDER = ["hook_in", "layer1.hook_square", "hook_mid", "layer2.hook_square", "hook_out"]


class SquareThenAdd(nn.Module):
    def __init__(self, offset):
        super().__init__()
        self.offset = nn.Parameter(torch.tensor(offset))
        self.hook_square = HookPoint()

    def forward(self, x):
        square = self.hook_square(x * x)
        return self.offset + square


class TwoLayerModel(HookedRootModule):
    """TransformerLens' demo, as it is there (only the imports differ)."""

    def __init__(self):
        super().__init__()
        self.layer1 = SquareThenAdd(3.0)
        self.layer2 = SquareThenAdd(-4.0)
        self.hook_in = HookPoint()
        self.hook_mid = HookPoint()
        self.hook_out = HookPoint()
        super().setup()

    def forward(self, x):
        x_in = self.hook_in(x)
        x_mid = self.hook_mid(self.layer1(x_in))
        return self.hook_out(self.layer2(x_mid))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.hook_x = HookPoint()

    def forward(self, x):
        return self.hook_x(x + 1)


class Stack(HookedRootModule):
    """Points in an nn.ModuleList, and one at the top."""

    def __init__(self, n=2):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(n))
        self.hook_top = HookPoint()
        self.setup()

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.hook_top(x)


@pytest.fixture
def model():
    return TwoLayerModel()


def five():
    return torch.tensor(5.0)


def add_one(tensor, hook):
    return tensor + 1


def test_the_transformer_lens_demo_runs(model, capsys):
    out, cache = model.run_with_cache(five())
    assert out.item() == 780.0
    assert isinstance(cache, dict) and list(cache) == ORDER
    assert [cache[k].item() for k in cache] == [5.0, 25.0, 28.0, 784.0, 780.0]

    def set_to_zero_hook(tensor, hook):
        print(hook.name)
        return torch.tensor(0.0)

    got = model.run_with_hooks(five(), fwd_hooks=[("layer2.hook_square", set_to_zero_hook)]).item()
    assert got == -4.0
    assert capsys.readouterr().out == "layer2.hook_square\n"
    assert model(five()).item() == 780.0  # the hook went with the call


def test_setup_names_points_by_module_path(model):
    assert list(model.hook_dict) == ["layer1.hook_square", "layer2.hook_square", *ORDER[::2]]
    assert model.hook_dict["hook_mid"] is model.hook_mid
    assert model.hook_points()[0] is model.layer1.hook_square
    assert model.mod_dict["layer1"] is model.layer1 and model.mod_dict["layer1.hook_square"].name == (
        "layer1.hook_square"
    )
    assert sorted(model.hook_names()) == sorted(ORDER)
    assert model.hook_mid.layer() is None
    # the root is no submodule of its points: parameters, children and .to() see the tree once
    assert [n for n, _ in model.named_parameters()] == ["layer1.offset", "layer2.offset"]
    assert list(model.hook_mid.children()) == []
    assert model.to(torch.float64)(five().double()).item() == 780.0


def test_hook_functions_get_the_registry_record(model):
    seen = []

    def look(tensor, hook):
        seen.append(hook)
        hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1

    model.add_hook("layer1.hook_square", look)
    model(five())
    model(five())
    assert isinstance(seen[0], HookRecord) and seen[0] is seen[1]
    assert seen[0].name == "layer1.hook_square" and seen[0].layer is None and seen[0].ctx == {"calls": 2}
    model.reset_hooks()  # clear_contexts=True by default
    assert seen[0].ctx == {}


def test_observing_leaves_the_value_and_editing_in_place_writes(model):
    seen = []

    def observe(tensor, hook):
        seen.append(tensor.item())
        return tensor  # the very tensor, untouched: an observation

    def edit(tensor, hook):
        tensor.add_(1)  # in place: a write, as returning tensor + 1 would be

    assert model.run_with_hooks(five(), fwd_hooks=[("hook_mid", observe)]).item() == 780.0
    assert seen == [28.0]
    assert model.run_with_hooks(five(), fwd_hooks=[("hook_mid", edit)]).item() == 29.0**2 - 4
    assert model.run_with_hooks(five(), fwd_hooks=[("hook_mid", add_one)]).item() == 29.0**2 - 4
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            assert model.run_with_hooks(five(), fwd_hooks=[("hook_mid", edit)]).item() == 837.0, mode
    with pytest.raises(ValueError, match=r"returned shape \(2,\), expected \(\)"):
        model.run_with_hooks(five(), fwd_hooks=[("hook_mid", lambda t, hook: t.repeat(2))])


def test_add_hook_reset_hooks_and_permanent_hooks(model):
    model.add_hook("hook_mid", add_one)
    assert model(five()).item() == 837.0
    assert model(five()).item() == 837.0  # it stays from call to call
    model.add_hook(lambda name: name == "hook_in", add_one, is_permanent=True)  # a predicate: 6² + 3 = 39
    assert model(five()).item() == 40.0**2 - 4
    model.reset_hooks()
    assert model(five()).item() == 39.0**2 - 4  # the permanent one stays
    model.reset_hooks(including_permanent=True)
    assert model(five()).item() == 780.0
    model.hook_mid.add_hook(add_one)  # on the point itself
    model.hook_in.add_hook(add_one, is_permanent=True)
    model.hook_mid.remove_hooks()
    model.hook_in.remove_hooks()  # not the permanent one
    assert model(five()).item() == 39.0**2 - 4
    model.hook_in.remove_hooks(including_permanent=True)
    assert model(five()).item() == 780.0
    with pytest.raises(ValueError, match="dir must be 'fwd' or 'bwd'"):
        model.add_hook("hook_mid", add_one, dir="up")


def test_the_hooks_context_removes_its_hooks_even_on_error(model):
    calls = []

    def count(tensor, hook):
        calls.append(hook.name)

    model.add_hook("hook_out", count)
    with pytest.raises(RuntimeError, match="boom"), model.hooks(fwd_hooks=[("hook_mid", add_one)]) as hooked:
        assert hooked is model and model(five()).item() == 837.0
        raise RuntimeError("boom")
    assert model(five()).item() == 780.0  # the context's hook is gone, add_hook's stays
    assert calls == ["hook_out", "hook_out"]

    def fail(tensor, hook):
        raise ArithmeticError("in a hook")

    with pytest.raises(ArithmeticError):
        model.run_with_hooks(five(), fwd_hooks=[("hook_mid", fail)])
    assert model(five()).item() == 780.0
    with pytest.raises(TypeError, match="fwd_hooks and bwd_hooks only"), model.hooks(state_positions="all"):
        pass
    with pytest.raises(ValueError, match="reset_hooks_end=False"):
        model.run_with_hooks(five(), reset_hooks_end=False)


def test_a_backward_hook_gets_autograd_s_gradient(model):
    """out = x_mid² - 4, so d out / d hook_mid = 2 · x_mid = 56; returning a tensor replaces the gradient."""
    kept, grads = [], []

    def keep(tensor, hook):
        kept.append(tensor)  # the very tensor that flows on

    out = model.run_with_hooks(
        five(), fwd_hooks=[("hook_mid", keep)], bwd_hooks=[("hook_mid", lambda g, hook: grads.append(g))]
    )
    (by_autograd,) = torch.autograd.grad(out, kept[0], retain_graph=True)
    out.backward()  # the backward hook runs now, after the call's hooks were removed
    assert grads[0].item() == by_autograd.item() == 56.0
    # d out / d offset1 goes through hook_mid: zeroing its gradient there zeroes offset1's
    model.zero_grad()
    model.add_hook("hook_mid", lambda g, hook: torch.zeros_like(g), dir="bwd")
    model(five()).backward()
    assert model.layer1.offset.grad.item() == 0.0 and model.layer2.offset.grad.item() == 1.0


def test_incl_bwd_caches_each_point_s_gradient(model):
    """out = (x² + 3)² - 4 at x = 5: d out / d hook_in = 2 · 28 · 2 · 5."""
    x = torch.tensor(5.0, requires_grad=True)
    out, cache = model.run_with_cache(x, incl_bwd=True)
    assert list(cache) == [m for n in ORDER for m in (n, f"{n}_grad")]
    grads = {k: v.item() for k, v in cache.items() if k.endswith("_grad")}
    assert grads == {
        "hook_in_grad": 560.0, "layer1.hook_square_grad": 56.0, "hook_mid_grad": 56.0,
        "layer2.hook_square_grad": 1.0, "hook_out_grad": 1.0,
    }  # fmt: skip
    assert x.grad.item() == 560.0
    # without a grad on the input, hook_in and layer1.hook_square (x · x) have none: the registry says so
    with pytest.raises(NoGradientError, match="hook_in: its value has no gradient"):
        model.run_with_cache(five(), incl_bwd=True)
    _, cache = model.run_with_cache(five(), names_filter=["hook_mid", "hook_out"], incl_bwd=True)
    assert list(cache) == ["hook_mid", "hook_mid_grad", "hook_out", "hook_out_grad"]
    assert cache["hook_mid_grad"].item() == 56.0
    with pytest.raises(ValueError, match="must be a scalar"):
        model.run_with_cache(torch.tensor([5.0, 6.0]), names_filter="hook_out", incl_bwd=True)


def test_an_unknown_name_suggests_the_closest(model):
    with pytest.raises(HookNameError, match=r"'layer2\.hook_sqare'.*Did you mean 'layer2\.hook_square'"):
        model.add_hook("layer2.hook_sqare", add_one)
    with pytest.raises(KeyError, match=r"Did you mean 'hook_mid'"):
        model.run_with_hooks(five(), fwd_hooks=[("hook_mdi", add_one)])
    with pytest.raises(HookNameError, match="no hook point named 'hook_resid_pre' in TwoLayerModel"):
        model.run_with_cache(five(), names_filter="hook_resid_pre")
    assert model(five()).item() == 780.0  # nothing was added


def test_names_filter(model):
    _, cache = model.run_with_cache(five(), names_filter=lambda name: name.endswith("hook_square"))
    assert {k: v.item() for k, v in cache.items()} == {
        "layer1.hook_square": 25.0, "layer2.hook_square": 784.0
    }  # fmt: skip
    _, cache = model.run_with_cache(five(), names_filter=["hook_out", "hook_in"])
    assert list(cache) == ["hook_in", "hook_out"]  # the order they ran in
    _, cache = model.run_with_cache(five(), names_filter="hook_mid")
    assert list(cache) == ["hook_mid"]
    with pytest.raises(ValueError, match="matched no hook point.*'layer1.hook_square'"):
        model.run_with_cache(five(), names_filter=lambda name: "resid" in name)


def test_points_in_a_module_list_are_named_by_block():
    stack = Stack()
    assert list(stack.hook_dict) == ["blocks.0.hook_x", "blocks.1.hook_x", "hook_top"]
    assert stack.blocks[0].hook_x.name == "blocks.0.hook_x" and stack.blocks[0].hook_x.layer() == 0
    assert stack.hook_dict["blocks.1.hook_x"].layer() == 1 and stack.hook_top.layer() is None
    layers = []
    stack.add_hook(lambda name: "blocks" in name, lambda t, hook: layers.append(hook.layer()))
    _, cache = stack.run_with_cache(torch.zeros(1, 3), remove_batch_dim=True)
    assert layers == [0, 1]
    assert list(cache) == ["blocks.0.hook_x", "blocks.1.hook_x", "hook_top"]
    assert torch.equal(cache["blocks.1.hook_x"], torch.full((3,), 2.0))
    with pytest.raises(ValueError, match="leading batch axis of size 1"):
        stack.run_with_cache(torch.zeros(2, 3), remove_batch_dim=True)


def test_before_setup_a_point_is_the_identity():
    point = HookPoint()
    x = torch.arange(3.0)
    assert point(x) is x and point.name is None and point.layer() is None
    with pytest.raises(RuntimeError, match=r"call setup\(\)"):
        point.add_hook(add_one)

    class Forgot(HookedRootModule):
        def __init__(self):
            super().__init__()
            self.hook_a = HookPoint()

        def forward(self, x):
            return self.hook_a(x)

    forgot = Forgot()
    assert forgot(x) is x
    with pytest.raises(RuntimeError, match=r"Forgot has no named hook points.*self\.setup\(\)"):
        forgot.run_with_cache(x)


def test_a_copy_has_its_own_hooks(model):
    twin = copy.deepcopy(model)
    twin.add_hook("hook_mid", add_one)
    assert twin(five()).item() == 837.0 and model(five()).item() == 780.0
    assert twin.hook_mid._root is twin


def test_points_of_your_own_may_be_written_whatever_their_name():
    """The package's read-only names (hook_scale, hook_state_norm) mean nothing in a module of your own: a
    point named so is written like any other (TL's own LayerNorm has a hook_scale that users freeze)."""

    class Norm(HookedRootModule):
        def __init__(self):
            super().__init__()
            self.hook_scale = HookPoint()
            self.blocks = nn.ModuleList([Block()])
            self.blocks[0].hook_state_norm = HookPoint()
            self.setup()

        def forward(self, x):
            x = self.blocks[0].hook_state_norm(x)
            return x / self.hook_scale(x.pow(2).mean(-1, keepdim=True).sqrt())

    norm, x = Norm(), torch.tensor([[3.0, 4.0]])
    assert torch.allclose(norm(x), x / (12.5**0.5))
    frozen = norm.run_with_hooks(x, fwd_hooks=[("hook_scale", lambda s, hook: torch.ones_like(s))])
    assert torch.equal(frozen, x)
    doubled = norm.run_with_hooks(x, fwd_hooks=[("blocks.0.hook_state_norm", lambda t, hook: 2 * t)])
    assert torch.allclose(doubled, norm(x))  # scale-free: the norm undoes the doubling
