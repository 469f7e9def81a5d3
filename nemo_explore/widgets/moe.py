"""MoERouting: which experts each token went to in an MoE layer, how much load each expert got.

Reads ``hook_topk_indices`` and ``hook_topk_weights`` (b p k; the top-k is unsorted) and, when cached,
``hook_router_scores`` (b p E, sigmoid). The heatmap shows tokens × experts, either the routing weight each
token gave each expert (0 where not chosen) or the router's score for every expert, with the chosen
experts marked; a bar chart counts the tokens per expert; a chosen expert's tokens are highlighted in
the text.

Long inputs: at most ``TOKEN_WINDOW`` positions are drawn at a time (a window the user moves); the
expert load always counts the whole input.
"""

from __future__ import annotations

import ipywidgets as widgets
import torch

from ..core.token_text import escape, position_labels, visible
from ._base import STYLE, CacheView
from ._figures import figure_widget, fit_height
from ._static import Page
from ._tokens import Window, tick_room, ticks, token_chips

TOKEN_WINDOW = 256  # positions drawn at a time (2.5 px each in the 640 px map); a slider moves them
CHIPS_OPEN = 128  # a window of more tokens shows its token chips folded (a click unfolds them)
ORDERS = {"index": "experts by index", "load": "by load"}
EXPECTED = {"moe": "blocks.{i}.moe.hook_topk_indices"}
NAMES = "('hook_router_scores', 'hook_topk_indices', 'hook_topk_weights')"
VALUES = {"weight": "routing weight", "score": "router score (sigmoid)"}
MOE_RGB = "142, 95, 194"
PLOT_PX = 640  # the routing map's width in pixels (figure 760, less margins and colour bar)
MARK_PX = 6  # smallest cell that gets a top-k mark


