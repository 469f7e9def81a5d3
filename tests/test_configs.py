"""build_config / small_config / recommended_defaults / shortened: the layers and widths asked for, models
that build and run, clear errors for combinations that cannot be built."""

import pytest
import torch
from transformers import NemotronHConfig, NemotronHForCausalLM

import nemo_explore as ne
from nemo_explore.checkpoints import registry
from nemo_explore.checkpoints.configs import build_config, recommended_defaults, shortened, small_config
from nemo_explore.checkpoints.describe import describe
from nemo_explore.core.layer_types import to_pattern


def pattern(cfg):
    return to_pattern(cfg.layers_block_type)


def test_knobs_place_the_layers():
    d = 64
    assert pattern(build_config(12, attention_every=4, mlp_every=2, hidden_size=d)) == "M-M*M-M*M-M*"
    assert pattern(build_config(8, attention_every=4, moe_every=2, hidden_size=d)) == "MEM*MEM*"
    assert pattern(build_config(6, moe_every=3, mlp_every=2, hidden_size=d)) == "M-E-ME"  # MoE wins over MLP
    assert pattern(build_config(3, moe_every=1, hidden_size=d)) == "EEE"


def test_without_knobs_the_released_mix_is_used():
    got = pattern(build_config(24, hidden_size=64))
    assert got == "M-M-M-M-M-M*M-M-M-M-M-M*"  # attention every 12th layer, MLP every other
    assert got.count("*") / len(got) == pytest.approx(4 / 52, abs=0.01)  # as in Nemotron-H 8B


def test_explicit_pattern_wins_and_accepts_any_spelling():
    cfg = build_config(pattern="M*-E", attention_every=2, hidden_size=64)
    assert pattern(cfg) == "M*-E"
    cfg = build_config(pattern=["mamba", "full_attention", "mlp", "E"], hidden_size=64)
    assert cfg.layers_block_type == ["linear_attention", "full_attention", "mlp", "moe"]


def test_widths_follow_hidden_size_unless_given():
    cfg = build_config(4, hidden_size=256, num_attention_heads=8)
    assert (cfg.head_dim, cfg.mamba_num_heads, cfg.intermediate_size, cfg.n_groups) == (32, 8, 1024, 8)
    assert build_config(4, hidden_size=192).n_groups == 2  # 6 Mamba heads of 64
    cfg = build_config(4, hidden_size=256, head_dim=64, mamba_num_heads=16, intermediate_size=300)
    assert (cfg.head_dim, cfg.mamba_num_heads, cfg.intermediate_size) == (64, 16, 300)
    assert type(cfg) is NemotronHConfig


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_layers=4, hidden_size=100, num_attention_heads=3), "does not divide hidden_size"),
        (dict(pattern="M*", num_attention_heads=32, num_key_value_heads=5), "must divide num_attention"),
        (dict(pattern="M", hidden_size=64, mamba_num_heads=6, n_groups=4), "n_groups=4 must divide"),
        (dict(pattern="E", n_routed_experts=4, num_experts_per_tok=5), "exceeds the 4 experts"),
        (dict(pattern="E", n_routed_experts=6, n_group=4), "n_group=4 must divide"),
        (dict(pattern="E", n_routed_experts=8, n_group=8), "fewer than 2 per group"),
        (dict(pattern="E", n_routed_experts=8, n_group=2, topk_group=3), "cannot exceed n_group"),
        (dict(n_layers=3, pattern="M*"), "has 2 layers"),
        (dict(pattern="MX"), "unknown layer type 'X'"),
        (dict(), "needs n_layers"),
        (dict(n_layers=4, attention_every=0), "attention_every must be a positive int"),
        (dict(pattern="M-", intermediate_size=0), "intermediate_size must be a positive int"),
    ],
)
def test_impossible_combinations_are_refused_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_config(**kwargs)


def test_unknown_field_names_suggest_the_right_one():
    with pytest.raises(TypeError, match="Did you mean 'hidden_size'"):
        build_config(4, hiden_size=64)
    with pytest.raises(TypeError, match="pattern="):
        build_config(hybrid_override_pattern="M*")


@pytest.mark.parametrize("kind, kinds", [("dense", "M*-"), ("moe", "M*E"), ("all", "M*-E")])
def test_small_configs_build_and_run(kind, kinds):
    cfg = small_config(kind)
    assert set(pattern(cfg)) == set(kinds)
    torch.manual_seed(0)
    model = ne.load(NemotronHForCausalLM(cfg).eval())
    logits = model(torch.randint(0, cfg.vocab_size, (1, 11)))
    assert logits.shape == (1, 11, cfg.vocab_size) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="dense, moe, all"):
        small_config("tiny")


def test_recommended_defaults_are_the_released_widths():
    rec = recommended_defaults()
    dense = registry.entry("nvidia/Nemotron-H-8B-Base-8K").config
    moe = registry.entry("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B").config
    attention = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size")
    mamba = ("mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups", "conv_kernel", "chunk_size")
    for key in attention + mamba:
        assert rec[key] == dense[key], key
    for key in ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size", "routed_scaling_factor"):
        assert rec[key] == moe[key], key
    assert rec["mamba_num_heads"] * rec["mamba_head_dim"] == 2 * rec["hidden_size"]
    # the default build is the 8B's widths: per-type parameter counts agree with the real 8B's
    built, real = describe(build_config(52)), describe("nvidia/Nemotron-H-8B-Base-8K")
    per_layer = {t: built.params[t] / built.counts[t] for t in ("mamba", "attention", "mlp")}
    assert per_layer == {t: real.params[t] / real.counts[t] for t in per_layer}


@pytest.mark.parametrize("name", ["nvidia/Nemotron-H-8B-Base-8K", "nvidia/Nemotron-H-47B-Base-8K"])
@pytest.mark.parametrize("n_layers", [3, 8, 13])
def test_shortened_keeps_widths_order_and_mix(name, n_layers):
    full = registry.get(name)
    short = shortened(full, n_layers)
    a, b = full.to_dict(), short.to_dict()
    assert {k: v for k, v in a.items() if k != "layers_block_type"} == {
        k: v for k, v in b.items() if k != "layers_block_type"
    }
    long_p, short_p = pattern(full), pattern(short)
    assert len(short_p) == n_layers and set(short_p) == set(long_p)
    it = iter(long_p)
    assert all(c in it for c in short_p)  # a subsequence: the original order is kept
    for c in set(long_p):  # each type keeps its share, give or take a layer (and at least one)
        assert abs(short_p.count(c) - n_layers * long_p.count(c) / len(long_p)) < 1 + (c == "*")
    d = describe(short)
    with torch.device("meta"):
        assert d.n_params == sum(p.numel() for p in NemotronHForCausalLM(short).parameters())


def test_shortened_moe_model_and_errors():
    short = shortened(registry.get("nvidia/NVIDIA-Nemotron-3-Super-120B-A12B"), 6)
    assert sorted(pattern(short)) == sorted("MMEE*E") or sorted(pattern(short)) == sorted("MMME*E")
    assert (short.moe_latent_size, short.n_routed_experts, short.hidden_size) == (1024, 512, 4096)
    full = registry.get("nvidia/Nemotron-H-8B-Base-8K")
    with pytest.raises(ValueError, match="n_layers >= 3"):
        shortened(full, 2)
    with pytest.raises(ValueError, match="52-layer"):
        shortened(full, 60)
