"""Nemotron-H configurations from a few knobs, presets for tests, and shortened copies of real ones.

>>> build_config(n_layers=12, attention_every=4, mlp_every=2, hidden_size=256)   # 'M-M*M-M*M-M*'
>>> small_config("all")                        # every layer type, tiny widths, for tests
>>> shortened(registry.get("nvidia/Nemotron-H-8B-Base-8K"), 8)    # 8B widths, 8 layers, same mix
"""

from __future__ import annotations

import difflib
import math
from dataclasses import fields as dc_fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import NemotronHConfig

from ..core.layer_types import ATTENTION, LAYER_TYPES, MAMBA, MLP, MOE, parse_pattern, to_hf, to_pattern

__all__ = ["build_config", "recommended_defaults", "shortened", "small_config"]


def recommended_defaults() -> dict[str, Any]:
    """Sensible widths and ratios, taken from the released checkpoints (see ``ne.registry``).

    Widths are Nemotron-H 8B's (hidden 4096; 32 query / 8 key-value heads of 128; Mamba 128 heads × 64,
    so heads × head_dim = 2 × hidden; state 128; 8 groups; conv 4; chunk 128; ReLU² MLP 21504 = 5.25 ×
    hidden). MoE widths are Nemotron 3 Nano 30B-A3B's (128 experts of 1856, one shared expert of 3712 = 2
    × expert, top-6, sigmoid router scaled by 2.5, one routing group). Ratios: released models put an FFN
    (MLP or MoE) on every second layer and attention on about one layer in twelve (8B: 4 of 52, Nano
    12B v2: 6 of 62, Nano 30B-A3B: 6 of 52, Super: 8 of 88). Vocabulary 131072 throughout.
    """
    return {
        # widths
        "vocab_size": 131072,
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 21504,
        "mamba_num_heads": 128,
        "mamba_head_dim": 64,
        "ssm_state_size": 128,
        "n_groups": 8,
        "conv_kernel": 4,
        "chunk_size": 128,
        # MoE
        "n_routed_experts": 128,
        "num_experts_per_tok": 6,
        "moe_intermediate_size": 1856,
        "moe_shared_expert_intermediate_size": 3712,
        "routed_scaling_factor": 2.5,
        "n_group": 1,
        "topk_group": 1,
        # layer mix (build_config knobs)
        "attention_every": 12,
        "ffn_every": 2,
    }


# The widths build_config fills in when not given (the layer-mix knobs are not config fields).
_WIDTH_KEYS = [k for k in recommended_defaults() if k not in ("attention_every", "ffn_every")]


def build_config(
    n_layers: int | None = None,
    *,
    attention_every: int | None = None,
    moe_every: int | None = None,
    mlp_every: int | None = None,
    pattern: str | list[str] | None = None,
    hidden_size: int | None = None,
    num_attention_heads: int | None = None,
    num_key_value_heads: int | None = None,
    head_dim: int | None = None,
    mamba_num_heads: int | None = None,
    **overrides: Any,
) -> NemotronHConfig:
    """A ``transformers.NemotronHConfig`` from a few knobs.

    Layers: an explicit ``pattern`` (``'M-M*ME'`` or a list of any layer-type spelling) wins over the
    knobs. Otherwise layer i (counting from 1) of ``n_layers`` is attention if i is a multiple of
    ``attention_every``, else MoE if a multiple of ``moe_every``, else MLP if a multiple of
    ``mlp_every``, else Mamba. With none of the three knobs given, the released models' mix is used:
    attention every 12th layer, an MLP on every other layer.

    Widths default to ``recommended_defaults()``. Unless given too, ``head_dim`` = hidden / heads when
    the hidden size or the head count is given; with ``hidden_size`` given, ``mamba_num_heads`` = 2 ×
    hidden / mamba_head_dim and ``intermediate_size`` = 4 × hidden (the MoE widths stay as they are);
    ``n_groups`` is the largest divisor of the Mamba head count up to 8.
    Any other ``NemotronHConfig`` field may be passed as a keyword. Impossible combinations (heads
    that do not divide, top-k above the experts...) raise ``ValueError``.
    """
    from transformers import NemotronHConfig

    _check_field_names(overrides, NemotronHConfig)
    kinds = _layer_kinds(n_layers, pattern, attention_every, moe_every, mlp_every)

    defaults = recommended_defaults()
    kw: dict[str, Any] = {k: defaults[k] for k in _WIDTH_KEYS}
    given = {
        "hidden_size": hidden_size,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
    }
    kw.update({k: v for k, v in given.items() if v is not None})
    kw.update(overrides)
    if head_dim is None and (hidden_size is not None or num_attention_heads is not None):
        if kw["hidden_size"] % kw["num_attention_heads"]:
            raise ValueError(
                f"num_attention_heads={kw['num_attention_heads']} does not divide "
                f"hidden_size={kw['hidden_size']}: choose a head count that does, or pass head_dim="
            )
        head_dim = kw["hidden_size"] // kw["num_attention_heads"]
    if head_dim is not None:
        kw["head_dim"] = head_dim
    if mamba_num_heads is None and hidden_size is not None and "mamba_num_heads" not in overrides:
        if (2 * hidden_size) % kw["mamba_head_dim"]:
            raise ValueError(
                f"mamba_head_dim={kw['mamba_head_dim']} does not divide 2 × hidden_size={2 * hidden_size}: "
                "pass mamba_num_heads= (or a mamba_head_dim that divides it)"
            )
        mamba_num_heads = 2 * hidden_size // kw["mamba_head_dim"]
    if mamba_num_heads is not None:
        kw["mamba_num_heads"] = mamba_num_heads
    if hidden_size is not None and "intermediate_size" not in overrides:
        kw["intermediate_size"] = 4 * hidden_size
    if "n_groups" not in overrides:  # as many as the heads allow, up to the recommended 8
        kw["n_groups"] = math.gcd(kw["mamba_num_heads"], defaults["n_groups"])
    kw["layers_block_type"] = to_hf(kinds)
    _validate(kw, kinds)
    return NemotronHConfig(**kw)


