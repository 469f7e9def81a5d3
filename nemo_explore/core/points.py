"""The hook points: one table, the single source of truth for every list of them.

A row (``Point``) per point: its name, where it sits (model, block, or the mixer of one layer kind), its
shape as the README writes it and as a function of the config and the run's options, whether a hook may
write it, whether it is derived (computed on the side, only when hooked), and the README's one-line
description. ``POINTS`` lists the rows in the order of the README's "Hook points" table, which is forward
order within each kind. ``hook_names`` (the name lists), ``describe`` (shapes), the Mamba mixer (its
derived points) and the README's table (``markdown_table``, checked by ``tests/test_points.py``) read it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .layer_types import ATTENTION, HOOK_PREFIX, MAMBA, MLP, MOE
from .options import query_rows
from .options import state_positions as positions_kept

MODEL, BLOCK, MIXER = "model", "block", "mixer"  # a point's level


@dataclass(frozen=True)
class Sizes:
    """The lengths the hook shapes are made of, for one config and one run (``sizes`` builds it): the
    README's letters, with the Mamba ones named apart where attention uses the same letter."""

    b: int  # batch
    p: int  # positions
    d: int  # hidden
    h: int  # attention heads
    h_kv: int  # attention key / value heads (one per query head with ungroup_grouped_query_attention)
    d_head: int
    q: int  # query rows hook_attn_scores / hook_pattern keep (pattern_window)
    h_mamba: int
    head_dim: int  # Mamba's
    g: int  # Mamba groups
    n: int  # Mamba state size
    n_pos: int  # positions hook_state keeps (state_positions)
    h_hidden: int  # heads hook_hidden_attn keeps (hidden_attn_heads)
    q_hidden: int  # query rows hook_hidden_attn keeps (hidden_attn_window)
    n_experts: int
    k: int  # experts per token
    d_mlp: int

    @property
    def d_inner(self) -> int:
        return self.h_mamba * self.head_dim

    @property
    def conv_dim(self) -> int:  # x, B and C go through the conv together
        return self.d_inner + 2 * self.g * self.n


def sizes(
    config: Any,
    batch: int,
    seq_len: int,
    *,
    state_positions: int | Iterable[int] | None = None,
    hidden_attn_heads: int | Iterable[int] | None = None,
    hidden_attn_window: tuple[int, int] | None = None,
    pattern_window: tuple[int, int] | None = None,
    ungroup_grouped_query_attention: bool = False,
) -> Sizes:
    """The ``Sizes`` of ``batch`` × ``seq_len`` tokens through a model of ``config`` (a NemotronHConfig)
    under these ``run_with_cache`` options; an option out of range raises as the run would."""
    from .ssd import head_indices  # noqa: PLC0415 (ssd needs torch, which naming points does not)

    c, p = config, seq_len
    n_pos = len(positions_kept(state_positions, p))
    start, stop = query_rows(hidden_attn_window, p, "hidden_attn_window")
    q0, q1 = query_rows(pattern_window, p, "pattern_window")
    return Sizes(
        b=batch,
        p=p,
        d=c.hidden_size,
        h=c.num_attention_heads,
        h_kv=c.num_attention_heads if ungroup_grouped_query_attention else c.num_key_value_heads,
        d_head=c.head_dim,
        q=q1 - q0,
        h_mamba=c.mamba_num_heads,
        head_dim=c.mamba_head_dim,
        g=c.n_groups,
        n=c.ssm_state_size,
        n_pos=n_pos,
        h_hidden=len(head_indices(hidden_attn_heads, c.mamba_num_heads)),
        q_hidden=stop - start,
        n_experts=c.n_routed_experts,
        k=c.num_experts_per_tok,
        d_mlp=c.intermediate_size,
    )