class MoERouting(CacheView):
    """Routing of one MoE layer: tokens × experts with the top-k marked, expert load, and the tokens a
    chosen expert received.

    ``cache`` holds ``blocks.{i}.moe.hook_topk_indices`` and ``hook_topk_weights`` (and, for the score
    view, ``hook_router_scores``). ``layer``: the block shown first (default: the first MoE layer cached);
    ``expert``: the expert whose tokens are highlighted (default: the most loaded); ``values``:
    ``'weight'`` or ``'score'``; ``order``: the experts' rows by ``'index'`` or by ``'load'`` (busiest
    first: with 128 experts the few that matter are together); ``batch``: the row of the batch;
    ``window``: first position of the window on long inputs.
    """

    title = "MoE routing"
    ARRAYS = {  # per block: a dict of (p, k) and, for the score view, (p, n_experts)
        "moe": {
            "topk_indices": "moe.hook_topk_indices",
            "topk_weights": "moe.hook_topk_weights",
            "router_scores": "moe.hook_router_scores",
        }
    }

    def __init__(
        self,
        cache,
        layer: int | None = None,
        expert: int | None = None,
        *,
        values: str = "weight",
        order: str = "index",
        batch: int = 0,
        window: int | None = None,
    ) -> None:
        super().__init__(cache, batch)
        self._layers = self._find_layers(cache)
        if layer is None:
            layer = self._layers[0]
        if values not in VALUES:
            raise ValueError(f"values must be 'weight' or 'score' (router sigmoid), not {values!r}")
        if order not in ORDERS:
            raise ValueError(f"order must be 'index' or 'load' (busiest expert first), not {order!r}")

        self.layer_select = widgets.Dropdown(
            options=[(f"{i} · moe", i) for i in self._layers], value=self._layers[0], description="layer"
        )
        self.expert_select = widgets.Dropdown(description="expert", layout=widgets.Layout(width="260px"))
        self.values_select = widgets.ToggleButtons(
            options=[(v, k) for k, v in VALUES.items()], value=values, style=dict(button_width="170px")
        )
        self.order_select = widgets.ToggleButtons(
            options=[(v, k) for k, v in ORDERS.items()], value=order, style=dict(button_width="150px")
        )
        self.window_slider = self._slider()
        self.routing = figure_widget(760, 360)
        self.routing.add_heatmap(colorscale="Purples", colorbar=dict(thickness=12), hoverongaps=False)
        self.routing.add_scatter(
            mode="markers",
            marker=dict(symbol="square-open", size=9, color="#e4572e", line=dict(width=2)),
            name="top-k",
            showlegend=False,
        )
        self.routing.update_yaxes(autorange="reversed", title_text="expert", type="category")
        # the token axis's margin is set per update (tick_room), so plotly draws once
        self.routing.layout.xaxis.update(
            tickfont=dict(size=9), tickangle=-60, type="category", automargin=False
        )
        self.load = figure_widget(760, 240)
        self.load.add_bar(marker_color="#c9b6e4")
        self.load.data[0].on_click(self._on_load_click)
        self.load.update_xaxes(type="category", title_text="expert")
        self.load.update_yaxes(title_text="tokens")
        self.load._config = {"displayModeBar": False}  # a bar per expert needs no zoom tools over its title
        self.tokens = widgets.HTML()
        for control in (self.layer_select, self.expert_select, self.values_select, self.order_select):
            control.observe(self._on_control, names="value")
        self.children = [
            widgets.HTML(STYLE),
            widgets.HBox(
                [self.layer_select, self.expert_select, self.values_select, self.order_select],
                layout=widgets.Layout(flex_flow="row wrap"),
            ),
            self.window_slider,
            self.note,
            self.routing,
            self.load,
            self.tokens,
        ]
        self._load(layer, expert, window)

    @property
    def expert(self) -> int:
        return self.expert_select.value

    @property
    def values(self) -> str:
        return self.values_select.value

    def select(self, layer: int | None = None, expert: int | None = None, window: int | None = None) -> None:
        """Show another layer, expert or window position (what the controls do)."""
        if layer is not None and layer != self.layer:
            self._load(layer, expert, window)
            return
        if expert is not None:
            self._check_expert(expert)
        self._set([(self.expert_select, expert)], window)

    def rebind(self, cache, layer: int | None = None) -> None:
        """Show another cache (a new prompt) in this widget: its figures are updated in place, and only
        the new data goes to the browser. ``layer``: the block to show (default: the one shown now, if
        the new cache has it)."""
        self._check_cache(cache)
        layers = self._find_layers(cache)
        self.cache, self._layers, self._window = cache, layers, None
        if layer is None:
            layer = self.layer if self.layer in layers else layers[0]
        self._check_layer(layer, EXPECTED, NAMES)
        self._set_layers([(f"{i} · moe", i) for i in layers], layer)
        self._load(layer, None, None)

    def _release(self) -> None:
        super()._release()
        self._idx = self._weights = self._scores = None  # the shown block's rows (views of the cache)

    @staticmethod
    def _find_layers(cache) -> list[int]:
        layers = [i for i in cache.layers("moe") if EXPECTED["moe"].format(i=i) in cache]
        if not layers:
            raise ValueError(
                "MoERouting found no MoE routing in this cache: cache it first, e.g. "
                f"model.run_with_cache(text, names_filter=lambda n: n.endswith({NAMES}))"
            )
        return layers

    def _check_expert(self, expert: int) -> None:
        if not 0 <= expert < self._n_experts:
            raise IndexError(
                f"expert {expert} out of range: block {self.layer} has {self._n_experts} experts "
                f"(0..{self._n_experts - 1})"
            )

    def _load(self, layer: int, expert: int | None, window: int | None) -> None:
        self._check_layer(layer, EXPECTED, NAMES)
        base = f"blocks.{layer}.moe."
        idx = self._row(self._need(base + "hook_topk_indices", NAMES), base + "hook_topk_indices").long()
        weights = self._row(self._need(base + "hook_topk_weights", NAMES), base + "hook_topk_weights")
        scores = None
        if base + "hook_router_scores" in self.cache:
            scores = self._row(self.cache[base + "hook_router_scores"], base + "hook_router_scores")
        tokens, offset = self._tokens(idx.shape[0])
        real = slice(offset, offset + len(tokens))
        self._idx, self._weights = idx[real], weights[real]  # n k
        self._scores = None if scores is None else scores[real]  # n E
        config = getattr(self.cache, "config", None)
        self._n_experts = (
            scores.shape[-1]
            if scores is not None
            else getattr(config, "n_routed_experts", None) or int(idx.max()) + 1
        )
        self._all_tokens, self._offset = tokens, offset
        counts = self.expert_load()
        if expert is None:
            expert = int(counts.argmax())
        self._check_expert(expert)
        keep = getattr(self, "_window", None)
        if window is None and keep is not None:
            window = keep.start
        self._window = Window(TOKEN_WINDOW, offset, offset + len(tokens), start=window)
        self._hold, held = True, self._hold
        self.layer_select.value = layer
        self.expert_select.options = [
            (f"expert {e} ({int(c)} token{'s' * (c != 1)})", e) for e, c in enumerate(counts.tolist())
        ]
        self.expert_select.value = expert
        self.values_select.layout.display = None if scores is not None else "none"
        if scores is None:
            self.values_select.value = "weight"
        self._sync_slider(self.window_slider, self._window)
        self._hold = held
        self._redraw()

    def _on_layer(self, layer: int) -> None:
        self._load(layer, None, None)  # the head/expert controls depend on the layer

    def _on_load_click(self, trace, points, state) -> None:
        if points.xs:
            self.expert_select.value = int(str(points.xs[0]).removeprefix("e"))

    # -------------------------------------------------------------- data
    def expert_load(self) -> torch.Tensor:
        """Tokens routed to each expert in the layer (E,), over the row's whole input."""
        return torch.bincount(self._idx.flatten(), minlength=self._n_experts)

    def dense_weights(self) -> torch.Tensor:
        """Routing weights as a dense (n, E) matrix: token j's weight for expert e, 0 where not chosen."""
        dense = torch.zeros(len(self._idx), self._n_experts)
        return dense.scatter_(1, self._idx, self._weights)

    def shown(self) -> dict:
        """What the view draws now, for the window's positions: ``values`` (E, n) — routing weights or router
        scores — ``marks`` [(position, expert, rank, weight)] for the top-k, ``load`` (E,), ``tokens`` (n),
        ``start``, and ``expert_weights`` (n,) the chosen expert's weight per token."""
        s, e = self._window.start - self._offset, self._window.stop - self._offset
        dense = self.dense_weights()
        values = dense if self.values == "weight" else self._scores
        chosen, weights = self._idx[s:e].tolist(), self._weights[s:e].tolist()  # lists: fast to walk
        marks = [
            (self._window.start + j, ex, r, w)
            for j, (row, ws) in enumerate(zip(chosen, weights, strict=True))
            for r, (ex, w) in enumerate(zip(row, ws, strict=True))
        ]
        return dict(
            values=values[s:e].T,
            marks=marks,
            load=self.expert_load(),
            tokens=self._all_tokens[s:e],
            start=self._window.start,
            expert_weights=dense[s:e, self.expert],
        )

    def _figures(self) -> tuple:
        return (self.routing, self.load)

    def _draw(self) -> None:
        view = self.shown()
        start, n_exp, layer, expert = view["start"], self._n_experts, self.layer, self.expert
        cats = position_labels(view["tokens"], start)
        experts = [f"e{k}" for k in range(n_exp)]
        rows = list(range(n_exp))
        if self.order_select.value == "load":  # busiest first (ties by index)
            rows = sorted(rows, key=lambda k: (-int(view["load"][k]), k))
        shown = [experts[k] for k in rows]
        what = VALUES[self.values]
        # weights: from 0 to the largest; scores: the sigmoid's whole range
        top = (float(view["values"].max()) or 1.0) if self.values == "weight" else 1.0
        with self.routing.batch_update():
            self.routing.data[0].update(
                x=cats,
                y=shown,
                z=view["values"][rows].numpy(),
                zmin=0,
                zmax=top,
                colorbar=dict(title=dict(text="weight" if self.values == "weight" else "score")),
                hovertemplate=f"token %{{x}}<br>expert %{{y}}<br>{what} = %{{z:.4g}}<extra></extra>",
            )
            plot = min(590, max(120, 12 * n_exp))
            room = tick_room(view["tokens"], start)
            # A top-k mark needs a cell of a few pixels; below that the marks would cover the map (and
            # cost bytes): they are left out, and the weights (0 = not chosen) show the choices.
            k = self._idx.shape[1]
            cell = min(PLOT_PX / max(1, len(cats)), plot / max(1, n_exp))
            marks = view["marks"] if cell >= MARK_PX else []
            self.routing.data[1].update(
                x=[cats[pos - start] for pos, _, _, _ in marks],
                y=[experts[e] for _, e, _, _ in marks],
                customdata=[[r + 1, w] for _, _, r, w in marks],
                hovertemplate="token %{x} → expert %{y}<br>choice %{customdata[0]} of "
                f"{k}, weight %{{customdata[1]:.4g}}<extra>top-k</extra>",
            )
            self.routing.update_xaxes(**ticks(view["tokens"], start, pixels=PLOT_PX))
            self.routing.update_yaxes(categoryorder="array", categoryarray=shown)
            fit_height(self.routing, plot, room)
            key = (
                f"□ = top-{k} choice"
                if marks or not view["marks"]
                else f"top-{k} marks left out: cells under {MARK_PX} px"
            )
            self.routing.layout.title = dict(text=f"block {layer} · moe: {what} per token and expert; {key}")
        load = view["load"].tolist()
        fair = sum(load) / max(1, n_exp)
        with self.load.batch_update():
            self.load.data[0].update(
                x=experts,
                y=load,
                marker_color=["#8e5fc2" if k == expert else "#c9b6e4" for k in range(n_exp)],
                hovertemplate="expert %{x}: %{y} tokens<extra></extra>",
            )
            self.load.layout.shapes = [
                dict(
                    type="line",
                    xref="paper",
                    x0=0,
                    x1=1,
                    y0=fair,
                    y1=fair,
                    line=dict(dash="dot", color="#555"),
                )
            ]
            self.load.layout.title = dict(
                text=f"block {layer} · expert load over all {len(self._idx)} tokens "
                f"(dotted: even split, {fair:.1f}); click a bar"
            )
        rank = {pos: (r, w) for pos, e, r, w in view["marks"] if e == expert}
        titles = [
            f"position {start + j}: {visible(t)} — "
            + (
                f"expert {expert}, choice {rank[start + j][0] + 1}, weight {rank[start + j][1]:.4g}"
                if start + j in rank
                else f"not routed to expert {expert}"
            )
            for j, t in enumerate(view["tokens"])
        ]
        top = float(view["expert_weights"].max()) or 1.0
        weights = (view["expert_weights"] / top).tolist()
        head = (
            f"<b>Tokens routed to expert {expert}</b> in block {layer} ({len(rank)} of the {len(titles)} "
            "tokens shown; shade ∝ weight, hover for details)"
        )
        chips = token_chips(view["tokens"], start, weights=weights, titles=titles, color=MOE_RGB)
        if len(titles) <= CHIPS_OPEN:
            self.tokens.value = f'<div class="ne-note">{head}:</div>{chips}'
        else:  # a wall of text: folded, its line says what it holds
            self.tokens.value = (
                f'<details><summary class="ne-note">{head}: click to show the text</summary>{chips}</details>'
            )
        note = (
            "<b>Routing</b>: each token goes to its top-k experts by router score; the routing weight is the "
            f"score normalised over the chosen experts and scaled. Shown: {escape(what)}."
        )
        self._show_note(note, "token maps")

    def _static(self, page: Page) -> None:
        page.html(f'<p class="ne-note">{self.note.value}</p>')
        page.figure(self.routing)
        page.figure(self.load)
        page.html(self.tokens.value)
