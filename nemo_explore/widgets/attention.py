"""AttentionHeads: the heads of an attention layer and the hidden attention of a Mamba layer, in one view.

An attention pattern is a probability per row. Mamba-2's hidden attention M (y_t = Σ_s M[t,s]·x_s + D·x_t)
is signed and unnormalised, so it is drawn on a diverging scale centred on 0, or — the user's choice —
as |M| ÷ its row's Σ|M|, labelled as such; never made to look like a softmax.

Long inputs: the detail shows at most ``PAIRWISE_WINDOW`` query rows × as many key columns, every value
exact (hover); query and key ranges move independently. An overview shows the head's whole map as block
means of at most ``OVERVIEW``×``OVERVIEW`` cells, the detail's window outlined; clicking it moves the
window there. The head thumbnails share a budget of ``THUMB_CELLS`` cells (block means).
"""

from __future__ import annotations

import math

import ipywidgets as widgets
import numpy as np
import torch

from ..core.token_text import position_labels, visible
from ..pairwise import available, pairwise_maps
from ._base import STYLE, CacheView
from ._figures import (
    DIVERGING,
    SEQUENTIAL,
    SHARE,
    figure_widget,
    grid_columns,
    mosaic,
    pooled,
    reach,
    tile_rect,
)
from ._static import Page, StaticHTML, circuitsvis_html
from ._tokens import Window, tick_room, ticks

PAIRWISE_WINDOW = 256  # ≥ 1.8 px per cell in the detail plot: every value drawn, none pooled
OVERVIEW = 128
THUMB = 48  # at most, per thumbnail side
THUMB_CELLS = 32_768  # all thumbnails together: 4 heads of 48², 32 of 32², 64 of 22²

NAMES = "('hook_q', 'hook_k', 'hook_dt', 'hook_B', 'hook_C')"  # what the maps are computed from

ABOUT = {
    "attention": "<b>Attention pattern</b>: row = query token, column = key token; each row is a probability "
    "distribution over the keys up to the query.",
    "signed": "<b>Mamba-2 hidden attention M</b> (y<sub>t</sub> = Σ<sub>s</sub> M[t,s]·x<sub>s</sub> + "
    "D·x<sub>t</sub>): signed and unnormalised (C·B can be negative), its rows do not sum to 1. "
    "Red &gt; 0 &gt; blue, white = 0.",
    "share": "<b>Mamba-2 hidden attention, |M| ÷ row Σ|M|</b>: each cell's share of its row's magnitude. "
    "M itself is signed and unnormalised; this is a view of it, not a probability the model computes.",
}


