"""The four kinds of Nemotron-H layer and the three ways configs spell them.

The package speaks of ``mamba``, ``attention``, ``mlp`` and ``moe``. HF transformers >= 5 says
``linear_attention``, ``full_attention``, ``mlp``, ``moe``; legacy configs carry a
``hybrid_override_pattern`` string of ``M``, ``*``, ``-``, ``E`` (or say ``mamba`` / ``attention``).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

MAMBA, ATTENTION, MLP, MOE = "mamba", "attention", "mlp", "moe"
LAYER_TYPES = (MAMBA, ATTENTION, MLP, MOE)

PATTERN_CHAR = {MAMBA: "M", ATTENTION: "*", MLP: "-", MOE: "E"}
HF_NAME = {MAMBA: "linear_attention", ATTENTION: "full_attention", MLP: "mlp", MOE: "moe"}
# One colour per kind (teal, orange, grey, purple) for every figure, widget and table of the package.
LAYER_COLORS = {MAMBA: "#17a398", ATTENTION: "#f28e2b", MLP: "#9aa0a6", MOE: "#8e5fc2"}
# The sub-namespace of a block's hook points: blocks.{i}.attn.hook_pattern, blocks.{i}.mamba.hook_x, ...
HOOK_PREFIX = {MAMBA: "mamba", ATTENTION: "attn", MLP: "mlp", MOE: "moe"}

_ALIASES = {
    **{t: t for t in LAYER_TYPES},
    **{c: t for t, c in PATTERN_CHAR.items()},
    **{h: t for t, h in HF_NAME.items()},
    "attn": ATTENTION,
    "ssm": MAMBA,
    "mamba2": MAMBA,
    "dense": MLP,
}


def canonical(kind: str) -> str:
    """Map any spelling of a layer type (``'M'``, ``'linear_attention'``, ``'mamba'``...) to ours."""
    key = kind if kind in _ALIASES else str(kind).strip().lower()
    if key not in _ALIASES:
        raise ValueError(
            f"unknown layer type {kind!r}: use one of {', '.join(LAYER_TYPES)} "
            f"(or the HF names {', '.join(HF_NAME.values())}, or the pattern chars M * - E)"
        )
    return _ALIASES[key]


def parse_pattern(pattern: str | Iterable[str]) -> list[str]:
    """``'M*-E'`` or ``['linear_attention', 'moe', ...]`` -> ``['mamba', 'attention', 'mlp', 'moe']``."""
    items = list(pattern)
    try:
        return [canonical(x) for x in items]
    except ValueError as err:
        raise ValueError(f"cannot parse layer pattern {pattern!r}: {err}") from None


def to_pattern(layer_types: Iterable[str]) -> str:
    """``['mamba', 'attention']`` -> ``'M*'``."""
    return "".join(PATTERN_CHAR[canonical(t)] for t in layer_types)


def to_hf(layer_types: Iterable[str]) -> list[str]:
    """Our names (or any spelling) -> HF transformers >= 5 names for ``layers_block_type``."""
    return [HF_NAME[canonical(t)] for t in layer_types]


def block_index(layer, n_layers: int, what: str, allow_end: bool = False) -> int:
    """A block index as a user may give it (an int, a 0-d integer tensor, a numpy integer; negative counts
    from the end) -> 0..n_layers-1 (or n_layers, past the last block, with ``allow_end``); else an error
    that says what exists. ``what``: the call, for the message."""
    try:
        i = operator.index(layer)
    except TypeError:
        raise TypeError(f"{what}: a block index must be an integer, got {layer!r}") from None
    top = n_layers if allow_end else n_layers - 1
    if not -n_layers <= i <= top:
        end = f", or {n_layers} for after the last" if allow_end else ""
        raise IndexError(
            f"{what}: this model has {n_layers} blocks: 0..{n_layers - 1} (negative counts from the end{end})"
        )
    return i + n_layers if i < 0 else i
