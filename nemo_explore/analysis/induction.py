"""Induction and copying scores per head, for attention heads and Mamba heads alike.

On a random sequence repeated once, ``[prefix] s_0 … s_{L-1} s_0 … s_{L-1}``, a query at position t of the
second copy looks back at

- ``t - L + 1`` — the token *after* the first occurrence of its own token: **induction**;
- ``t - L``     — the first occurrence itself: **duplicate** (copying);
- ``t - 1``     — the previous token: **previous** (what induction heads build on).

Each score is the mean weight a head puts on that key over every query of the second copy and every
batch row. Attention heads read ``hook_pattern``. Mamba heads read ``hook_hidden_attn`` M, which is signed
and unnormalised; to make it comparable with a softmax row it is scored as ``|M[t, s]| / Σ_s' |M[t, s']|``
(share of absolute weight, between 0 and 1). Mind that a Mamba head's ``x_s`` is the output of a short
causal convolution, so key s also carries a few tokens before s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.layer_types import ATTENTION, MAMBA
from . import _style

SCORES = ("induction", "duplicate", "previous")


@dataclass
class InductionResult:
    """Scores per scored block (attention and Mamba, in block order) and head.

    ``induction``, ``duplicate``, ``previous``: (n_scored, max_heads), NaN where a block has fewer heads
    ``layers``: block index of each row;  ``layer_types``: its kind;  ``n_heads``: heads per row
    ``tokens`` (b, prefix + 2L): the repeated sequence;  ``seq_len``: L;  ``prefix``: tokens before it
    ``source``: what was repeated — ``'random'`` (random ids), ``'text'`` or ``'tokens'`` (given ones)
    """

    induction: torch.Tensor
    duplicate: torch.Tensor
    previous: torch.Tensor
    layers: list[int]
    layer_types: list[str]
    n_heads: list[int]
    tokens: torch.Tensor
    seq_len: int
    prefix: int
    source: str = "random"

    def top(self, k: int = 5, score: str = "induction") -> list[dict]:
        """The ``k`` highest-scoring heads: ``{'layer', 'layer_type', 'head', 'score'}``."""
        values = self._score(score)
        flat = values.nan_to_num(nan=float("-inf")).flatten()
        best = flat.topk(min(k, int(torch.isfinite(flat).sum())))
        rows = []
        for v, i in zip(best.values.tolist(), best.indices.tolist(), strict=True):
            r, h = divmod(i, values.shape[1])
            rows.append(dict(layer=self.layers[r], layer_type=self.layer_types[r], head=h, score=v))
        return rows

    def _score(self, score: str) -> torch.Tensor:
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, not {score!r}")
        return getattr(self, score)

    @property
    def repeated(self) -> str:
        """What was repeated, for a title: ``'repeated random sequence (L = 32, 4 rows)'``."""
        rows = self.tokens.shape[0]
        what = {"random": "repeated random sequence", "text": "text said twice"}.get(
            self.source, "repeated token sequence"
        )
        return f"{what} (L = {self.seq_len} tokens{f', {rows} rows' if rows > 1 else ''})"

    def figure(self, score: str = "induction"):
        """One dot per head, spread across its block's slot and coloured by layer type: the head types
        side by side."""
        import plotly.graph_objects as go

        values = self._score(score)
        fig = go.Figure()
        for kind in dict.fromkeys(self.layer_types):
            xs, ys, text = [], [], []
            for r in (r for r, k in enumerate(self.layer_types) if k == kind):
                n = self.n_heads[r]
                for h in range(n):
                    xs.append(r + 0.7 * ((h + 0.5) / n - 0.5))
                    ys.append(float(values[r, h]))
                    text.append(f"block {self.layers[r]} ({kind}) head {h}: {float(values[r, h]):.3f}")
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="markers",
                    name=kind,
                    marker=dict(color=_style.LAYER_COLORS[kind], size=8, line=dict(width=0.5, color="black")),
                    hovertext=text,
                    hoverinfo="text",
                )
            )
        note = "<br><sup>Mamba heads: share of |hidden attention|</sup>" if MAMBA in self.layer_types else ""
        ticks = [_style.layer_label(i, k) for i, k in zip(self.layers, self.layer_types, strict=True)]
        fig.update_layout(
            title=f"{score.capitalize()} score per head, {self.repeated}{note}",
            xaxis=dict(title="block", tickvals=list(range(len(ticks))), ticktext=ticks, showgrid=False),
            yaxis=dict(title="mean weight on the key", range=[0, 1.05]),
            legend=_style.LEGEND,
            plot_bgcolor="white",
        )
        return fig


def repeated_tokens(
    model, seq_len: int = 32, batch: int = 4, seed: int = 0, bos: bool = True
) -> tuple[torch.Tensor, int]:
    """``(tokens (b, prefix + 2L), prefix)``: each row a random sequence of L distinct ids (no special
    tokens: the config's pad/BOS/EOS and every special token of the tokenizer, ``<unk>`` included) repeated
    once, after the BOS token when ``bos`` and the model has one."""
    cfg = model.cfg
    special = {cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id} - {None}
    if model.tokenizer is not None:
        special |= set(model.tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(cfg.vocab_size) if i not in special])
    if not 1 <= seq_len <= len(allowed):
        raise ValueError(f"seq_len must be between 1 and {len(allowed)} (distinct non-special tokens)")
    g = torch.Generator().manual_seed(seed)
    half = torch.stack([allowed[torch.randperm(len(allowed), generator=g)[:seq_len]] for _ in range(batch)])
    parts = [half, half]
    prefix = 0
    if bos and cfg.bos_token_id is not None:
        parts.insert(0, torch.full((batch, 1), cfg.bos_token_id))
        prefix = 1
    return torch.cat(parts, dim=1).to(model.device), prefix


def _key_offsets(seq_len: int) -> dict[str, int]:
    """How far behind the query each scored key sits."""
    return {"induction": seq_len - 1, "duplicate": seq_len, "previous": 1}


def score_rows(weights: torch.Tensor, first_query: int, seq_len: int) -> dict[str, torch.Tensor]:
    """``weights`` (b h n_q p_k) of the queries ``first_query, first_query + 1, …`` -> each score ``(h,)``."""
    b, h, n_q, _ = weights.shape
    queries = torch.arange(first_query, first_query + n_q, device=weights.device)
    out = {}
    for score, back in _key_offsets(seq_len).items():
        keys = (queries - back).expand(b, h, n_q)[..., None]
        out[score] = weights.gather(-1, keys).squeeze(-1).float().mean((0, 2)).cpu()
    return out


def normalised_abs(M: torch.Tensor) -> torch.Tensor:
    """Signed hidden attention (… q k) -> each row's share of absolute weight (rows of zeros stay zero)."""
    a = M.float().abs()
    return a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


@torch.no_grad()
def induction_scores(
    model, tokens: torch.Tensor | str | None = None, *, seq_len: int = 32, batch: int = 4, seed: int = 0
) -> InductionResult:
    """Induction, duplicate and previous-token scores of every attention and Mamba head.

    ``tokens``: a sequence ``(b, L)`` (or ``(L,)``) of ids to repeat, or a text (repeated as
    ``[BOS] text text``); default :func:`repeated_tokens`'s random one (``seq_len``, ``batch``, ``seed``;
    BOS first). Scores are reduced inside the hooks, so memory stays at one layer's (b h L p) weights.
    """
    source = "random" if tokens is None else "text" if isinstance(tokens, str) else "tokens"
    if tokens is None:
        ids, prefix = repeated_tokens(model, seq_len, batch, seed)
    elif isinstance(tokens, str):
        half, _ = model.to_inputs(tokens, None, prepend_bos=False)
        seq_len, prefix, parts = half.shape[1], 0, [half, half]
        if model.cfg.bos_token_id is not None:
            parts.insert(0, torch.full_like(half[:, :1], model.cfg.bos_token_id))
            prefix = 1
        ids = torch.cat(parts, dim=1)
    else:
        half, _ = model.to_inputs(tokens, None)
        seq_len, prefix = half.shape[1], 0
        ids = torch.cat([half, half], dim=1)
    if seq_len < 2:
        raise ValueError("the repeated sequence needs at least 2 tokens")
    first = prefix + seq_len  # the first query of the second copy
    scored = [i for i, k in enumerate(model.layer_types) if k in (ATTENTION, MAMBA)]
    if not scored:
        raise ValueError(f"this model has no attention or Mamba blocks (pattern {model.pattern})")
    found: dict[int, dict[str, torch.Tensor]] = {}

    def read(t: torch.Tensor, hook) -> None:  # the window options below cut the rows to the second copy
        weights = t if hook.layer_type == ATTENTION else normalised_abs(t)
        found[hook.layer] = score_rows(weights, first, seq_len)

    point = {ATTENTION: "attn.hook_pattern", MAMBA: "mamba.hook_hidden_attn"}
    hooks = [(f"blocks.{i}.{point[model.layer_types[i]]}", read) for i in scored]
    window = (first, ids.shape[1])
    model.run_with_hooks(ids, fwd_hooks=hooks, hidden_attn_window=window, pattern_window=window)
    width = max(len(found[i]["induction"]) for i in scored)

    def table(score: str) -> torch.Tensor:
        out = torch.full((len(scored), width), float("nan"))
        for r, i in enumerate(scored):
            out[r, : len(found[i][score])] = found[i][score]
        return out

    return InductionResult(
        induction=table("induction"),
        duplicate=table("duplicate"),
        previous=table("previous"),
        layers=scored,
        layer_types=[model.layer_types[i] for i in scored],
        n_heads=[len(found[i]["induction"]) for i in scored],
        tokens=ids.cpu(),
        seq_len=seq_len,
        prefix=prefix,
        source=source,
    )
