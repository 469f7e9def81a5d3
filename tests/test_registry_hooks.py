"""Every registry configuration builds on the meta device and gets the right hook points on every layer."""

import pytest
import torch
from transformers import NemotronHForCausalLM

import nemo_explore as ne
from nemo_explore.core.hook_names import MIXER_POINTS
from nemo_explore.core.layer_types import HOOK_PREFIX, parse_pattern

# The kind of each HF mixer class, by a part of its name (NemotronHMamba2Mixer, NemotronHAttention, ...).
MIXER_CLASSES = {"Mamba2Mixer": "mamba", "Attention": "attention", "MLP": "mlp", "MoE": "moe"}


def names_of_modules(hf) -> list[str]:
    """The hook names spelt out by hand from the modules HF built: the embedding, then layer by layer the
    residual points around the mixer's own points, then the final norm."""
    names = ["hook_embed"]
    for i, layer in enumerate(hf.model.layers):
        cls = type(layer.mixer).__name__
        (kind,) = [k for part, k in MIXER_CLASSES.items() if part in cls]
        mixer = [f"blocks.{i}.{HOOK_PREFIX[kind]}.{p}" for p in MIXER_POINTS[kind]]
        names += [f"blocks.{i}.hook_resid_pre", f"blocks.{i}.hook_scale", f"blocks.{i}.hook_mixer_in", *mixer]
        names += [f"blocks.{i}.hook_mixer_out", f"blocks.{i}.hook_resid_post"]
    return [*names, "ln_final.hook_scale", "ln_final.hook_normalized"]


@pytest.mark.parametrize("name", ne.registry.names())
def test_registry_config_hook_names_on_meta(name):
    cfg = ne.registry.get(name)
    with torch.device("meta"):
        hf = NemotronHForCausalLM(cfg)
    model = ne.load(hf)
    kinds = parse_pattern(cfg.layers_block_type)
    assert model.layer_types == kinds
    expected = names_of_modules(hf)
    assert model.hook_names() == expected
    assert ne.describe(cfg).hook_names("all") == expected
    assert len(model.hook_names(layer_type="attention")) == 12 * kinds.count("attention")
