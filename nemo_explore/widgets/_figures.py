"""Small plotly building blocks shared by the views: heatmaps over tokens and a mosaic of head thumbnails."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

# Colour scales. Probabilities and shares: sequential from white; signed values: diverging, 0 = white.
SEQUENTIAL = "Blues"
SHARE = "Purples"
DIVERGING = [[0.0, "#2166ac"], [0.25, "#92c5de"], [0.5, "#f7f7f7"], [0.75, "#f4a582"], [1.0, "#b2182b"]]
FONT = dict(family="system-ui, sans-serif", size=11)


@cache
def _template() -> dict:
    """plotly_white with trace defaults for the traces the views draw only: plotly deep-copies a named
    template into every figure (55 ms each for the whole of plotly_white), and sends it to the browser."""
    import plotly.io as pio

    white = pio.templates["plotly_white"]
    data = white.data.to_plotly_json()
    kept = {t: data[t] for t in ("heatmap", "bar", "scatter")}
    for heatmap in kept["heatmap"]:  # plotly measures every colour-bar label to hide those past the figure
        heatmap["colorbar"] = dict(heatmap.get("colorbar", {}), ticklabeloverflow="allow")
    return dict(layout=white.layout.to_plotly_json(), data=kept)


def figure_widget(width: int, height: int, **layout):
    from ._plotly import Figure

    layout.setdefault("margin", dict(l=10, r=10, t=36, b=10))
    return Figure(
        layout=dict(width=width, height=height, autosize=False, font=FONT, template=_template(), **layout)
    )


def fit_height(fig, plot: int, bottom: int) -> None:
    """Set ``fig``'s bottom margin to ``bottom`` px and its height to its top margin + ``plot`` + that."""
    fig.layout.margin.b = bottom
    fig.layout.height = fig.layout.margin.t + plot + bottom


def pooled(maps: torch.Tensor, size: int, diagonal: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Block means of maps (..., n, m) -> (..., t, u), t = min(n, size), u = min(m, size); and where the
    causal lower triangle (column ≤ row + ``diagonal``) reaches, (t, u) bool, so blocks wholly above it can
    be left blank."""
    n, m = maps.shape[-2:]
    t = (min(n, size), min(m, size))
    if t != (n, m):
        maps = F.adaptive_avg_pool2d(maps.reshape(1, -1, n, m), t).reshape(*maps.shape[:-2], *t)
    return maps, reach(n, m, *t, diagonal=diagonal)


def reach(n: int, m: int, t: int, u: int, diagonal: int = 0) -> torch.Tensor:
    """Which blocks of adaptive pooling's (t, u) grid over an (n, m) map hold a cell of the causal lower
    triangle (column ≤ row + ``diagonal``): (t, u) bool, computed from the bins alone."""
    last_row = torch.tensor([-(-(i + 1) * n // t) - 1 for i in range(t)])
    first_col = torch.tensor([j * m // u for j in range(u)])
    return first_col[None, :] <= last_row[:, None] + diagonal


def mosaic(tiles: np.ndarray, cols: int, gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Tiles (h, t, t) -> one image (rows·(t+gap), cols·(t+gap)) with NaN gaps, and the head index of each
    cell (-1 in the gaps): one heatmap trace draws every head, however many there are."""
    h, t, _ = tiles.shape
    rows = math.ceil(h / cols)
    step = t + gap
    z = np.full((rows * step - gap, cols * step - gap), np.nan, dtype=np.float32)
    idx = np.full(z.shape, -1, dtype=np.int8 if h < 128 else np.int16)  # sent as is: a byte per cell
    for k in range(h):
        r, c = divmod(k, cols)
        z[r * step : r * step + t, c * step : c * step + t] = tiles[k]
        idx[r * step : r * step + t, c * step : c * step + t] = k
    return z, idx


def grid_columns(h: int) -> int:
    """Columns of the head mosaic: 4 for a few heads, about √h for many (128 heads -> 12 columns)."""
    return min(h, max(4, math.ceil(math.sqrt(h))))


def tile_rect(k: int, cols: int, t: int, gap: int) -> dict:
    """A plotly rectangle shape around tile k of a mosaic (data coordinates, cell centres at integers)."""
    r, c = divmod(k, cols)
    step = t + gap
    return dict(
        type="rect",
        x0=c * step - 0.5 - gap / 2,
        x1=c * step + t - 0.5 + gap / 2,
        y0=r * step - 0.5 - gap / 2,
        y1=r * step + t - 0.5 + gap / 2,
        line=dict(color="#111", width=2),
        fillcolor="rgba(0,0,0,0)",
    )
