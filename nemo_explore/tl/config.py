"""``model.cfg``: the HF config, readable under TransformerLens' names too.

``model.cfg.n_layers``, ``d_model``, ``n_heads``... are computed from the HF config; every HF attribute
(``hidden_size``, ``mamba_num_heads``, ``layers_block_type``...) reads and writes through to it. The HF
config itself is ``model.config`` (what transformers functions take).
"""

from __future__ import annotations

from typing import Any

from ..mirror import hf_layout

# TL config name -> how to compute it from the HF config ``c`` and the HookedNemotronH ``m``.
_TL_NAMES = {
    "n_layers": lambda c, m: c.num_hidden_layers,
    "d_model": lambda c, m: c.hidden_size,
    "n_heads": lambda c, m: c.num_attention_heads,
    "n_key_value_heads": lambda c, m: hf_layout.n_kv_heads(c),
    "d_head": lambda c, m: hf_layout.attention_head_dim(c),
    "d_vocab": lambda c, m: c.vocab_size,
    "d_vocab_out": lambda c, m: c.vocab_size,
    "d_mlp": lambda c, m: hf_layout.mlp_width(c),
    "n_ctx": lambda c, m: hf_layout.max_positions(c),
    "eps": lambda c, m: hf_layout.norm_epsilon(c),
    "act_fn": lambda c, m: hf_layout.mlp_activation(c),
    "normalization_type": lambda c, m: "RMS",
    "final_rms": lambda c, m: True,
    "gated_mlp": lambda c, m: False,
    "attn_only": lambda c, m: False,
    "positional_embedding_type": lambda c, m: "none",
    "original_architecture": lambda c, m: "NemotronHForCausalLM",
    "model_name": lambda c, m: getattr(c, "_name_or_path", "") or "nemotron_h",
    "num_experts": lambda c, m: hf_layout.n_experts(c),
    "experts_per_token": lambda c, m: hf_layout.experts_per_token(c),
    "device": lambda c, m: m.device,
    "dtype": lambda c, m: hf_layout.embedding(m.hf_model).weight.dtype,
    "default_prepend_bos": lambda c, m: True,
    "layer_types": lambda c, m: list(m.layer_types),
    "ungroup_grouped_query_attention": lambda c, m: m._options.ungroup_grouped_query_attention,
}


class TLConfig:
    """The model's HF config with TransformerLens' names added (read-only; they follow the HF values).

    ``n_layers`` counts every block (all four kinds: ``blocks.i`` numbering includes them all);
    ``n_heads`` / ``d_head`` / ``n_key_value_heads`` are the attention layers' (Mamba heads:
    ``mamba_num_heads`` × ``mamba_head_dim``); ``d_mlp`` is the dense MLP's width (MoE experts:
    ``moe_intermediate_size``); ``positional_embedding_type`` is ``'none'``.
    """

    def __init__(self, hf_config, model) -> None:
        object.__setattr__(self, "_hf", hf_config)
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_tl", _TL_NAMES)

    def __getattr__(self, name: str):
        tl = object.__getattribute__(self, "_tl")
        if name in tl:
            return tl[name](self._hf, self._model)
        return getattr(self._hf, name)

    def __setattr__(self, name: str, value) -> None:
        if name in self._tl:
            raise AttributeError(
                f"cfg.{name} is TransformerLens' name for a value of the HF config: set that"
            )
        setattr(self._hf, name, value)

    def __dir__(self) -> list[str]:
        return sorted({*dir(self._hf), *self._tl})

    def __eq__(self, other) -> bool:
        return other is self or other is self._hf

    __hash__ = object.__hash__

    def to_dict(self) -> dict[str, Any]:
        """The HF config's dict (what it saves)."""
        return self._hf.to_dict()

    def tl_dict(self) -> dict[str, Any]:
        """Every TransformerLens name and its value."""
        return {k: getattr(self, k) for k in self._tl}

    def __repr__(self) -> str:
        tl = ", ".join(
            f"{k}={getattr(self, k)!r}" for k in ("n_layers", "d_model", "n_heads", "d_head", "d_vocab")
        )
        return f"TLConfig({tl}; HF config: {type(self._hf).__name__})"
