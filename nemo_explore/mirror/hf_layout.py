"""Where transformers keeps things in a Nemotron-H model: the one module that reads HF's layout.

``NemotronHForCausalLM`` is a tree of modules with HF's attribute names (``hf.model.layers[i].mixer``,
``hf.model.norm_f``, ``hf.lm_head``, a Mamba mixer's ``A_log``...), and its config has Nemotron-H's field
names (``layers_block_type``, ``mamba_num_heads``...). Everything in the package that needs one of them asks
an accessor here, so a transformers release that renames an attribute is fixed in this file.

The exceptions are the mirror — ``mixers/``, ``guard.py``, ``instrument.py``, ``versions.py`` — which
re-implements HF's forward code and so reads HF's private names by design. ``tests/test_layout.py`` fails
when any other module touches one of HF's module attributes.

Arguments are named for what they take: ``hf`` the causal LM (``HookedNemotronH.hf_model``), ``i`` a block
index (0..n-1, as ``hf.model.layers`` counts: no negative indices), a mixer of the kind named (``mamba``,
``attn``, ``mlp``, ``moe``: what :func:`mixer` returns for such a block), ``config`` the HF config. The
config's common fields (``vocab_size``, ``hidden_size``, ``num_attention_heads``, ``num_hidden_layers``,
the ``*_token_id`` — transformers' ``PretrainedConfig`` documents them for every model) are read directly.
"""

from __future__ import annotations

import torch

__all__ = [
    "attention_head_dim",
    "attn_head_dim",
    "attn_kv_repeats",
    "attn_scaling",
    "block",
    "block_norm",
    "block_types",
    "blocks",
    "embedding",
    "experts_per_token",
    "final_norm",
    "has_layout",
    "key_proj",
    "mamba_A_log",
    "mamba_D",
    "mamba_dt_bias",
    "max_positions",
    "mixer",
    "mlp_activation",
    "mlp_down",
    "mlp_up",
    "mlp_width",
    "n_experts",
    "n_kv_heads",
    "n_mamba_heads",
    "norm_eps",
    "norm_epsilon",
    "offloaded_value",
    "output_proj",
    "query_proj",
    "routed_experts",
    "router",
    "shared_expert",
    "unembed",
    "value_proj",
]


# ----------------------------------------------------------------------------------------- the model
def has_layout(hf) -> bool:
    """Whether ``hf`` has the causal LM's layout: a block list under its base model, and an unembedding."""
    return getattr(getattr(hf, "model", None), "layers", None) is not None and hasattr(hf, "lm_head")


def blocks(hf) -> torch.nn.ModuleList:
    """The blocks, in order (HF: ``hf.model.layers``); each is ``norm -> mixer`` plus the residual add."""
    return hf.model.layers


def block(hf, i: int) -> torch.nn.Module:
    """Block ``i`` (HF: ``hf.model.layers[i]``): its forward takes and returns the residual stream."""
    return blocks(hf)[i]


def mixer(hf, i: int) -> torch.nn.Module:
    """Block ``i``'s mixer (HF: ``.mixer``): the Mamba-2 layer, attention, MLP or MoE of that block."""
    return block(hf, i).mixer


def block_norm(hf, i: int) -> torch.nn.Module:
    """Block ``i``'s pre-norm, the RMSNorm before its mixer (HF: ``.norm``; TransformerLens' ``ln1``)."""
    return block(hf, i).norm


def final_norm(hf) -> torch.nn.Module:
    """The final RMSNorm, between the last block and the unembedding (HF: ``hf.model.norm_f``)."""
    return hf.model.norm_f


def embedding(hf) -> torch.nn.Embedding:
    """The token embedding (HF: ``hf.model.embeddings``), weight ``(vocab, d)``."""
    return hf.model.embeddings


def unembed(hf) -> torch.nn.Linear:
    """The unembedding (HF: ``hf.lm_head``), weight ``(vocab, d)``: logits = unembed(final_norm(resid))."""
    return hf.lm_head


def norm_eps(norm) -> float:
    """The epsilon of an RMSNorm module (a block's pre-norm or the final norm): ``x·rsqrt(mean x² + eps)``."""
    return norm.variance_epsilon


def norm_rms(norm, x: torch.Tensor) -> torch.Tensor:
    """The divisor ``√(mean x² + eps)`` (float32, ``(..., 1)``) of RMSNorm ``norm`` for its input ``x``
    ``(..., d)``: its mean square taken as the norm takes it (in float32), which then multiplies ``x`` by
    the ``rsqrt`` of the same sum (equal to ``1 / scale`` within float32 rounding)."""
    return x.to(torch.float32).pow(2).mean(-1, keepdim=True).add(norm_eps(norm)).sqrt()


# ----------------------------------------------------------------------------------------- mixers
def mamba_A_log(mamba) -> torch.nn.Parameter:
    """A Mamba-2 mixer's ``log(-A)`` ``(h,)`` (HF: ``A_log``): head j decays by ``exp(-dt·exp(A_log[j]))``
    per token, so ``A = -exp(A_log)``."""
    return mamba.A_log