@dataclass(frozen=True)
class Point:
    """One hook point (a row of the README's table).

    ``name``: model points in full (``'ln_final.hook_normalized'``), the others without ``blocks.{i}.``
    and the kind's prefix (``'hook_q'``); ``level``: MODEL, BLOCK or MIXER; ``kind``: the layer kind
    (``layer_types``) of a mixer point, None for the others; ``shape``: as the README writes it;
    ``size``: the shape for given ``Sizes``; ``writable``: a hook may replace the value (else it is
    read-only); ``derived``: computed on the side, only when hooked; ``integer``: an integer value, which
    has no gradient (a read-only point has none either); ``what``: the README's description;
    ``joins``: None where the point starts its own line of the README's table, else the separator that
    adds it to the line above (which has the same shape and description).
    """

    name: str
    level: str
    kind: str | None
    shape: str
    size: Callable[[Sizes], tuple[int, ...]]
    what: str
    writable: bool = True
    derived: bool = False
    integer: bool = False
    joins: str | None = None

    @property
    def has_gradient(self) -> bool:
        """Whether a backward hook may ask for this point's gradient."""
        return self.writable and not self.integer

    @property
    def template(self) -> str:
        """The full name with ``{i}`` for the block: ``'blocks.{i}.attn.hook_q'``, ``'hook_embed'``."""
        if self.level == MODEL:
            return self.name
        mixer = f"{HOOK_PREFIX[self.kind]}." if self.kind else ""
        return f"blocks.{{i}}.{mixer}{self.name}"


def _line(where: str, line: list[str], shape: str, size, what: str, *, sep=" / ", **flags) -> list[Point]:
    """The rows of one line of the README's table: the points named in ``line`` share its shape and text.
    ``where``: MODEL, BLOCK or a layer kind; ``flags``: ``writable`` / ``derived`` / ``integer``."""
    level, kind = (where, None) if where in (MODEL, BLOCK) else (MIXER, where)
    return [
        Point(name, level, kind, shape, size, what, **flags, joins=sep if j else None)
        for j, name in enumerate(line)
    ]


def _bpd(s: Sizes) -> tuple[int, ...]:
    return (s.b, s.p, s.d)


