"""One look for every analysis figure: a colour per layer type, block labels, and token text (read by
the package's one rule, :mod:`nemo_explore.core.token_text`, as in the widgets).

Nothing here imports plotly at module level; the helpers that build traces import it when called.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ..core.layer_types import ATTENTION, LAYER_COLORS, MAMBA, MLP, MOE
from ..core.token_text import join_pieces, shown, token_text
from ..core.token_text import position_labels as _position_labels

EMBED_COLOR = "#4c5b6b"  # slate: the embedding row/bar of a figure
SHORT_NAME = {MAMBA: "mamba", ATTENTION: "attn", MLP: "mlp", MOE: "moe"}
# The layer-type legend: one row above the plot, clear of colour bars.
LEGEND = dict(title="layer type", orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1)


def layer_label(i: int, kind: str) -> str:
    """``(3, 'attention')`` -> ``'3 attn'``: how a block is named on every axis."""
    return f"{i} {SHORT_NAME[kind]}"


def colored(text: str, kind: str | None) -> str:
    """Tick text in the colour of a layer type (plotly reads this subset of HTML)."""
    color = LAYER_COLORS.get(kind, EMBED_COLOR) if kind else EMBED_COLOR
    return f'<span style="color:{color}"><b>{text}</b></span>'


def token_texts(tokenizer, ids: Iterable[int]) -> dict[int, str]:
    """Token id -> its text (decoded alone, spaces kept), or ``'#id'`` when there is no tokenizer."""
    unique = sorted({int(i) for i in ids})
    if tokenizer is None:
        return {i: f"#{i}" for i in unique}
    return {i: token_text(tokenizer, i) for i in unique}


def str_tokens(model, ids: torch.Tensor) -> list[list[str]]:
    """One list of token texts per row of ``ids`` (b p)."""
    text = token_texts(model.tokenizer, ids.reshape(-1).tolist())
    return [[text[i] for i in row] for row in ids.tolist()]


escape = shown  # one token's text, safe and visible in a figure: ' "a"\n' -> '␣&#34;a&#34;↵'


def position_labels(tokens: Sequence[str], start: int = 0) -> list[str]:
    """Unique axis categories for a row of tokens, as the widgets label them: ``'3 ␣cat'`` (a character
    split over several tokens shown on each, ``join_pieces``)."""
    return _position_labels(join_pieces(tokens), start)


def add_type_legend(fig, kinds: Iterable[str]) -> None:
    """One legend entry per layer type present, so the colours are explained on every figure."""
    import plotly.graph_objects as go

    for kind in dict.fromkeys(kinds):
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                marker=dict(color=LAYER_COLORS[kind], size=10, symbol="square"),
                name=kind,
                showlegend=True,
            )
        )


def layer_map(
    fig, layer_types: Sequence[str], highlight: Iterable[int] = (), note: str = "selected", row=None, col=None
) -> None:
    """The hybrid layer map as a strip of coloured cells, highlighted blocks opaque and the rest faded."""
    import plotly.graph_objects as go

    marked = set(highlight)
    fig.add_trace(
        go.Bar(
            x=[layer_label(i, k) for i, k in enumerate(layer_types)],
            y=[1] * len(layer_types),
            marker=dict(
                color=[LAYER_COLORS[k] for k in layer_types],
                opacity=[1.0 if i in marked else 0.25 for i in range(len(layer_types))],
            ),
            hovertext=[
                f"block {i}: {k}{f' ({note})' if i in marked else ''}" for i, k in enumerate(layer_types)
            ],
            hoverinfo="text",
            showlegend=False,
        ),
        row=row,
        col=col,
    )
    fig.update_yaxes(visible=False, row=row, col=col)