def small_config(kind: str = "all", **overrides: Any) -> NemotronHConfig:
    """A tiny config for tests (random weights build in milliseconds on CPU).

    ``kind``: ``"dense"`` (``M-M*M-``: Mamba, MLP, attention), ``"moe"`` (``MEM*ME``: Mamba, MoE,
    attention) or ``"all"`` (``M-M*ME``: all four layer types). Widths: hidden 32, 4 query / 2 key-value
    heads of 8, Mamba 8 heads × 4 with state 8 in 2 groups, chunk 8, MLP 48, 6 experts of 16 (top-2,
    shared 24), vocabulary 97. ``overrides`` go to ``build_config``.
    """
    patterns = {"dense": "M-M*M-", "moe": "MEM*ME", "all": "M-M*ME"}
    if kind not in patterns:
        raise ValueError(f"small_config kind must be one of {', '.join(patterns)}, not {kind!r}")
    kw: dict[str, Any] = dict(
        pattern=patterns[kind],
        vocab_size=97,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=48,
        mamba_num_heads=8,
        mamba_head_dim=4,
        ssm_state_size=8,
        n_groups=2,
        chunk_size=8,
        n_routed_experts=6,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        moe_shared_expert_intermediate_size=24,
        routed_scaling_factor=2.5,
    )
    kw.update(overrides)
    return build_config(**kw)


