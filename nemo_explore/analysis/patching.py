"""Activation patching: run the corrupted prompt with one activation copied in from the clean run, and
measure how much of the clean behaviour comes back::

    score = (metric(patched) - metric(corrupted)) / (metric(clean) - metric(corrupted))

1 = this activation alone restores the clean behaviour, 0 = it makes no difference. Patched runs are
batched: several patches go through one forward as copies of the corrupted batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..core.hook_names import READ_ONLY, parse
from ..core.layer_types import ATTENTION, MAMBA, MOE
from ..inputs import single_token
from . import _style

Metric = Callable[[torch.Tensor], torch.Tensor]

# kind -> (point inside block i, layer type that has it (None: every block), what the columns are,
# whether each head of the block is a row of its own)
POINTS: dict[str, tuple[str, str | None, str, bool]] = {
    "resid_pre": ("hook_resid_pre", None, "position", False),
    "resid_post": ("hook_resid_post", None, "position", False),
    "mixer_out": ("hook_mixer_out", None, "position", False),
    "attn_heads": ("attn.hook_z", ATTENTION, "head", False),
    "mamba_heads": ("mamba.hook_ssm_out", MAMBA, "head", False),
    "attn_head_positions": ("attn.hook_z", ATTENTION, "position", True),
    "mamba_head_positions": ("mamba.hook_ssm_out", MAMBA, "position", True),
    "moe_routing": ("moe.hook_topk_indices", MOE, "position", False),
}
_AXIS_DIM = {"position": 1, "head": 2}


def logit_diff(
    answer: int | torch.Tensor, wrong: int | torch.Tensor | None = None, position: int = -1
) -> Metric:
    """A metric: logit of ``answer`` minus that of ``wrong`` (or just the logit of ``answer``) at
    ``position``. Token ids, one for all rows or one per row ``(b,)``.
    Returns ``fn(logits (b p v)) -> (b,)``."""

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, position].float()  # b v
        rows = torch.arange(last.shape[0], device=last.device)
        a = torch.as_tensor(answer, device=last.device).expand(last.shape[0])
        value = last[rows, a]
        if wrong is not None:
            value = value - last[rows, torch.as_tensor(wrong, device=last.device).expand(last.shape[0])]
        return value

    return metric


@dataclass
class PatchResult:
    """Normalised patching scores on a grid of (hooked block, position or head).

    ``scores`` (rows, cols): 1 = clean behaviour restored, 0 = no effect;  ``metric`` (rows, cols): raw
    ``rows``: the hook name patched per row; ``row_layers``, ``row_types``: its block and kind;
    ``row_heads``: the head a row patches (per-position head patching), else None
    ``axis``: what a column is — ``'position'``, ``'head'`` or ``'all'`` (the whole tensor at once)
    """

    point: str
    scores: torch.Tensor
    metric: torch.Tensor
    clean_metric: float
    corrupted_metric: float
    rows: list[str]
    row_layers: list[int | None]
    row_types: list[str | None]
    axis: str
    clean_str_tokens: list[str]
    corrupted_str_tokens: list[str]
    row_heads: list[int | None]

    def figure(self, zmax: float | None = None):
        """Heatmap of the scores (diverging, 0 = no effect), rows labelled and coloured by layer type.

        The colour range is fixed and symmetric, ``±zmax``: by default ±1 (the whole clean behaviour
        restored, or as much destroyed; wider if a score goes beyond), so a small effect looks small
        whatever else the grid holds. Give ``zmax`` to magnify small effects."""
        import plotly.graph_objects as go

        y = []
        for name, i, k, h in zip(self.rows, self.row_layers, self.row_types, self.row_heads, strict=True):
            label = _style.layer_label(i, k) if i is not None else name
            y.append(_style.colored(label if h is None else f"{label} · head {h}", k))
        if self.axis == "position":
            x = [
                f"{j}: {_style.escape(c)}" if c == r else f"{j}: {_style.escape(c)} / {_style.escape(r)}"
                for j, (c, r) in enumerate(zip(self.clean_str_tokens, self.corrupted_str_tokens, strict=True))
            ]
        elif self.axis == "head":
            x = [f"head {h}" for h in range(self.scores.shape[1])]
        else:
            x = ["all positions"]
        if zmax is None:
            zmax = max(1.0, float(self.scores.nan_to_num(0.0).abs().max()) if self.scores.numel() else 0.0)
        if not zmax > 0:
            raise ValueError(f"zmax must be positive, got {zmax}")
        ticks = [-zmax, -zmax / 2, 0.0, zmax / 2, zmax]  # five ticks, each ≥ 30 px apart (min. height)
        fig = go.Figure(
            go.Heatmap(
                z=self.scores.numpy(),
                x=x,
                y=y,
                zmin=-zmax,
                zmax=zmax,
                colorscale="RdBu",
                colorbar=dict(
                    title=dict(text="restored", side="right"),
                    tickvals=ticks,
                    ticktext=[f"{100 * t:+.3g}%" if t else "0" for t in ticks],
                    thickness=14,
                ),
                hovertemplate="%{y} · %{x}<br>score %{z:.3f}<extra></extra>",
            )
        )
        _style.add_type_legend(fig, [k for k in self.row_types if k is not None])
        fig.update_layout(
            title=f"Activation patching ({self.point}): clean metric {self.clean_metric:.3f}, "
            f"corrupted {self.corrupted_metric:.3f}",
            xaxis_title=self.axis if self.axis != "all" else "",
            legend=_style.LEGEND,
            plot_bgcolor="white",
            # the plot area at least 150 px high (the colour bar's ticks), plus the title, legend and the
            # x labels: token labels, rotated, need more room than head numbers
            height=max(150, 24 * len(y)) + (260 if self.axis == "position" else 160),
        )
        return fig


def _rows(model, points: str | Sequence[str]) -> tuple[str, list[str], str, bool]:
    """-> (point label, hook names to patch, column axis, one row per head)."""
    if isinstance(points, str) and points in POINTS:
        short, kind, axis, per_head = POINTS[points]
        blocks = range(model.n_layers) if kind is None else model.layers(kind)
        if not blocks:
            raise ValueError(
                f"{points!r} patches {kind} layers, and this model has none (pattern {model.pattern})"
            )
        return points, [f"blocks.{i}.{short}" for i in blocks], axis, per_head
    names = [points] if isinstance(points, str) else list(points)
    if not names:
        raise ValueError("points is empty")
    try:
        model._resolve(names)
    except KeyError as err:
        kinds = ", ".join(repr(k) for k in POINTS)
        raise ValueError(f"points must be one of {kinds}, or hook names: {err}") from None
    ro = [n for n in names if parse(n)[2] in READ_ONLY]
    if ro:
        raise ValueError(f"{ro} are read-only descriptions of the computation and cannot be patched")
    return "hooks", names, "all", False


def _scalar(value: torch.Tensor) -> torch.Tensor:
    value = torch.as_tensor(value)
    return value.float().mean() if value.numel() != 1 else value.float().reshape(())


def _ids(model, prompt, what: str) -> torch.Tensor:
    ids, mask = model.to_inputs(prompt, None)
    if mask is not None:
        raise ValueError(
            f"the {what} texts tokenise to different lengths (padding): patching pairs positions, so give "
            "prompts of equal token length"
        )
    return ids


@torch.no_grad()
def patch(
    model,
    clean,
    corrupted,
    points: str | Sequence[str] = "resid_pre",
    metric: Metric | None = None,
    *,
    answer: int | str | Sequence[int] | None = None,
    wrong: int | str | Sequence[int] | None = None,
    position: int = -1,
    max_batch: int = 32,
) -> PatchResult:
    """Patch clean activations into the corrupted run, one grid cell at a time.

    ``clean``, ``corrupted``: texts or ids ``(b, p)`` of the same shape. ``points``:

    - ``'resid_pre'`` / ``'resid_post'`` / ``'mixer_out'``: every block × position  -> (n_blocks, p)
    - ``'attn_heads'``: ``hook_z`` of each attention head, all positions             -> (n_attention, h)
    - ``'mamba_heads'``: ``hook_ssm_out`` of each Mamba head, all positions          -> (n_mamba, h_mamba)
    - ``'attn_head_positions'`` / ``'mamba_head_positions'``: each head at each position
      -> (n_blocks · h, p), rows block by block, head by head (``row_heads``)
    - ``'moe_routing'``: the experts chosen (``hook_topk_indices``) per MoE block × position -> (n_moe, p)
    - a list of hook names: each patched whole                                        -> (n_names, 1)

    The metric: ``metric(logits (b p v))`` returning a scalar or per-row values (averaged), or the
    logit difference ``answer - wrong`` at ``position`` (tokens: ids, one-token strings, or one per row).
    ``max_batch``: rows per forward (patched copies × batch).
    """
    c_ids, x_ids = _ids(model, clean, "clean"), _ids(model, corrupted, "corrupted")
    if c_ids.shape != x_ids.shape:
        raise ValueError(
            f"clean is {tuple(c_ids.shape)} tokens and corrupted {tuple(x_ids.shape)}: patching pairs "
            "positions, so both must have the same batch size and token length"
        )
    if (metric is None) == (answer is None):
        raise ValueError("give either metric=fn(logits) or answer= (and optionally wrong=) token(s)")
    if metric is None:
        metric = logit_diff(
            _token_ids(model, answer), None if wrong is None else _token_ids(model, wrong), position
        )
    label, names, axis, per_head = _rows(model, points)

    clean_logits, cache = model.run_with_cache(c_ids, names_filter=names)
    m_clean = float(_scalar(metric(clean_logits)))
    m_corr = float(_scalar(metric(model(x_ids))))
    if abs(m_clean - m_corr) <= 1e-6 * max(1.0, abs(m_clean)):
        raise ValueError(
            f"the metric is {m_clean:.6g} on both clean and corrupted prompts, so nothing can be restored: "
            "choose prompts or answer tokens that the model tells apart"
        )
    rows = [(n, h) for n in names for h in (range(cache[n].shape[2]) if per_head else [None])]
    raw = torch.stack([_patch_row(model, x_ids, n, h, cache[n], axis, metric, max_batch) for n, h in rows])
    layers = [parse(n)[0] for n, _ in rows]
    return PatchResult(
        point=label,
        scores=(raw - m_corr) / (m_clean - m_corr),
        metric=raw,
        clean_metric=m_clean,
        corrupted_metric=m_corr,
        rows=[n for n, _ in rows],
        row_layers=layers,
        row_types=[None if i is None else model.layer_types[i] for i in layers],
        axis=axis,
        clean_str_tokens=_style.str_tokens(model, c_ids[:1])[0],
        corrupted_str_tokens=_style.str_tokens(model, x_ids[:1])[0],
        row_heads=[h for _, h in rows],
    )


def _token_ids(model, tokens) -> int | torch.Tensor:
    if isinstance(tokens, (int, str)):
        return single_token(model, tokens)
    return torch.tensor([single_token(model, t) for t in tokens])


def _patch_row(
    model, ids, name: str, head: int | None, clean: torch.Tensor, axis: str, metric: Metric, max_batch: int
):
    """The metric with ``name`` (only its ``head``, if given) patched at each column (``(cols,)``), several
    columns per forward."""
    b = ids.shape[0]
    n_cols = 1 if axis == "all" else clean.shape[_AXIS_DIM[axis]]
    per_run = max(1, max_batch // b)
    out = []
    for c0 in range(0, n_cols, per_run):
        cols = range(c0, min(c0 + per_run, n_cols))
        k = len(cols)

        def write(t: torch.Tensor, hook, cols=cols, k=k) -> torch.Tensor:
            t = t.clone(memory_format=torch.contiguous_format)
            copies = t.view(k, b, *t.shape[1:])
            for copy, col in zip(copies, cols, strict=True):
                if axis == "all":
                    copy.copy_(clean)
                else:
                    index = (slice(None),) * _AXIS_DIM[axis] + (col,) + (() if head is None else (head,))
                    copy[index] = clean[index]
            return t

        logits = model.run_with_hooks(ids.repeat(k, 1), fwd_hooks=[(name, write)])
        out += [_scalar(metric(chunk)) for chunk in logits.view(k, b, *logits.shape[1:])]
    return torch.stack(out).cpu()
