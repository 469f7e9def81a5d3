"""The hook-name contract: which points each kind of block has, and clear words for wrong names.

Names: ``hook_embed``, ``blocks.{i}.hook_{resid_pre,scale,mixer_in,mixer_out,resid_post}``, the mixer points
``blocks.{i}.{attn,mamba,moe,mlp}.hook_*`` of block i's kind, and ``ln_final.hook_{scale,normalized}``.
"""

from __future__ import annotations

import difflib
import re

from .layer_types import ATTENTION, HOOK_PREFIX, MAMBA, MLP, MOE
from .points import BLOCK, MODEL, POINTS, names

# Every list of points comes from the one table of them, points.POINTS (forward order within a kind).
MODEL_POINTS = names(MODEL)  # hook_embed, ln_final.hook_scale, ln_final.hook_normalized
BLOCK_POINTS = names(BLOCK)  # resid_pre, mixer_in, mixer_out, resid_post, scale
STREAM_POINTS = names(BLOCK, derived=False)  # the block's (b p d) points: resid_pre ... resid_post
# A block's points around its mixer's, in forward order: the stream in, the norm, then what the mixer adds.
_BEFORE_MIXER = ("hook_resid_pre", "hook_scale", "hook_mixer_in")
_AFTER_MIXER = ("hook_mixer_out", "hook_resid_post")
MIXER_POINTS: dict[str, tuple[str, ...]] = {
    kind: names(kind) for kind in dict.fromkeys(p.kind for p in POINTS if p.kind)
}
# Derived points that describe a value rather than carry it: they may be read, never replaced.
READ_ONLY = frozenset(p.name for p in POINTS if not p.writable)
# Derived points: computed on the side, only when someone asks for them.
DERIVED = frozenset(p.name for p in POINTS if p.derived)
# Points without a gradient (read-only, or integer): a backward hook on them is refused.
NO_GRADIENT = frozenset(p.name for p in POINTS if not p.has_gradient)

# The nearest point another kind of layer has, for "wrong kind" errors (attention <-> Mamba analogies).
_ANALOGUE = {
    "hook_pattern": {MAMBA: "hook_hidden_attn"},
    "hook_attn_scores": {MAMBA: "hook_hidden_attn"},
    "hook_q": {MAMBA: "hook_C"},
    "hook_k": {MAMBA: "hook_B"},
    "hook_v": {MAMBA: "hook_x"},
    "hook_z": {MAMBA: "hook_ssm_out", MOE: "hook_routed_out", MLP: "hook_post"},
    "hook_hidden_attn": {ATTENTION: "hook_pattern"},
    "hook_state_norm": {ATTENTION: "hook_pattern"},
    "hook_state": {ATTENTION: "hook_k"},
    "hook_C": {ATTENTION: "hook_q"},
    "hook_B": {ATTENTION: "hook_k"},
    "hook_x": {ATTENTION: "hook_v"},
    "hook_ssm_out": {ATTENTION: "hook_z", MOE: "hook_routed_out", MLP: "hook_post"},
    "hook_pre": {MOE: "hook_routed_out"},
    "hook_post": {MOE: "hook_routed_out", ATTENTION: "hook_z", MAMBA: "hook_ssm_out"},
    "hook_routed_out": {MLP: "hook_post"},
    "hook_shared_out": {MLP: "hook_post"},
}
_BLOCK_NAME = re.compile(r"^blocks\.(\d+)\.(?:(\w+)\.)?(hook_\w+)$")


def block_point_names(i: int, kind: str) -> list[str]:
    """Every hook name of block ``i`` of the given kind, in the order the forward pass reaches them."""
    prefix = f"blocks.{i}."
    mixer = [f"{HOOK_PREFIX[kind]}.{p}" for p in MIXER_POINTS[kind]]
    return [prefix + p for p in (*_BEFORE_MIXER, *mixer, *_AFTER_MIXER)]


def all_names(layer_types: list[str]) -> list[str]:
    """Every hook name of a model with these layer types, in forward order."""
    embed, *final = MODEL_POINTS  # the final norm's points come after every block
    out = [embed]
    for i, kind in enumerate(layer_types):
        out += block_point_names(i, kind)
    return [*out, *final]


def parse(name: str) -> tuple[int | None, str | None, str]:
    """``'blocks.3.attn.hook_q'`` -> ``(3, 'attn', 'hook_q')``; ``'hook_embed'`` -> ``(None, None, ...)``."""
    m = _BLOCK_NAME.match(name)
    if m:
        return int(m.group(1)), m.group(2), m.group(3)
    return None, None, name


class HookNameError(KeyError):
    """An unknown hook name; the message suggests the closest real ones."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def unknown_name_error(
    name: str, known: list[str], *, where: str = "this model", layer_types: list[str] | None = None
) -> HookNameError:
    """Build the error for a name that is not in ``known``: wrong layer index, wrong kind, or a typo."""
    i, sub, point = parse(name)
    if layer_types is not None and i is not None:
        n = len(layer_types)
        if i >= n:
            return HookNameError(f"{name!r}: {where} has {n} blocks (0..{n - 1}); block {i} does not exist")
        kind = layer_types[i]
        own = HOOK_PREFIX[kind]
        if sub is not None and sub != own:
            have = MIXER_POINTS[kind]
            guess = _ANALOGUE.get(point, {}).get(kind)
            guess = guess or (difflib.get_close_matches(point, have, n=1) or [None])[0]
            hint = f" The nearest point it has: 'blocks.{i}.{own}.{guess}'." if guess else ""
            return HookNameError(
                f"{name!r}: block {i} is {_article(kind)} {kind} layer, "
                f"so its points are 'blocks.{i}.{own}.*' "
                f"({', '.join(have)}).{hint}"
            )
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return HookNameError(
        f"no hook point named {name!r} in {where}.{hint} "
        "List them with model.hook_names() (or hook_names(layer_type='mamba'))."
    )
