"""Logit lens across the hybrid stack: the model's own final norm and unembedding read off the residual
stream after the embedding and after every block — where does the prediction form, and at which kind of
layer does it jump?
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..inputs import single_token
from ..mirror import hf_layout
from . import _style

Targets = int | str | Sequence[int] | torch.Tensor | None
TEXT_MAX_POSITIONS = 24  # a figure with more positions has no cell text: it would not fit the cells


def apply_lens(model, resid: torch.Tensor) -> torch.Tensor:
    """Residual stream ``(..., d)`` -> logits ``(..., vocab)`` in float32, through the model's own
    final norm and unembedding exactly as its forward does (so the last block's lens is the output)."""
    hf = model.hf_model
    return hf_layout.unembed(hf)(hf_layout.final_norm(hf)(resid)).float()


def resolve_targets(model, ids: torch.Tensor, targets: Targets) -> torch.Tensor:
    """The token each position is scored on, ``(b, q)``.

    ``None``: the next token, ``ids[:, 1:]`` (q = p - 1: the last position has no next token).
    A token (id or one-token string): that token at every position (q = p).
    Ids broadcastable to ``(b, p)``: those (q = p).
    """
    b, p = ids.shape
    if targets is None:
        if p < 2:
            raise ValueError("need at least 2 tokens to score next-token predictions (or pass targets=)")
        return ids[:, 1:]
    if isinstance(targets, (int, str)):
        return torch.full((b, p), single_token(model, targets), dtype=torch.long, device=ids.device)
    t = torch.as_tensor(targets, dtype=torch.long, device=ids.device)
    try:
        t = torch.broadcast_to(t, (b, p))
    except RuntimeError:
        raise ValueError(
            f"targets of shape {tuple(t.shape)} do not broadcast to the tokens' shape {(b, p)}: pass one "
            "token, one per position (p,), or one per token (b, p)"
        ) from None
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= model.cfg.vocab_size):
        raise ValueError(f"target ids must lie in [0, {model.cfg.vocab_size})")
    return t.contiguous()


def target_mask(mask: torch.Tensor | None, q: int) -> torch.Tensor | None:
    """The padding mask ``(b, p)`` cut to the ``q`` scored columns (right padding): True = a real token."""
    return None if mask is None else mask[:, mask.shape[1] - q :].bool().cpu()


