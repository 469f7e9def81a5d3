"""Random-weight Nemotron-H models of several shapes, built in-process for tests."""

from __future__ import annotations

import torch
from transformers import NemotronHConfig, NemotronHForCausalLM

from nemo_explore.layer_types import to_hf


def tiny_config(pattern: str = "M*-EM", **overrides) -> NemotronHConfig:
    """A small config with every knob that matters for instrumentation set to a non-trivial value:
    Mamba groups > 1, grouped-query attention, a chunk size shorter than the test sequences."""
    kw = dict(
        vocab_size=97,
        hidden_size=32,
        layers_block_type=to_hf(pattern),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=48,
        mamba_num_heads=8,
        mamba_head_dim=4,
        ssm_state_size=8,
        n_groups=2,
        conv_kernel=4,
        chunk_size=8,
        n_routed_experts=6,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        moe_shared_expert_intermediate_size=24,
        routed_scaling_factor=2.5,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    kw.update(overrides)
    return NemotronHConfig(**kw)


def random_model(pattern: str = "M*-EM", seed: int = 0, **overrides) -> NemotronHForCausalLM:
    """A random-weight model in eval mode, float32, with non-trivial Mamba dt / A / D parameters."""
    torch.manual_seed(seed)
    model = NemotronHForCausalLM(tiny_config(pattern, **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("A_log", "D", "dt_bias", "norm.weight", "norm_f.weight")):
                p.add_(0.3 * torch.randn_like(p))
            if name.endswith("e_score_correction_bias"):
                p.normal_(0, 0.05)
        for buf_name, b in model.named_buffers():
            if buf_name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.05)
    return model
