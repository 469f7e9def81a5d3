"""``HookedNemotronH`` is composed of its mixins, each the one place for its concern (``inputs.py``,
``lifecycle.py``, ``tl/weights.py``), and what other modules reach on a model is where they reach it."""

from __future__ import annotations

import inspect

import pytest
import torch
from models import hooked_pair

from nemo_explore import model as model_module
from nemo_explore.core.hook_lifecycle import HookLifecycleBase
from nemo_explore.core.layer_types import ATTENTION, MLP
from nemo_explore.inputs import Inputs
from nemo_explore.lifecycle import HookLifecycle
from nemo_explore.model import HookedNemotronH
from nemo_explore.tl.weights import (
    ATTENTION_WEIGHTS,
    MLP_WEIGHTS,
    AttentionWeights,
    MLPWeights,
    PerLayer,
    TLWeights,
)


@pytest.fixture(scope="module")
def pair():
    return hooked_pair("M*-EM*", seed=0)


def own_members(cls) -> set[str]:
    return {n for n in vars(cls) if not (n.startswith("__") and n.endswith("__"))}


def test_each_concern_has_one_home():
    # the lifecycle mixin stands on the generic one it shares with tl.hooked_module's HookedRootModule
    assert HookedNemotronH.__mro__[1:5] == (Inputs, HookLifecycle, HookLifecycleBase, TLWeights)
    homes = [own_members(c) for c in (HookedNemotronH, Inputs, HookLifecycle, TLWeights)]
    for i, a in enumerate(homes):
        for b in homes[i + 1 :]:
            assert not a & b, f"defined twice: {sorted(a & b)}"
    for mixin in (Inputs, HookLifecycle, TLWeights):
        for name in own_members(mixin):
            assert inspect.getattr_static(HookedNemotronH, name) is vars(mixin)[name], name


def test_the_tl_weights_across_blocks_are_declared_properties():
    """One written-out property per name of ATTENTION_WEIGHTS / MLP_WEIGHTS, no more, each also a weight
    of the per-block view of its kind."""
    across = {n for n, v in vars(TLWeights).items() if isinstance(v, property)} - {
        "blocks", "W_E", "W_U", "b_U", "W_pos", "ln_final", "embed", "unembed", "hook_embed"
    }
    assert across == {*ATTENTION_WEIGHTS, *MLP_WEIGHTS}
    for names, view in ((ATTENTION_WEIGHTS, AttentionWeights), (MLP_WEIGHTS, MLPWeights)):
        for name in names:
            assert isinstance(inspect.getattr_static(view, name), property), (view.__name__, name)


def test_the_tl_weights_across_blocks_read_their_kind(pair):
    _, model = pair
    attn, mlp = model.layers(ATTENTION)[0], model.layers(MLP)[0]
    for names, kind, layer in ((ATTENTION_WEIGHTS, ATTENTION, attn), (MLP_WEIGHTS, MLP, mlp)):
        for name in names:
            per_layer = getattr(model, name)
            assert isinstance(per_layer, PerLayer) and per_layer._kind == kind and per_layer._name == name
            doc = inspect.getattr_static(HookedNemotronH, name).__doc__
            assert doc == (
                f"TransformerLens' ``{name}`` of the {kind} blocks: ``model.{name}[L]`` (see ``tl.weights``)."
            )
            want = getattr(getattr(model.blocks[layer], "attn" if kind == ATTENTION else "mlp"), name)
            got = per_layer[layer]
            if isinstance(want, torch.Tensor):
                assert torch.equal(got, want)
    with pytest.raises(AttributeError):
        model.W_Q = None  # a property, as before: no setter


def test_what_other_modules_reach_on_a_model_is_there(pair):
    """analysis/, widgets/, corpus/ and the tests call these on a model object; ``from nemo_explore.model
    import`` names keep their home."""
    _, model = pair
    for name in ("_encode", "_str_tokens_of", "_need_tokenizer", "_resolve", "_examples", "_sync"):
        assert callable(getattr(model, name)), name
    assert model._names == model.hook_names() and model._name_set == set(model._names)
    assert not model._registry.names() and model._installed == {} and model._added == {}
    assert model._options == type(model._options)()
    for name in ("HookedNemotronH", "NotNemotronHError", "token_losses", "check_nemotron_h"):
        assert hasattr(model_module, name), name
