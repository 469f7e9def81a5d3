"""The registry: every known checkpoint builds (on the meta device) into the shapes its sources publish."""

import json

import pytest
import torch
from transformers import NemotronHConfig, NemotronHForCausalLM

from nemo_explore.checkpoints import registry

# Transcribed by hand from the public sources (see /work/shared/nemotron_h_family.md and each entry's
# ``source``), independently of the JSON files: layers M/*/-/E, hidden, heads/kv/head_dim,
# Mamba heads x head_dim, state, groups, (experts, top-k, latent). Keys are the hub names after 'nvidia/'.
FACTS = {
    "Nemotron-H-4B-Base-8K": ((24, 4, 24, 0), 3072, (32, 8, 128), (112, 64, 128, 8), None),
    "Nemotron-H-8B-Base-8K": ((24, 4, 24, 0), 4096, (32, 8, 128), (128, 64, 128, 8), None),
    "Nemotron-H-47B-Base-8K": ((45, 5, 48, 0), 8192, (64, 8, 128), (256, 64, 256, 8), None),
    "Nemotron-H-56B-Base-8K": ((54, 10, 54, 0), 8192, (64, 8, 128), (256, 64, 256, 8), None),
    "NVIDIA-Nemotron-Nano-9B-v2": ((27, 4, 25, 0), 4480, (40, 8, 128), (128, 80, 128, 8), None),
    "NVIDIA-Nemotron-Nano-12B-v2": ((28, 6, 28, 0), 5120, (40, 8, 128), (128, 80, 128, 8), None),
    "NVIDIA-Nemotron-3-Nano-4B": ((21, 4, 17, 0), 3136, (40, 8, 128), (96, 80, 128, 8), None),
    "NVIDIA-Nemotron-3-Nano-30B-A3B":
        ((23, 6, 0, 23), 2688, (32, 2, 128), (64, 64, 128, 8), (128, 6, 0)),
    "NVIDIA-Nemotron-3-Super-120B-A12B":
        ((40, 8, 0, 40), 4096, (32, 2, 128), (128, 64, 128, 8), (512, 22, 1024)),
}  # fmt: skip
MIXER_KIND = {
    "NemotronHMamba2Mixer": "M",
    "NemotronHAttention": "*",
    "NemotronHMLP": "-",
    "NemotronHMoE": "E",
}


LEGACY_KEYS = {"hybrid_override_pattern", "mtp_hybrid_override_pattern"}
CONFIG_FIELDS = {*NemotronHConfig.__dataclass_fields__, *LEGACY_KEYS}


def test_the_registry_knows_the_family():
    assert sorted(registry.names()) == sorted("nvidia/" + name for name in FACTS)


@pytest.mark.parametrize("name", sorted(FACTS))
def test_entry_builds_on_meta_with_the_published_shapes(name):
    (n_m, n_attn, n_mlp, n_moe), hidden, (heads, kv, head_dim), (mh, md, state, groups), moe = FACTS[name]
    with torch.device("meta"):
        model = NemotronHForCausalLM(registry.get("nvidia/" + name))
    layers = model.model.layers
    kinds = "".join(MIXER_KIND[type(layer.mixer).__name__] for layer in layers)
    assert [kinds.count(c) for c in "M*-E"] == [n_m, n_attn, n_mlp, n_moe]
    assert model.model.embeddings.weight.shape == (131072, hidden)
    for layer in layers:
        mixer = layer.mixer
        if kinds[layer.layer_idx] == "M":
            got = (mixer.num_heads, mixer.head_dim, mixer.ssm_state_size, mixer.n_groups)
            assert got == (mh, md, state, groups)
            assert mixer.in_proj.out_features == 2 * mh * md + 2 * groups * state + mh
        elif kinds[layer.layer_idx] == "*":
            assert mixer.q_proj.out_features == heads * head_dim
            assert mixer.k_proj.out_features == kv * head_dim
        elif kinds[layer.layer_idx] == "E":
            experts, top_k, latent = moe
            assert mixer.experts.up_proj.shape[0] == experts and mixer.gate.top_k == top_k
            assert mixer.experts.up_proj.shape[2] == (latent or hidden)


def test_get_gives_a_fresh_native_config_with_layer_types():
    cfg = registry.get("nvidia/Nemotron-H-8B-Base-8K")
    assert type(cfg) is NemotronHConfig
    pattern = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"
    spell = {"M": "linear_attention", "*": "full_attention", "-": "mlp"}
    assert cfg.layers_block_type == [spell[c] for c in pattern]
    cfg.hidden_size = 1
    assert registry.get("nvidia/Nemotron-H-8B-Base-8K").hidden_size == 4096


def test_names_resolve_in_any_case_with_or_without_org_and_by_alias():
    want = "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B"
    for spelling in (want, want.upper(), want.split("/")[1], want + "-BF16"):
        assert registry.entry(spelling).name == want


def test_unknown_name_lists_close_known_names():
    with pytest.raises(registry.UnknownCheckpointError) as err:
        registry.get("nvidia/Nemotron-H-9B-Base-8K")
    assert isinstance(err.value, KeyError)
    assert "'nvidia/Nemotron-H-8B-Base-8K'" in str(err.value).split("Known:")[0]
    assert registry.lookup("nvidia/Nemotron-H-9B-Base-8K") is None


def test_every_entry_names_its_source_and_inferred_values_are_real_fields():
    for name in registry.names():
        e = registry.entry(name)
        assert len(e.source) > 20
        assert set(e.inferred) <= set(e.config), f"{name}: inferred fields not in its config"
        raw = json.loads((registry.DATA_DIR / (name.split("/")[1] + ".json")).read_text())
        assert raw["name"] == name
        # every key is a NemotronHConfig field (a typo would silently become an extra attribute)
        assert set(raw["config"]) <= CONFIG_FIELDS, f"{name}: {set(raw['config']) - CONFIG_FIELDS}"