def shortened(config: NemotronHConfig, n_layers: int) -> NemotronHConfig:
    """The same model with ``n_layers`` layers: same widths, the same mix of layer types, in order.

    Each layer type keeps a share of the layers proportional to its share in ``config`` (at least one
    layer for each type present); the kept layers of each type are spread evenly over that type's
    layers, so their order follows the original pattern. For CPU benchmarks of a realistic-width model.
    """
    from transformers import NemotronHConfig

    kinds = parse_pattern(config.layers_block_type)
    present = [t for t in LAYER_TYPES if t in kinds]
    if not isinstance(n_layers, int) or isinstance(n_layers, bool):
        raise TypeError(f"n_layers must be an int, not {type(n_layers).__name__}")
    if n_layers > len(kinds):
        raise ValueError(f"cannot shorten a {len(kinds)}-layer model to {n_layers} layers")
    if n_layers < len(present):
        raise ValueError(
            f"{n_layers} layers cannot keep the {len(present)} layer types of this model "
            f"({', '.join(present)}): use n_layers >= {len(present)}"
        )
    quota = _apportion({t: kinds.count(t) for t in present}, n_layers)
    keep = set()
    for t, k in quota.items():
        where = [i for i, x in enumerate(kinds) if x == t]
        keep.update(where[(2 * j + 1) * len(where) // (2 * k)] for j in range(k))  # bucket centres
    out = NemotronHConfig.from_dict(config.to_dict())
    out.layers_block_type = [config.layers_block_type[i] for i in sorted(keep)]
    return out


# ---------------------------------------------------------------------------------------------- helpers


def _layer_kinds(n_layers, pattern, attention_every, moe_every, mlp_every) -> list[str]:
    if pattern is not None:
        kinds = parse_pattern(pattern)
        if not kinds:
            raise ValueError("pattern is empty: a model needs at least one layer")
        if n_layers is not None and n_layers != len(kinds):
            raise ValueError(
                f"n_layers={n_layers} but the pattern {to_pattern(kinds)!r} has {len(kinds)} layers: "
                "pass one or the other"
            )
        return kinds
    if n_layers is None:
        raise ValueError(
            "build_config needs n_layers (with attention_every/moe_every/mlp_every) or a pattern"
        )
    if not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be a positive int, not {n_layers!r}")
    knobs = {"attention_every": attention_every, "moe_every": moe_every, "mlp_every": mlp_every}
    for name, every in knobs.items():
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ValueError(f"{name} must be a positive int or None, not {every!r}")
    if all(v is None for v in knobs.values()):
        d = recommended_defaults()
        attention_every, mlp_every = d["attention_every"], d["ffn_every"]
    kinds = []
    for i in range(1, n_layers + 1):
        if attention_every and i % attention_every == 0:
            kinds.append(ATTENTION)
        elif moe_every and i % moe_every == 0:
            kinds.append(MOE)
        elif mlp_every and i % mlp_every == 0:
            kinds.append(MLP)
        else:
            kinds.append(MAMBA)
    return kinds


def _check_field_names(overrides: dict, config_cls) -> None:
    known = {f.name for f in dc_fields(config_cls)} | {
        "hybrid_override_pattern",
        "mtp_hybrid_override_pattern",
    }
    for key in overrides:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"build_config got an unknown NemotronHConfig field {key!r}.{hint}")
    if "layers_block_type" in overrides or "hybrid_override_pattern" in overrides:
        raise TypeError("pass the layer types as pattern= (a string like 'M-M*ME' or a list of layer types)")


def _validate(kw: dict, kinds: list[str]) -> None:
    """Clear errors for the combinations NemotronHForCausalLM cannot build or would build wrongly."""
    for key in ("hidden_size", "vocab_size", "num_attention_heads", "num_key_value_heads", "head_dim"):
        _positive(kw, key)
    if kw["num_attention_heads"] % kw["num_key_value_heads"]:
        raise ValueError(
            f"num_key_value_heads={kw['num_key_value_heads']} must divide "
            f"num_attention_heads={kw['num_attention_heads']} (grouped-query attention)"
        )
    if MAMBA in kinds:
        for key in (
            "mamba_num_heads",
            "mamba_head_dim",
            "ssm_state_size",
            "n_groups",
            "conv_kernel",
            "chunk_size",
        ):
            _positive(kw, key)
        if kw["mamba_num_heads"] % kw["n_groups"]:
            raise ValueError(
                f"n_groups={kw['n_groups']} must divide mamba_num_heads={kw['mamba_num_heads']} "
                "(each group of B, C serves a contiguous block of heads)"
            )
    if MLP in kinds:
        _positive(kw, "intermediate_size")
    if MOE in kinds:
        for key in (
            "n_routed_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
            "n_group",
            "topk_group",
        ):
            _positive(kw, key)
        experts, k = kw["n_routed_experts"], kw["num_experts_per_tok"]
        groups, topk_groups = kw["n_group"], kw["topk_group"]
        if experts % groups:
            raise ValueError(f"n_group={groups} must divide n_routed_experts={experts}")
        if experts // groups < 2:
            raise ValueError(
                f"{experts} experts in {groups} routing groups leaves fewer than 2 per group; the router "
                "scores a group by its two best experts: use fewer groups or more experts"
            )
        if topk_groups > groups:
            raise ValueError(f"topk_group={topk_groups} cannot exceed n_group={groups}")
        if k > topk_groups * (experts // groups):
            raise ValueError(
                f"num_experts_per_tok={k} exceeds the {topk_groups * (experts // groups)} experts "
                f"reachable in topk_group={topk_groups} of n_group={groups} groups of {experts // groups}"
            )
        if (kw.get("moe_shared_expert_intermediate_size") or 0) < 1:
            raise ValueError("moe_shared_expert_intermediate_size must be positive: every MoE layer has one")
        if kw.get("moe_latent_size") is not None:
            _positive(kw, "moe_latent_size")


def _positive(kw: dict, key: str) -> None:
    value = kw.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{key} must be a positive int, not {value!r}")


def _apportion(counts: dict[str, int], n: int) -> dict[str, int]:
    """Split n layers over the types in proportion to counts, at least one each (largest remainder)."""
    total = sum(counts.values())
    exact = {t: n * c / total for t, c in counts.items()}
    quota = {t: max(1, int(exact[t])) for t in counts}
    by_remainder = sorted(counts, key=lambda t: exact[t] - int(exact[t]), reverse=True)
    while sum(quota.values()) < n:
        t = next(t for t in by_remainder if quota[t] < counts[t] and quota[t] <= exact[t])
        quota[t] += 1
    while sum(quota.values()) > n:  # the minimum of one gave a rare type more than its share
        t = max((t for t in counts if quota[t] > 1), key=lambda t: quota[t] - exact[t])
        quota[t] -= 1
    return quota
