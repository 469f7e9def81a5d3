"""Every registry configuration builds on the meta device and gets the right hook points on every layer."""

import pytest
import torch
from transformers import NemotronHForCausalLM

import nemo_explore as ne
from nemo_explore.hook_names import MIXER_POINTS
from nemo_explore.layer_types import HOOK_PREFIX, parse_pattern


@pytest.mark.parametrize("name", ne.registry.names())
def test_registry_config_hook_names_on_meta(name):
    cfg = ne.registry.get(name)
    with torch.device("meta"):
        hf = NemotronHForCausalLM(cfg)
    model = ne.load(hf)
    kinds = parse_pattern(cfg.layers_block_type)
    assert model.layer_types == kinds
    for i, kind in enumerate(kinds):
        mixer = type(hf.model.layers[i].mixer).__name__
        assert {"mamba": "Mamba2Mixer", "attention": "Attention", "mlp": "MLP", "moe": "MoE"}[kind] in mixer
        points = [n for n in model.hook_names() if n.startswith(f"blocks.{i}.")]
        assert points[2:-2] == [f"blocks.{i}.{HOOK_PREFIX[kind]}.{p}" for p in MIXER_POINTS[kind]]
    assert model.hook_names() == ne.describe(cfg).hook_names("all")
    assert len(model.hook_names(layer_type="attention")) == 10 * kinds.count("attention")