def mamba_dt_bias(mamba) -> torch.nn.Parameter:
    """A Mamba-2 mixer's step-size bias ``(h,)`` (HF: ``dt_bias``): ``dt = softplus(dt_raw + dt_bias)``."""
    return mamba.dt_bias


def mamba_D(mamba) -> torch.nn.Parameter:
    """A Mamba-2 mixer's skip weight ``(h,)`` (HF: ``D``): ``y = S C + D x``."""
    return mamba.D


def query_proj(attn) -> torch.nn.Linear:
    """An attention mixer's query projection (HF: ``q_proj``), weight ``(h·d_head, d)``."""
    return attn.q_proj


def key_proj(attn) -> torch.nn.Linear:
    """An attention mixer's key projection (HF: ``k_proj``), weight ``(kv_heads·d_head, d)``."""
    return attn.k_proj


def value_proj(attn) -> torch.nn.Linear:
    """An attention mixer's value projection (HF: ``v_proj``), weight ``(kv_heads·d_head, d)``."""
    return attn.v_proj


def output_proj(attn) -> torch.nn.Linear:
    """An attention mixer's output projection (HF: ``o_proj``), weight ``(d, h·d_head)``."""
    return attn.o_proj


def attn_head_dim(attn) -> int:
    """The head size an attention mixer was built with (HF: ``head_dim``)."""
    return attn.head_dim


def attn_kv_repeats(attn) -> int:
    """How many query heads share each key/value head of an attention mixer (grouped-query attention)."""
    return attn.config.num_attention_heads // n_kv_heads(attn.config)


def attn_scaling(attn) -> float:
    """The factor an attention mixer multiplies q·k by before the softmax (HF: ``scaling``, head_dim^-½)."""
    return attn.scaling


def mlp_up(mlp) -> torch.nn.Linear:
    """A dense MLP's input projection (HF: ``up_proj``), weight ``(d_mlp, d)`` (also the shared expert's)."""
    return mlp.up_proj


def mlp_down(mlp) -> torch.nn.Linear:
    """A dense MLP's output projection (HF: ``down_proj``), weight ``(d, d_mlp)``."""
    return mlp.down_proj


def router(moe) -> torch.nn.Module:
    """A MoE mixer's top-k router (HF: ``gate``), weight ``(n_experts, d)``."""
    return moe.gate


def routed_experts(moe) -> torch.nn.Module:
    """A MoE mixer's routed experts, all in one module (HF: ``experts``)."""
    return moe.experts


def shared_expert(moe) -> torch.nn.Module:
    """A MoE mixer's shared expert, a dense MLP every token goes through (HF: ``shared_experts``)."""
    return moe.shared_experts


# ----------------------------------------------------------------------------------------- accelerate
def offloaded_value(model: torch.nn.Module, name: str) -> torch.Tensor | None:
    """The value of state-dict entry ``name`` of ``model`` that an accelerate offload hook keeps (the entry
    itself is then on the meta device), or None where no hook holds it. The owning module's hook is asked
    first, then its ancestors' (accelerate's ``_hf_hook``, its ``weights_map``; a ``SequentialHook`` holds
    several hooks)."""
    path = name.split(".")
    for depth in range(len(path) - 1, -1, -1):
        hook = getattr(model.get_submodule(".".join(path[:depth])), "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or [hook]:
            weights = getattr(h, "weights_map", None)
            if weights is not None:
                try:
                    return weights[".".join(path[depth:])]
                except KeyError:
                    pass
    return None


# ----------------------------------------------------------------------------------------- the config
def block_types(config) -> list[str]:
    """The kind of each block, in HF's names (``layers_block_type``: ``'mamba'``, ``'attention'``...)."""
    return config.layers_block_type


def n_kv_heads(config) -> int:
    """Key/value heads of the attention layers (``num_key_value_heads``)."""
    return config.num_key_value_heads


def attention_head_dim(config) -> int:
    """The attention layers' head size (``head_dim``, else hidden size / heads, as HF's attention does)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def mlp_width(config) -> int:
    """The dense MLP layers' hidden width (``intermediate_size``)."""
    return config.intermediate_size


def mlp_activation(config) -> str:
    """The MLP and expert activation's name (``mlp_hidden_act``)."""
    return config.mlp_hidden_act


def max_positions(config) -> int:
    """The context length the config declares (``max_position_embeddings``)."""
    return config.max_position_embeddings


def norm_epsilon(config) -> float:
    """The RMSNorms' epsilon as configured (``layer_norm_epsilon``); a built norm's own: :func:`norm_eps`."""
    return config.layer_norm_epsilon


def n_mamba_heads(config) -> int:
    """Heads per Mamba-2 layer (``mamba_num_heads``)."""
    return config.mamba_num_heads


def n_experts(config) -> int | None:
    """Routed experts per MoE layer (``n_routed_experts``; None where the config has none)."""
    return getattr(config, "n_routed_experts", None)


def experts_per_token(config) -> int | None:
    """Experts the router picks per token (``num_experts_per_tok``; None where the config has none)."""
    return getattr(config, "num_experts_per_tok", None)