POINTS: tuple[Point, ...] = (
    *_line(MODEL, ["hook_embed"], "b p d", _bpd, "token embeddings"),
    *_line(
        BLOCK, ["hook_resid_pre", "hook_mixer_in", "hook_mixer_out", "hook_resid_post"], "b p d", _bpd,
        "residual stream in, pre-norm output, what the mixer adds, residual stream out",
    ),
    *_line(
        BLOCK, ["hook_scale"], "b p 1", lambda s: (s.b, s.p, 1),
        "the pre-norm's divisor √(mean x² + ε), float32: `hook_mixer_in` = w · x / scale (read-only)",
        writable=False, derived=True,
    ),
    *_line(
        MODEL, ["ln_final.hook_scale"], "b p 1", lambda s: (s.b, s.p, 1),
        "the final norm's divisor, likewise (read-only)", writable=False, derived=True,
    ),
    *_line(MODEL, ["ln_final.hook_normalized"], "b p d", _bpd, "final norm output"),
    # attention
    *_line(ATTENTION, ["hook_q"], "b p h d_head", lambda s: (s.b, s.p, s.h, s.d_head), "queries"),
    *_line(
        ATTENTION, ["hook_k", "hook_v"], "b p h_kv d_head", lambda s: (s.b, s.p, s.h_kv, s.d_head),
        "keys, values (GQA: the KV heads; a copy per query head, h_kv = h, with "
        "`ungroup_grouped_query_attention=True`)", sep=", ",
    ),
    *_line(
        ATTENTION, ["hook_attn_scores", "hook_pattern"], "b h q k", lambda s: (s.b, s.h, s.q, s.p),
        "scaled masked scores / probabilities (q = p, or the rows of `pattern_window=`)", derived=True,
    ),
    *_line(
        ATTENTION, ["hook_z"], "b p h d_head", lambda s: (s.b, s.p, s.h, s.d_head),
        "pattern-weighted values before `o_proj`",
    ),
    *_line(
        ATTENTION, ["hook_result"], "b p h d", lambda s: (s.b, s.p, s.h, s.d),
        "each head's output z_h · W_O[h]; they sum to the block's `hook_mixer_out` (writable)", derived=True,
    ),
    # mamba
    *_line(
        MAMBA, ["hook_in_proj"], "b p (d_inner+conv_dim+h)",
        lambda s: (s.b, s.p, s.d_inner + s.conv_dim + s.h_mamba), "raw input projection",
    ),
    *_line(MAMBA, ["hook_gate"], "b p d_inner", lambda s: (s.b, s.p, s.d_inner), "the gate z"),
    *_line(
        MAMBA, ["hook_conv_out"], "b p conv_dim", lambda s: (s.b, s.p, s.conv_dim),
        "causal conv1d + SiLU (x, B, C)",
    ),
    *_line(MAMBA, ["hook_x"], "b p h head_dim", lambda s: (s.b, s.p, s.h_mamba, s.head_dim), "SSM input"),
    *_line(
        MAMBA, ["hook_B", "hook_C"], "b p g n", lambda s: (s.b, s.p, s.g, s.n), "input / output matrices",
        sep=", ",
    ),
    *_line(
        MAMBA, ["hook_dt"], "b p h", lambda s: (s.b, s.p, s.h_mamba),
        "step size used (bias, softplus, clamp)", derived=True,
    ),
    *_line(
        MAMBA, ["hook_ssm_out"], "b p h head_dim", lambda s: (s.b, s.p, s.h_mamba, s.head_dim),
        "scan output y (D skip included), before the gated norm",
    ),
    *_line(
        MAMBA, ["hook_state_norm"], "b p h", lambda s: (s.b, s.p, s.h_mamba),
        "‖state‖_F after each token (read-only)", writable=False, derived=True,
    ),
    *_line(
        MAMBA, ["hook_hidden_attn"], "b h q k", lambda s: (s.b, s.h_hidden, s.q_hidden, s.p),
        "implicit attention M: y_t = Σ_s M[t,s] x_s + D x_t (read-only, signed)",
        writable=False, derived=True,
    ),
    *_line(
        MAMBA, ["hook_state"], "b n_pos h head_dim n", lambda s: (s.b, s.n_pos, s.h_mamba, s.head_dim, s.n),
        "recurrent state after the positions in `state_positions=` (writable: state patching)", derived=True,
    ),
    # moe
    *_line(
        MOE, ["hook_router_logits", "hook_router_scores"], "b p n_experts",
        lambda s: (s.b, s.p, s.n_experts), "router logits / sigmoid scores",
    ),
    *_line(
        MOE, ["hook_topk_indices"], "b p k", lambda s: (s.b, s.p, s.k),
        "chosen experts (writable: forces a routing)", integer=True,
    ),
    *_line(
        MOE, ["hook_topk_weights"], "b p k", lambda s: (s.b, s.p, s.k), "normalised, scaled routing weights"
    ),
    *_line(MOE, ["hook_routed_out", "hook_shared_out"], "b p d", _bpd, "routed experts' sum / shared expert"),
    # mlp
    *_line(
        MLP, ["hook_pre", "hook_post"], "b p d_mlp", lambda s: (s.b, s.p, s.d_mlp),
        "up-projection / after relu²",
    ),
)  # fmt: skip

_BY_TEMPLATE = {row.template: row for row in POINTS}
_BLOCK_INDEX = re.compile(r"^blocks\.\d+\.")


def names(where: str, **flags: bool) -> tuple[str, ...]:
    """The names of the points of ``where`` (MODEL, BLOCK or a layer kind) in the table's order; ``flags``
    keep those rows whose fields have these values (``names(MAMBA, derived=True)``)."""
    return tuple(
        row.name
        for row in POINTS
        if where in (row.level, row.kind) and all(getattr(row, k) == v for k, v in flags.items())
    )


def template(name: str) -> str:
    """A full hook name's template: ``'blocks.3.attn.hook_q'`` -> ``'blocks.{i}.attn.hook_q'``."""
    return _BLOCK_INDEX.sub("blocks.{i}.", name)


def row(name: str) -> Point:
    """The row of a full hook name (``'blocks.3.attn.hook_q'``, ``'hook_embed'``); KeyError if none."""
    return _BY_TEMPLATE[template(name)]


def markdown_table() -> str:
    """The README's "Hook points" table, rendered from ``POINTS``."""
    lines: list[list[str]] = []
    for point in POINTS:
        if point.joins is None:
            lines.append([f"`{point.template}`", point.shape, point.what])
        else:
            lines[-1][0] += f"{point.joins}`{point.name}`"
    return "\n".join(["| point | shape | what |", "|---|---|---|", *(f"| {' | '.join(c)} |" for c in lines)])