class AttentionHeads(CacheView):
    """Every head of an attention layer (a grid of thumbnails and one head in detail), and the hidden
    attention of a Mamba layer in the same view: the layer menu lists both kinds.

    ``cache`` holds, per layer shown, the map itself (``blocks.{i}.attn.hook_pattern``,
    ``blocks.{i}.mamba.hook_hidden_attn``: b h q k) or what it is computed from, exactly, for the rows a view
    shows (``hook_q`` and ``hook_k``; ``hook_dt``, ``hook_B`` and ``hook_C``: O(p) per layer, see
    ``nemo_explore.pairwise``). ``layer``: the block shown first (default: the first attention layer cached,
    else the first Mamba layer); ``head``: the head in detail; ``mode``: for Mamba layers ``'signed'`` (M
    itself, diverging scale) or ``'share'`` (|M| ÷ row Σ|M|); ``sink``: leave the first token's column (the
    attention sink) out of the colour range, so that the rest does not fade to white; ``batch``: the row of
    the batch;
    ``window``: first position of the window on long inputs; ``pattern_window`` / ``hidden_attn_window``:
    the ``(start, stop)`` query rows the patterns / hidden attention were computed for (default: what the
    cache says it was run with).
    """

    title = "Attention heads"
    ARRAYS = {"attention": "attn.hook_pattern", "mamba": "mamba.hook_hidden_attn"}  # (h, q, p) per block

    def __init__(
        self,
        cache,
        layer: int | None = None,
        head: int = 0,
        *,
        mode: str = "signed",
        sink: bool = True,
        batch: int = 0,
        window: int | None = None,
        hidden_attn_window: tuple[int, int] | None = None,
        pattern_window: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(cache, batch)
        self._sources = self._find_sources(cache)
        layer = self._first_layer() if layer is None else layer
        self._check_maps(layer)
        if mode not in ("signed", "share"):
            raise ValueError(f"mode must be 'signed' or 'share' (|M| ÷ row Σ|M|), not {mode!r}")
        self._query_windows = {"pattern_window": pattern_window, "hidden_attn_window": hidden_attn_window}

        self.layer_select = widgets.Dropdown(
            options=[(self._layer_label(i), i) for i in self._sources], value=layer, description="layer"
        )
        self.head_select = widgets.Dropdown(
            description="head",
            layout=widgets.Layout(width="190px", flex="0 0 auto"),
            style=dict(description_width="40px"),
        )
        self.mode_select = widgets.ToggleButtons(
            options=[("signed M", "signed"), ("|M| ÷ row Σ|M|", "share")],
            value=mode,
            tooltips=["M itself: diverging scale, 0 = white", "each cell's share of its row's magnitude"],
            style=dict(button_width="120px"),
        )
        self.sink_box = widgets.Checkbox(
            value=sink,
            description="colour scale leaves out the first token (sink)",
            indent=False,
            layout=widgets.Layout(width="auto"),
        )
        self.window_slider = self._slider()
        self.window_slider.description = "queries"
        self.key_slider = self._slider()
        self.key_slider.description = "keys"
        self.key_slider.unobserve(self._on_window, names="value")
        self.key_slider.observe(self._on_keys, names="value")
        self.grid = figure_widget(380, 380)
        self.grid.add_heatmap(
            hoverongaps=False, showscale=False, hovertemplate="head %{customdata}<extra></extra>"
        )
        self.grid.data[0].on_click(self._on_grid_click)
        self.grid._config = {"displayModeBar": False}  # (synced plotly config) no zoom tools on thumbnails
        self.overview = figure_widget(380, 380)
        self.overview.add_heatmap(hoverongaps=False, showscale=False)
        self.overview.data[0].on_click(self._on_overview_click)
        self.overview.update_yaxes(autorange="reversed", constrain="domain", title=dict(text="query"))
        self.overview.update_xaxes(constrain="domain", title=dict(text="key"))
        self.overview.layout.margin = dict(l=50, r=10, t=50, b=40)
        self.overview._config = {"displayModeBar": False}
        self.overview_box = widgets.Box([self.overview], layout=widgets.Layout(display="none"))
        self.detail = figure_widget(580, 560, margin=dict(l=10, r=10, t=50, b=10))  # room for two title lines
        self.detail.add_heatmap(hoverongaps=False, colorbar=dict(thickness=12))
        # token axes: margins set per update (tick_room), so plotly draws once
        self.detail.update_yaxes(autorange="reversed", tickfont=dict(size=9), automargin=False)
        self.detail.update_xaxes(tickfont=dict(size=9), tickangle=-60, automargin=False)

        for control in (self.layer_select, self.head_select, self.mode_select, self.sink_box):
            control.observe(self._on_control, names="value")
        left = widgets.VBox([self.grid, self.overview_box])
        figures = widgets.HBox([left, self.detail], layout=widgets.Layout(flex_flow="row wrap"))
        self.children = [
            widgets.HTML(STYLE),
            widgets.HBox(
                [self.layer_select, self.head_select, self.mode_select, self.sink_box],
                layout=widgets.Layout(flex_flow="row wrap"),
            ),
            self.window_slider,
            self.key_slider,
            self.note,
            figures,
        ]
        self._load(layer, head, window)

    # -------------------------------------------------------------- state
    @property
    def head(self) -> int:
        return self.head_select.value

    @property
    def mode(self) -> str:
        return self.mode_select.value

    def select(
        self,
        layer: int | None = None,
        head: int | None = None,
        window: int | None = None,
        keys: int | None = None,
    ) -> None:
        """Show another layer, head or window position (what the controls do). ``window`` moves the query
        rows and the key columns together; ``keys`` then moves the key columns alone (e.g. late queries
        against early keys)."""
        if layer is not None:
            self._check_maps(layer)
        self._hold, held = True, self._hold
        try:
            self._load(self.layer if layer is None else layer, head, window)
        finally:
            self._hold = held
        if keys is not None:
            self._keys.move(keys)
            self._sync_slider(self.key_slider, self._keys)
        self._redraw()

    def rebind(self, cache, layer: int | None = None) -> None:
        """Show another cache (a new prompt) in this widget: its figures are updated in place, and only
        the new data goes to the browser. ``layer``: the block to show (default: the one shown now, if
        the new cache has it)."""
        self._check_cache(cache)
        sources = self._find_sources(cache)
        self.cache, self._sources, self._window, self._layer_key = cache, sources, None, None
        if layer is None:
            layer = self.layer if self.layer in sources else self._first_layer()
        self._check_maps(layer)
        self._set_layers([(self._layer_label(i), i) for i in sources], layer)
        self._load(layer, None, None)

    def _release(self) -> None:
        super()._release()
        self._maps = None  # its per-token points

    def _find_sources(self, cache) -> list[int]:
        sources = [i for i in range(len(cache.layer_types)) if available(cache, i)]
        if not sources:
            raise ValueError(
                "AttentionHeads found no attention pattern or Mamba hidden attention in this cache, nor what "
                "they are computed from: cache that first, e.g. model.run_with_cache(text, "
                f"names_filter=lambda n: n.endswith({NAMES}))"
            )
        return sources

    def _check_maps(self, layer: int) -> None:
        """A clear error unless block ``layer``'s maps can be shown from this cache."""
        kinds = {"attention": None, "mamba": None}
        self._check_layer(layer, kinds, NAMES)
        if layer not in self._sources:
            pairwise_maps(self.cache, layer, self.batch)  # raises, naming what to cache

    def _first_layer(self) -> int:
        """The first attention layer cached, else the first Mamba layer."""
        types = self.cache.layer_types
        return next((i for i in self._sources if types[i] == "attention"), next(iter(self._sources)))

    def _layer_label(self, i: int) -> str:
        kind = self.cache.layer_types[i]
        return f"{i} · attention" if kind == "attention" else f"{i} · mamba (hidden attention)"

    def _load(self, layer: int, head: int | None, window: int | None) -> None:
        """Read block ``layer`` from the cache and redraw; ``head=None`` keeps the head where it exists."""
        kind = self.cache.layer_types[layer]
        option = "pattern_window" if kind == "attention" else "hidden_attn_window"
        span = self._query_windows[option]
        try:
            maps = pairwise_maps(self.cache, layer, self.batch, None if span is None else int(span[0]))
        except ValueError as err:
            if "query rows" not in str(err):
                raise
            raise ValueError(f"{err}, e.g. AttentionHeads(cache, {option}=(start, stop))") from None
        h, p = maps.n_heads, maps.n_keys
        q0, q1 = maps.rows
        if head is None:
            head = self.head if self.head is not None and self.head < h else 0
        if not 0 <= head < h:
            raise IndexError(f"head {head} out of range: block {layer} has {h} heads (0..{h - 1})")
        tokens, offset = self._tokens(p)
        lo, hi = max(q0, offset), min(q1, offset + len(tokens))
        if hi <= lo:
            raise ValueError(f"block {layer}'s map has no query row on a real (unpadded) token")
        keep = getattr(self, "_window", None)
        keys = None if window is not None or keep is None else self._keys.start
        self._kind, self._maps = kind, maps
        if getattr(self, "_layer_key", None) != (layer, self.batch):  # what is kept per layer
            self._layer_key, self._abs_sums, self._drawn = (layer, self.batch), {}, {}
        self._all_tokens, self._offset = tokens, offset
        if window is None and keep is not None:
            window = keep.start
        self._window = Window(PAIRWISE_WINDOW, lo, hi, start=window)
        # keys: any real position up to the last query row; by default the query rows' own positions
        self._keys = Window(PAIRWISE_WINDOW, offset, hi, start=self._window.start if keys is None else keys)
        self._hold, held = True, self._hold
        self.layer_select.value = layer
        self.head_select.options = [(f"head {k}", k) for k in range(h)]
        self.head_select.value = head
        self.mode_select.layout.display = None if kind == "mamba" else "none"
        self._sync_slider(self.window_slider, self._window)
        self._sync_slider(self.key_slider, self._keys)
        self._hold = held
        if not held:
            self._redraw()

    def _on_window(self, change) -> None:
        """The query window moved: the key window moves with it."""
        if not self._hold:
            self._window.move(change["new"])
            self._keys.move(self._window.start)
            self._hold = True
            self._sync_slider(self.key_slider, self._keys)
            self._hold = False
            self._redraw()

    def _on_keys(self, change) -> None:
        if not self._hold:
            self._keys.move(change["new"])
            self._redraw()

    def _on_layer(self, layer: int) -> None:
        self._load(layer, None, None)  # the head/expert controls depend on the layer

    def _on_grid_click(self, trace, points, state) -> None:
        if points.xs:
            k = int(self._grid_heads[int(points.ys[0]), int(points.xs[0])])
            if k >= 0:
                self.head_select.value = k

    # -------------------------------------------------------------- data
    def shown(self) -> dict:
        """What the view draws now: ``maps`` (h, n_q, n_k) for the window's query rows × key columns,
        ``tokens`` (n_q) and ``start`` of the query rows, ``keys`` (n_k) and ``key_start`` of the key
        columns, ``kind`` ('attention' or 'mamba') and ``mode`` ('pattern', 'signed' or 'share')."""
        view = self._labels()
        s, ks = view["start"], view["key_start"]
        maps = self._rows(s, s + len(view["tokens"]), ks, ks + len(view["keys"]), view["mode"])
        return dict(maps=maps, **view)

    def _labels(self) -> dict:
        """``shown()`` but the maps: the window's query and key tokens, their starts, kind and mode."""
        s, e = self._window.start, self._window.stop
        ks, ke = self._keys.start, self._keys.stop
        mode = "pattern" if self._kind == "attention" else self.mode
        tokens = self._all_tokens[s - self._offset : e - self._offset]
        keys = self._all_tokens[ks - self._offset : ke - self._offset]
        return dict(tokens=tokens, start=s, keys=keys, key_start=ks, kind=self._kind, mode=mode)

    def _rows(self, s: int, e: int, ks: int, ke: int, mode: str, head: int | None = None) -> torch.Tensor:
        """Query rows s..e-1 × key columns ks..ke-1 as ``mode`` shows them: (h, n_q, n_k), or (n_q, n_k)
        for one ``head``. Only the slice is computed; |M| shares divide by row sums kept per layer."""
        maps = self._maps.window(s, e, ks, ke, head)
        if mode == "share":
            sums = self._abs_sums.get((head, s, e))
            if sums is None:  # Σ|M| over each row's real keys: only the rows and heads asked for
                real = self._maps.window(s, e, self._offset, self._offset + len(self._all_tokens), head)
                sums = torch.linalg.vector_norm(real, 1, dim=-1)  # one pass, no |M| copy
                if len(self._abs_sums) >= 64:  # (slider moves add entries)
                    self._abs_sums.clear()
                sums = self._abs_sums[head, s, e] = sums.clamp_min(torch.finfo(real.dtype).tiny)
            maps = maps.abs() / sums[..., None]
        return maps

    def _scale(self, z: np.ndarray, mode: str, skip: int, sink: int) -> dict:
        """Colour scale for ``z``, its range from rows ``skip``: and columns ``sink``: (see ``_draw``)."""
        rest = np.abs(z[skip:, sink:])
        top = (float(np.nanmax(rest)) if rest.size and not np.isnan(rest).all() else 0.0) or 1.0
        return {
            "pattern": dict(colorscale=SEQUENTIAL, zmin=0, zmax=top, zmid=None),
            "signed": dict(colorscale=DIVERGING, zmin=-top, zmax=top, zmid=0),
            "share": dict(colorscale=SHARE, zmin=0, zmax=top, zmid=None),
        }[mode]

    def _figures(self) -> tuple:
        return (self.detail, self.grid, self.overview)

    def _draw(self) -> None:
        view = self._labels()
        s, e, ks, ke = self._window.start, self._window.stop, self._keys.start, self._keys.stop
        mode = view["mode"]
        nq, nk = e - s, ke - ks
        # The first token sees only itself (p = 1, and a share of 1): leave that row out of the colour
        # range, or it would wash out every other row. Hover still shows its value. Most heads also put
        # much of every row on the first token (an attention sink): with the box ticked its column is left
        # out of the range too, and saturates.
        skip = 1 if mode != "signed" and s == self._offset and nq > 1 else 0
        sink = 1 if self.sink_box.value and ks == self._offset and nk > 1 else 0
        z = self._rows(s, e, ks, ke, mode, self.head).numpy().copy()
        future = np.arange(ks, ke)[None, :] > np.arange(s, e)[:, None]  # keys after their query
        if not z[future].any():  # a causal map: those cells are blank, not zero
            z[future] = np.nan
        self._draw_detail(z, view, self._scale(z, mode, skip, sink))
        grid_scale = {**self._scale(z, mode, 0, 0), "zmin": -1 if mode == "signed" else 0, "zmax": 1}
        self._draw_grid(mode, skip, grid_scale)
        self._draw_overview(mode)
        note = ABOUT["attention" if mode == "pattern" else mode]
        if sink:
            note += (
                " The colour range leaves out the first token's column (the sink), which saturates; "
                "hover shows every value."
            )
        self._show_note(note, "p×p maps")
        if self._window.active and (ks, ke) != (s, e):
            self.note.value += (
                f'<div class="ne-warn">Keys {ks}–{ke - 1} against queries '
                f"{s}–{e - 1} (the keys slider moves the columns alone).</div>"
            )

    def _draw_detail(self, z: np.ndarray, view: dict, scale: dict) -> None:
        layer, head, mode = self.layer, self.head, view["mode"]
        tokens, start, keys, ks = view["tokens"], view["start"], view["keys"], view["key_start"]
        what = {"pattern": "p", "signed": "M", "share": "|M| share"}[mode]
        whole = ks == self._offset and ks + len(keys) >= start + len(tokens)
        sums = (
            "each row sums to 1"
            if whole
            else f"rows sum to 1 over keys up to the query; keys {ks}–{ks + len(keys) - 1} shown"
        )
        title = {
            "pattern": f"block {layer} · attention · head {head}: pattern<br>({sums})",  # two lines: it fits
            "signed": f"block {layer} · mamba · head {head}: hidden attention M (signed, unnormalised)",
            "share": f"block {layer} · mamba · head {head}: |M| ÷ row Σ|M| (not a softmax)",
        }[mode]
        with self.detail.batch_update():
            trace = self.detail.data[0]
            trace.update(
                x=position_labels(keys, ks),
                y=position_labels(tokens, start),
                z=z.astype(np.float32),
                colorbar=dict(title=dict(text=what)),
                **scale,
            )
            trace.hovertemplate = f"query %{{y}}<br>key %{{x}}<br>{what} = %{{z:.4g}}<extra></extra>"
            self.detail.update_xaxes(**ticks(keys, ks, pixels=460))
            self.detail.update_yaxes(**ticks(tokens, start, pixels=440))
            self.detail.layout.margin.update(l=tick_room(tokens, start, angle=90), b=tick_room(keys, ks))
            self.detail.layout.title = dict(text=title, font=dict(size=12))

    def _draw_grid(self, mode: str, skip: int, scale: dict) -> None:
        """Every head as a thumbnail of the query rows' own square, each scaled to its own max |value|
        (rows from ``skip`` on); the thumbnails are sent only when what they show changes, the head's
        outline always."""
        s, e = self._window.start, self._window.stop
        key = (self.layer, mode, s, e)
        h = self._maps.n_heads
        cols = grid_columns(h)
        side = min(THUMB, max(8, math.isqrt(THUMB_CELLS // h)))
        if self._drawn.get("grid") == key:
            t, gap = self._drawn["grid_tiles"]
            self.grid.layout.shapes = [tile_rect(self.head, cols, t, gap)]
            return
        maps = self._rows(s, e, s, e, mode)
        causal = bool((torch.triu(maps, 1) == 0).all())
        tiles, reach = pooled(maps, side)
        t, n = tiles.shape[-1], maps.shape[-1]
        peak = tiles[:, skip if t > 1 else 0 :].abs().amax((1, 2), keepdim=True)
        tiles = (tiles / peak.clamp_min(torch.finfo(tiles.dtype).tiny)).clamp(-1, 1)
        if causal:
            tiles = tiles.masked_fill(~reach, float("nan"))
        gap = max(1, t // 8)
        self._drawn.update(grid=key, grid_tiles=(t, gap))
        old = getattr(self, "_grid_heads", None)
        z, self._grid_heads = mosaic(tiles.numpy(), cols, gap)
        pooled_note = f" (block means, {n}→{t} cells)" if t < n else ""
        with self.grid.batch_update():
            self.grid.data[0].update(z=z, **scale)
            if old is None or not np.array_equal(old, self._grid_heads):  # sent when the mosaic changes
                self.grid.data[0].customdata = self._grid_heads
            self.grid.layout.height = max(160, int(360 * -(-h // cols) / cols) + 60)
            self.grid.update_xaxes(visible=False, constrain="domain")
            self.grid.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
            self.grid.layout.shapes = [tile_rect(self.head, cols, t, gap)]
            self.grid.layout.title = dict(
                text=f"{h} heads, each scaled to its max{pooled_note}<br>click one for detail",
                font=dict(size=11),
            )

    def _draw_overview(self, mode: str) -> None:
        """The head's whole map (every real query row × key column), block means of at most ``OVERVIEW``
        cells a side, the detail's window outlined; shown only when the window cuts the input."""
        active = self._window.active or self._keys.active
        self.overview_box.layout.display = None if active else "none"
        if not active:
            return
        key = (self.layer, self.head, mode, self.sink_box.value)
        s, e, ks, ke = self._window.start, self._window.stop, self._keys.start, self._keys.stop
        with self.overview.batch_update():  # one message: the map (when it changed) and the window's outline
            if self._drawn.get("overview") != key:
                self._drawn["overview"] = key
                self._overview_map(mode)
            self.overview.layout.shapes = [
                dict(type="rect", x0=ks - 0.5, x1=ke - 0.5, y0=s - 0.5, y1=e - 0.5,
                     line=dict(color="#111", width=1.5), fillcolor="rgba(0,0,0,0)")
            ]  # fmt: skip

    def _overview_map(self, mode: str) -> None:
        """The overview's data and title: the head's real rows × keys as block means."""
        lo, hi = self._window.lo, self._window.hi  # the real query rows
        ko, khi = self._offset, self._window.hi  # every real key up to the last query
        share = None
        if mode == "share":  # each row's share of its Σ|M| over the real keys (all of them are here)
            share = lambda rows: rows.abs() / rows.abs().sum(-1, keepdim=True).clamp_min(1e-38)  # noqa: E731
        low, each = self._maps.pooled(lo, hi, ko, khi, self.head, OVERVIEW, transform=share)
        low = low.masked_fill(~reach(hi - lo, khi - ko, *low.shape, diagonal=lo - ko), float("nan"))
        z = low.numpy().astype(np.float32)
        skip = 1 if mode != "signed" and z.shape[0] > 1 and lo == self._offset else 0
        sink = 1 if self.sink_box.value and z.shape[1] > 1 else 0
        rows, cols = _centres(lo, hi, z.shape[0]), _centres(ko, khi, z.shape[1])
        a, b = math.ceil((hi - lo) / z.shape[0]), math.ceil((khi - ko) / z.shape[1])
        pooling = f"block means of ≤{a}×{b} cells" if a * b > 1 else "every cell"
        if each < a:  # a bin's rows are too many to compute: its mean is over a run at its centre
            pooling = f"block means of the middle {each} of ≤{a} rows × ≤{b} keys"
        self.overview.data[0].update(
            x=cols, y=rows, z=z, **self._scale(z, mode, skip, sink),
            hovertemplate="queries ≈%{y:.0f}<br>keys ≈%{x:.0f}<br>mean %{z:.3g}<extra></extra>",
        )  # fmt: skip
        self.overview.layout.title = dict(
            text=f"head {self.head}, all {hi - lo} queries × {khi - ko} keys<br>"
            f"({pooling}; click to move the detail there)",
            font=dict(size=11),
        )

    def _on_overview_click(self, trace, points, state) -> None:
        """Centre the detail's query rows and key columns on the clicked cell."""
        if points.xs:
            half = PAIRWISE_WINDOW // 2
            self.select(window=int(points.ys[0]) - half, keys=int(points.xs[0]) - half)

    # -------------------------------------------------------------- static
    def _static(self, page: Page) -> None:
        page.html(f'<p class="ne-note">{self.note.value}</p>')
        page.figure(self.grid)
        if self.overview_box.layout.display != "none":
            page.figure(self.overview)
        page.figure(self.detail)

    def as_circuitsvis(self) -> StaticHTML:
        """The current layer as circuitsvis ``AttentionHeads`` (inlined, works offline): token text as
        produced, and for Mamba layers the signed M with a symmetric scale (0 = no colour)."""
        view = self.shown()
        s, n = view["start"], len(view["tokens"])
        maps = self._rows(s, s + n, s, s + n, view["mode"])  # square: circuitsvis pairs tokens
        props = dict(
            attention=maps.tolist(),
            tokens=[visible(t) for t in view["tokens"]],
            attentionHeadNames=[f"L{self.layer}H{k}" for k in range(len(maps))],
        )
        if view["mode"] == "signed":
            top = float(maps.abs().max()) or 1.0
            props.update(maxValue=top, minValue=-top, positiveColor="red", negativeColor="blue")
        return StaticHTML(circuitsvis_html("AttentionHeads", props))


def _centres(lo: int, hi: int, t: int) -> list[float]:
    """Centre positions of the ``t`` bins adaptive pooling makes of positions lo..hi-1."""
    n = hi - lo
    return [lo + ((i * n) // t + -(-(i + 1) * n // t) - 1) / 2 for i in range(t)]
