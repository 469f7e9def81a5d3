"""Layer-type ablation: remove what some blocks add to the residual stream and see which tokens suffer.

A block's contribution is its ``hook_mixer_out``; ablating replaces it with zero, or with its mean over a
reference text (one ``d``-vector per block, averaged over every reference token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.layer_types import canonical
from ..model import token_losses
from . import _style

MODES = ("zero", "mean")


@dataclass
class AblationResult:
    """Next-token losses with and without the ablation; loss at column j is that of predicting token j+1.

    ``clean_loss``, ``ablated_loss``  (b, p-1);  ``delta`` = ablated - clean  (b, p-1)
    ``mask``  (b, p-1) bool, the columns that are real tokens (None: all are)
    ``layers``: the ablated blocks;  ``layer_types``: the kind of every block of the model
    """

    layers: list[int]
    mode: str
    clean_loss: torch.Tensor
    ablated_loss: torch.Tensor
    mask: torch.Tensor | None
    tokens: torch.Tensor
    layer_types: list[str]
    str_tokens: list[list[str]]

    @property
    def delta(self) -> torch.Tensor:
        return self.ablated_loss - self.clean_loss

    @property
    def mean_delta(self) -> float:
        """Mean loss change over the real tokens."""
        d = self.delta
        return float(d[self.mask].mean() if self.mask is not None else d.mean())

    def worst(self, k: int = 10) -> list[dict]:
        """The ``k`` predictions that got worse most: batch row, position of the predicted token, its text,
        the preceding context, and the losses."""
        d = self.delta.masked_fill(~self.mask, float("-inf")) if self.mask is not None else self.delta
        values, flat = d.flatten().topk(min(k, d.numel()))
        rows = []
        for v, f in zip(values.tolist(), flat.tolist(), strict=True):
            if v == float("-inf"):
                break
            b, j = divmod(f, d.shape[1])
            toks = self.str_tokens[b]
            rows.append(
                dict(
                    batch=b,
                    position=j + 1,
                    token=toks[j + 1],
                    context="".join(toks[max(0, j - 7) : j + 1]),
                    delta=v,
                    clean_loss=float(self.clean_loss[b, j]),
                    ablated_loss=float(self.ablated_loss[b, j]),
                )
            )
        return rows

    def figure(self, batch: int = 0):
        """Layer map with the ablated blocks marked, above the loss change of every predicted token."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        toks = self.str_tokens[batch]
        n = self.delta.shape[1] if self.mask is None else int(self.mask[batch].sum())
        d = self.delta[batch, :n].tolist()
        fig = make_subplots(rows=2, cols=1, row_heights=[0.12, 0.88], vertical_spacing=0.12)
        _style.layer_map(fig, self.layer_types, self.layers, note="ablated", row=1, col=1)
        fig.add_trace(
            go.Bar(
                x=_style.position_labels(toks[1 : n + 1], start=1),
                y=d,
                marker_color=["#d62728" if v > 0 else "#1f77b4" for v in d],
                hovertext=[
                    f"{_style.escape(toks[j + 1])}: {self.clean_loss[batch, j]:.3f} → "
                    f"{self.ablated_loss[batch, j]:.3f}"
                    for j in range(n)
                ],
                showlegend=False,
            ),
            row=2,
            col=1,
        )
        _style.add_type_legend(fig, self.layer_types)
        kinds = sorted({self.layer_types[i] for i in self.layers})
        fig.update_layout(
            title=f"Loss change per token, {self.mode}-ablating {len(self.layers)} "
            f"{'/'.join(kinds)} block(s); mean {self.mean_delta:+.3f} nats",
            legend=_style.LEGEND,
            plot_bgcolor="white",
        )
        fig.update_yaxes(title_text="Δ loss (nats)", row=2, col=1)
        fig.update_xaxes(title_text="predicted token", row=2, col=1)
        return fig


def select_layers(model, layer_type: str | Sequence[str] | None, layers: Sequence[int] | None) -> list[int]:
    """The blocks chosen by kind(s) or by index (exactly one of the two), checked."""
    if (layer_type is None) == (layers is None):
        raise ValueError("choose the blocks with layer_type='attention' (or a list of kinds) or layers=[...]")
    if layers is not None:
        chosen = sorted({int(i) for i in layers})
        bad = [i for i in chosen if not 0 <= i < model.n_layers]
        if bad or not chosen:
            raise ValueError(f"layers must be block indices in [0, {model.n_layers}); got {list(layers)}")
        return chosen
    kinds = [layer_type] if isinstance(layer_type, str) else list(layer_type)
    chosen = sorted(i for kind in kinds for i in model.layers(kind))
    if not chosen:
        have = ", ".join(dict.fromkeys(model.layer_types))
        raise ValueError(
            f"this model has no {'/'.join(canonical(k) for k in kinds)} blocks "
            f"(pattern {model.pattern}; it has {have})"
        )
    return chosen


@torch.no_grad()
def mean_mixer_out(model, reference, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """Each block's ``hook_mixer_out`` averaged over every (non-padding) token of ``reference``:
    ``{block: (d,)}``."""
    ids, mask = model.to_inputs(reference, None)
    names = [f"blocks.{i}.hook_mixer_out" for i in layers]
    _, cache = model.run_with_cache(ids, names_filter=names, attention_mask=mask)
    keep = mask.bool() if mask is not None else torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    return {i: cache[n][keep].float().mean(0) for i, n in zip(layers, names, strict=True)}


@torch.no_grad()
def ablate_layers(
    model,
    tokens,
    layer_type: str | Sequence[str] | None = None,
    *,
    layers: Sequence[int] | None = None,
    mode: str = "zero",
    reference=None,
) -> AblationResult:
    """Per-token loss change when the chosen blocks' ``hook_mixer_out`` is replaced.

    ``layer_type``: a kind (``'attention'``, ``'M'``, ...) or a list of kinds; or ``layers``: block indices.
    ``mode``: ``'zero'``, or ``'mean'`` — the block's mean output over ``reference`` (text, texts or ids;
    default: ``tokens`` themselves). ``tokens``: text, texts or ids ``(b, p)``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    chosen = select_layers(model, layer_type, layers)
    ids, mask = model.to_inputs(tokens, None)
    if ids.shape[1] < 2:
        raise ValueError("need at least 2 tokens to measure next-token loss")
    if mode == "mean":
        means = mean_mixer_out(model, tokens if reference is None else reference, chosen)

    def replace(t: torch.Tensor, hook) -> torch.Tensor:
        if mode == "zero":
            return torch.zeros_like(t)
        return means[hook.layer].to(t.dtype).expand_as(t).clone()

    clean = model(ids, attention_mask=mask, return_type="logits")
    hooks = [(f"blocks.{i}.hook_mixer_out", replace) for i in chosen]
    ablated = model.run_with_hooks(ids, fwd_hooks=hooks, attention_mask=mask, return_type="logits")
    return AblationResult(
        layers=chosen,
        mode=mode,
        clean_loss=token_losses(clean, ids).cpu(),
        ablated_loss=token_losses(ablated, ids).cpu(),
        mask=None if mask is None else mask[:, 1:].bool().cpu(),
        tokens=ids.cpu(),
        layer_types=list(model.layer_types),
        str_tokens=_style.str_tokens(model, ids),
    )
