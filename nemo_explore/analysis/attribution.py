"""Direct logit attribution by block and by layer type.

The final residual stream is the embedding plus every block's ``hook_mixer_out``. The final RMSNorm is
linear once its scale is fixed, so with ``s = 1 / RMS(final residual)`` (the scale the model actually
used) the target's logit splits exactly into one term per component::

    logit(t) = Σ_c  s · c · (w_norm ⊙ W_U[t])        c ∈ {embedding, mixer_out of block 0 … n-1}

(Nemotron-H's ``lm_head`` has no bias). Equality holds up to float rounding; in bf16 the model rounds the
residual sum itself, so the terms match its logit to bf16 precision only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..mirror import hf_layout
from ..tl.residual import rms_scale
from . import _style
from .logit_lens import Targets, apply_lens, resolve_targets, target_mask


@dataclass
class AttributionResult:
    """Each component's direct contribution to the logit of ``targets`` (minus that of ``against``).

    ``per_block``  (n_blocks, b, q)  block i's ``hook_mixer_out`` through the linearised norm and unembedding
    ``embed``      (b, q)            the embedding's term
    ``logit``      (b, q)            the model's own logit (difference) — equals ``total``
    ``scale``      (b, q)            1 / RMS of the final residual stream
    ``targets``, ``against``  (b, q) token ids (``against`` may be None);  q = p-1 for next-token targets
    ``mask``       (b, q) True where the scored column is a real token (None: no padding)
    """

    per_block: torch.Tensor
    embed: torch.Tensor
    logit: torch.Tensor
    scale: torch.Tensor
    targets: torch.Tensor
    against: torch.Tensor | None
    tokens: torch.Tensor
    layer_types: list[str]
    str_tokens: list[list[str]]
    mask: torch.Tensor | None = None

    @property
    def total(self) -> torch.Tensor:
        """Sum of every term ``(b, q)``: reconstructs ``logit``."""
        return self.embed + self.per_block.sum(0)

    @property
    def per_type(self) -> dict[str, torch.Tensor]:
        """``{'embed': (b, q), 'mamba': (b, q), ...}``: the blocks' terms summed per layer type present."""
        out = {"embed": self.embed}
        for kind in dict.fromkeys(self.layer_types):
            idx = [i for i, k in enumerate(self.layer_types) if k == kind]
            out[kind] = self.per_block[idx].sum(0)
        return out

    def figure(
        self, batch: int = 0, position: int | None = None, positions: slice | Sequence[int] | None = None
    ):
        """Bars per block (coloured by layer type) and per type: at one ``position``, averaged over
        ``positions`` (a slice, range or list of scored columns, e.g. ``slice(n + 1, None)`` for a second
        copy), or averaged over every real position (neither given)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        if position is not None and positions is not None:
            raise ValueError("give position= (one column) or positions= (columns to average), not both")
        q = self.per_block.shape[-1]
        if position is not None:
            blocks = self.per_block[:, batch, position].float()
            embed = self.embed[batch, position].float()
            label = f"position {position % q}"
        else:
            real = torch.ones(q, dtype=torch.bool) if self.mask is None else self.mask[batch].clone()
            if positions is not None:
                chosen = torch.zeros(q, dtype=torch.bool)
                chosen[torch.arange(q)[positions] if isinstance(positions, slice) else list(positions)] = True
                real &= chosen
            if not real.any():
                raise ValueError(f"positions {positions!r} select no real position of the {q} scored")
            real = real.float()
            blocks = (self.per_block[:, batch].float() * real).sum(-1) / real.sum()
            embed = (self.embed[batch].float() * real).sum() / real.sum()
            where = real.nonzero()[:, 0].tolist()
            label = f"mean over {len(where)} positions"
            if positions is not None and where == list(range(where[0], where[-1] + 1)):
                label += f" ({where[0]}–{where[-1]})"
        kinds = list(dict.fromkeys(self.layer_types))
        by_type = [float(embed)] + [
            float(sum(blocks[i] for i, k in enumerate(self.layer_types) if k == kind)) for kind in kinds
        ]
        fig = make_subplots(
            rows=1,
            cols=2,
            column_widths=[0.78, 0.22],
            horizontal_spacing=0.08,
            subplot_titles=("per block", "per layer type"),
        )
        names = ["embed"] + [_style.layer_label(i, k) for i, k in enumerate(self.layer_types)]
        colors = [_style.EMBED_COLOR] + [_style.LAYER_COLORS[k] for k in self.layer_types]
        fig.add_trace(
            go.Bar(x=names, y=[float(embed), *blocks.tolist()], marker_color=colors, showlegend=False),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Bar(
                x=["embed", *kinds],
                y=by_type,
                showlegend=False,
                marker_color=[_style.EMBED_COLOR] + [_style.LAYER_COLORS[k] for k in kinds],
            ),
            row=1,
            col=2,
        )
        _style.add_type_legend(fig, self.layer_types)
        what = "logit difference" if self.against is not None else "logit of the target"
        fig.update_layout(
            title=f"Direct attribution to the {what}<br><sup>{label}</sup>",  # short: clear of the legend
            yaxis_title="logit",
            legend={**_style.LEGEND, "y": 1.1},  # above the subplot titles, not on them
            margin=dict(t=120),
            plot_bgcolor="white",
        )
        return fig


@torch.no_grad()
def direct_logit_attribution(
    model, tokens, targets: Targets = None, against: Targets = None
) -> AttributionResult:
    """Split the logit of ``targets`` (default: the next token) into the embedding's and each block's
    direct term. ``against``: a second token (same forms as ``targets``) whose logit is subtracted, for
    a logit difference. ``tokens``: text, texts or ids ``(b, p)``."""
    ids, mask = model.to_inputs(tokens, None)
    tgt = resolve_targets(model, ids, targets)
    other = None if against is None else resolve_targets(model, ids, against)
    if other is not None and other.shape != tgt.shape:
        q_t, q_a = tgt.shape[1], other.shape[1]
        raise ValueError(f"targets score {q_t} positions and against {q_a}: give both explicitly, or neither")
    q, n = tgt.shape[1], model.n_layers
    names = ["hook_embed", f"blocks.{n - 1}.hook_resid_post"] + [
        f"blocks.{i}.hook_mixer_out" for i in range(n)
    ]
    _, cache = model.run_with_cache(ids, names_filter=names, attention_mask=mask)

    hf = model.hf_model
    norm, unembed = hf_layout.final_norm(hf), hf_layout.unembed(hf)
    # b q 1: the final norm's 1/RMS as the run computed it (cache.ln_scale(), for the q scored columns)
    scale = rms_scale(cache[f"blocks.{n - 1}.hook_resid_post"][:, :q], hf_layout.norm_eps(norm))
    w = norm.weight.float()
    direction = unembed.weight[tgt].float() * w  # b q d
    if other is not None:
        direction = direction - unembed.weight[other].float() * w
    direction = direction * scale

    def term(x: torch.Tensor) -> torch.Tensor:
        return (x[:, :q].float() * direction).sum(-1).cpu()

    logits = apply_lens(model, cache[f"blocks.{n - 1}.hook_resid_post"][:, :q])
    logit = logits.gather(-1, tgt[..., None]).squeeze(-1)
    if other is not None:
        logit = logit - logits.gather(-1, other[..., None]).squeeze(-1)
    return AttributionResult(
        per_block=torch.stack([term(cache[f"blocks.{i}.hook_mixer_out"]) for i in range(n)]),
        embed=term(cache["hook_embed"]),
        logit=logit.cpu(),
        scale=scale[..., 0].cpu(),
        targets=tgt.cpu(),
        against=None if other is None else other.cpu(),
        tokens=ids.cpu(),
        layer_types=list(model.layer_types),
        str_tokens=_style.str_tokens(model, ids),
        mask=target_mask(mask, q),
    )
