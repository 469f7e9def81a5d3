"""What transformers' ``NemotronHForCausalLM`` holds, from a config alone: its parameters and buffers by
state-dict name and size, per component, and which of them its loader keeps in float32.

This mirrors HF's module tree (``model.layers.{i}.mixer.A_log``...) and its loading dtype plan, so it lives
with the mirror; ``checkpoints/describe.py`` asks it. ``tests/test_describe.py`` checks every name and
size against a model built from the config, and the dtype plan against a model loaded in bfloat16 and
float16.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from ..core.layer_types import ATTENTION, LAYER_TYPES, MAMBA, MLP, MOE

__all__ = ["expert_params", "hf_ties_embeddings", "kept_in_float32", "named_sizes", "param_counts"]


def param_counts(c, counts: dict[str, int]) -> dict[str, int]:
    """Parameters per component of NemotronHForCausalLM(c), from the config alone."""
    d, vocab = c.hidden_size, c.vocab_size
    return {
        "embeddings": vocab * d,
        "lm_head": 0 if (c.tie_word_embeddings and hf_ties_embeddings()) else vocab * d,
        "norms": d * (len(c.layers_block_type) + 1),  # one pre-norm per block, norm_f
        **{kind: counts[kind] * sum(_MIXER_TENSORS[kind](c).values()) for kind in LAYER_TYPES},
    }


def named_sizes(c, layer_types: list[str]) -> Iterable[tuple[str, int]]:
    """(state_dict name, elements) of every parameter and buffer of NemotronHForCausalLM(c)."""
    d = c.hidden_size
    yield "model.embeddings.weight", c.vocab_size * d
    tables = {kind: {**_MIXER_TENSORS[kind](c), **_mixer_buffers(c, kind)} for kind in LAYER_TYPES}
    for i, kind in enumerate(layer_types):
        yield f"model.layers.{i}.norm.weight", d
        for local, n in tables[kind].items():
            yield f"model.layers.{i}.mixer.{local}", n
    yield "model.norm_f.weight", d
    if not (c.tie_word_embeddings and hf_ties_embeddings()):
        yield "lm_head.weight", c.vocab_size * d


def _mamba_tensors(c) -> dict[str, int]:
    d, h = c.hidden_size, c.mamba_num_heads
    inner = h * c.mamba_head_dim
    conv_dim = inner + 2 * c.n_groups * c.ssm_state_size  # x, B, C go through the conv together
    proj = inner + conv_dim + h  # in_proj -> gate z, conv input, dt
    t = {"dt_bias": h, "A_log": h, "D": h, "in_proj.weight": d * proj}
    t["conv1d.weight"] = conv_dim * c.conv_kernel  # depthwise
    if c.use_conv_bias:
        t["conv1d.bias"] = conv_dim
    t["norm.weight"] = inner  # gated RMSNorm
    t["out_proj.weight"] = inner * d
    if c.use_bias:
        t["in_proj.bias"], t["out_proj.bias"] = proj, d
    return t


def _attention_tensors(c) -> dict[str, int]:  # NemotronHAttention has no biases
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    d = c.hidden_size
    return {"q_proj.weight": q * d, "k_proj.weight": kv * d, "v_proj.weight": kv * d, "o_proj.weight": d * q}


def _mlp_tensors(d: int, width: int, bias: bool, prefix: str = "") -> dict[str, int]:
    t = {f"{prefix}up_proj.weight": width * d, f"{prefix}down_proj.weight": d * width}
    if bias:
        t[f"{prefix}up_proj.bias"], t[f"{prefix}down_proj.bias"] = width, d
    return t


def expert_params(c) -> int:
    width = c.moe_latent_size if c.moe_latent_size is not None else c.hidden_size
    return 2 * width * c.moe_intermediate_size  # up and down, no gate (ReLU²)


def _moe_tensors(c) -> dict[str, int]:
    d, experts = c.hidden_size, c.n_routed_experts
    t = {  # the routed experts are two fused 3-d tensors
        "experts.up_proj": experts * expert_params(c) // 2,
        "experts.down_proj": experts * expert_params(c) // 2,
        "gate.weight": experts * d,  # the router
        **_mlp_tensors(d, c.moe_shared_expert_intermediate_size, c.mlp_bias, "shared_experts."),
    }
    latent = c.moe_latent_size
    if latent is not None:  # fc1 / fc2 latent projections
        t["fc1_latent_proj.weight"], t["fc2_latent_proj.weight"] = latent * d, d * latent
        if c.mlp_bias:
            t["fc1_latent_proj.bias"], t["fc2_latent_proj.bias"] = latent, d
    return t


_MIXER_TENSORS = {
    MAMBA: _mamba_tensors,
    ATTENTION: _attention_tensors,
    MLP: lambda c: _mlp_tensors(c.hidden_size, c.intermediate_size, c.mlp_bias),
    MOE: _moe_tensors,
}


def _mixer_buffers(c, kind: str) -> dict[str, int]:
    return {"gate.e_score_correction_bias": c.n_routed_experts} if kind == MOE else {}


def kept_in_float32(dtype: torch.dtype) -> re.Pattern | None:
    """What the installed transformers keeps in float32 when it loads NemotronHForCausalLM in ``dtype``.

    Mirrors ``PreTrainedModel._get_dtype_plan`` (the ``_strict`` patterns for float16 and bfloat16, the
    others for float16 only; a model collects those of its PreTrainedModel submodules) and
    ``core_model_loading.build_glob_alternation``, which turns each pattern into a regular expression
    (``*`` -> ``.*``) searched in the full name of each tensor it loads.
    """
    from transformers import NemotronHForCausalLM, NemotronHModel

    if dtype not in (torch.float16, torch.bfloat16):
        return None
    patterns: set[str] = set()
    for cls in (NemotronHForCausalLM, NemotronHModel):
        patterns.update(getattr(cls, "_keep_in_fp32_modules_strict", None) or ())
        if dtype == torch.float16:
            patterns.update(getattr(cls, "_keep_in_fp32_modules", None) or ())
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p.replace('*', '.*')})" for p in sorted(patterns)))


def hf_ties_embeddings() -> bool:
    """Whether transformers' NemotronHForCausalLM ties lm_head to the embeddings at all (5.x: no)."""
    from transformers import NemotronHForCausalLM

    return bool(getattr(NemotronHForCausalLM, "_tied_weights_keys", None))