@dataclass
class LogitLensResult:
    """What the lens reads after the embedding (row 0) and after each block ``i`` (row ``i + 1``).

    ``logprobs``      (n_blocks+1, b, q)  log-probability of ``targets`` (q = p-1 for next-token targets)
    ``top_tokens``    (n_blocks+1, b, p)  the lens's top-1 prediction at every position
    ``top_logprobs``  (n_blocks+1, b, p)  its log-probability
    ``targets``       (b, q);  ``tokens`` (b, p);  ``layer_types``: the kind of each block
    ``mask``          (b, q) True where the scored column is a real token (None: no padding)
    """

    logprobs: torch.Tensor
    top_tokens: torch.Tensor
    top_logprobs: torch.Tensor
    targets: torch.Tensor
    tokens: torch.Tensor
    layer_types: list[str]
    str_tokens: list[list[str]]
    token_text: dict[int, str]
    mask: torch.Tensor | None = None

    @property
    def row_labels(self) -> list[str]:
        return ["embed"] + [_style.layer_label(i, k) for i, k in enumerate(self.layer_types)]

    def figure(self, batch: int = 0, max_positions: int = 48, cell_text: bool | None = None):
        """Heatmap: lens rows (embedding at the bottom, coloured by layer type) × positions; colour is the
        log-prob of the target, cell text the lens's top-1 prediction (by default only up to
        ``TEXT_MAX_POSITIONS`` positions, where it is readable; the hover text always has it). Long inputs
        show the last ``max_positions`` positions."""
        import plotly.graph_objects as go

        q = self.logprobs.shape[-1] if self.mask is None else int(self.mask[batch].sum())
        start = max(0, q - max_positions)
        lp = self.logprobs[:, batch, start:q].float()
        top = self.top_tokens[:, batch, start:q].tolist()
        tgt = self.targets[batch, start:q].tolist()
        toks = self.str_tokens[batch][start:q]
        x = _style.position_labels(toks, start)
        kinds = [None, *self.layer_types]
        y = [_style.colored(r, k) for r, k in zip(self.row_labels, kinds, strict=True)]
        cell = [[_style.escape(self.token_text[t]) for t in row] for row in top]
        hover = [
            [
                f"{self.row_labels[r]} · pos {start + j} {_style.escape(toks[j])!s}<br>"
                f"target {_style.escape(self.token_text[tgt[j]])}: {lp[r, j]:.3f}<br>"
                f"top-1 {cell[r][j]}: {float(self.top_logprobs[r, batch, start + j]):.3f}"
                for j in range(len(x))
            ]
            for r in range(len(y))
        ]
        if cell_text is None:
            cell_text = len(x) <= TEXT_MAX_POSITIONS
        fig = go.Figure(
            go.Heatmap(
                z=lp.numpy(),
                x=x,
                y=y,
                text=cell if cell_text else None,
                texttemplate="%{text}" if cell_text else None,
                hovertext=hover,
                hoverinfo="text",
                colorscale="Viridis",
                colorbar=dict(title="log p(target)"),
            )
        )
        _style.add_type_legend(fig, self.layer_types)
        note = f" (last {max_positions} of {q} positions)" if start else ""
        if not cell_text:
            note += "<br><sup>hover a cell for the lens's top-1 token</sup>"
        fig.update_layout(
            title=f"Logit lens: log-prob of the target after each block{note}",
            xaxis_title="position: token",
            yaxis_title="residual stream after",
            legend=_style.LEGEND,
            plot_bgcolor="white",
            height=max(300, 22 * len(y) + 150),
        )
        fig.update_yaxes(dtick=1)  # a label on every row: plotly would thin them out on a tall stack
        return fig


@torch.no_grad()
def logit_lens(model, tokens, targets: Targets = None) -> LogitLensResult:
    """Apply the final norm and unembedding to ``hook_embed`` and every ``blocks.{i}.hook_resid_post``.

    ``tokens``: text, texts or ids ``(b, p)``. ``targets``: see :func:`resolve_targets` (default: the
    next token). The last row equals the model's own output exactly. Memory: one ``(b, p, vocab)`` logit
    tensor at a time.
    """
    ids, mask = model.to_inputs(tokens, None)
    tgt = resolve_targets(model, ids, targets)
    q = tgt.shape[1]
    n = model.n_layers
    names = ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(n)]
    _, cache = model.run_with_cache(ids, names_filter=names, attention_mask=mask)
    logprobs = torch.empty(n + 1, *tgt.shape)
    top_lp = torch.empty(n + 1, *ids.shape)
    top_tok = torch.empty(n + 1, *ids.shape, dtype=torch.long)
    for r, name in enumerate(names):
        lp = torch.log_softmax(apply_lens(model, cache[name]), dim=-1)
        logprobs[r] = lp[:, :q].gather(-1, tgt[..., None]).squeeze(-1).cpu()
        best = lp.max(dim=-1)
        top_lp[r], top_tok[r] = best.values.cpu(), best.indices.cpu()
    text = _style.token_texts(
        model.tokenizer, [*ids.reshape(-1).tolist(), *tgt.reshape(-1).tolist(), *top_tok.reshape(-1).tolist()]
    )
    return LogitLensResult(
        logprobs=logprobs,
        top_tokens=top_tok,
        top_logprobs=top_lp,
        targets=tgt.cpu(),
        tokens=ids.cpu(),
        layer_types=list(model.layer_types),
        str_tokens=[[text[i] for i in row] for row in ids.tolist()],
        token_text=text,
        mask=target_mask(mask, q),
    )
