"""SSMStateNorms: how large each Mamba head's recurrent state is after each token.

``hook_state_norm`` (b p h) is the Frobenius norm of each head's state after token p. The view shows
tokens × heads for one Mamba layer and tokens × Mamba layers (mean over heads) for all of them, raw or
normalised per head (÷ the head's max over the row's tokens) or per token (÷ the token's max over heads).

Long inputs: at most ``TOKEN_WINDOW`` positions are drawn at a time (a window the user moves).

A cache may hold the norms, or what they are made of (``hook_x``, ``hook_dt``, ``hook_B``; see
``nemo_explore.state_norms``): then the view computes the shown block's norms at once and the others in the
kernel's idle time (``norms_pending`` counts down; the overview is drawn whole when it reaches 0), or all at
once outside a notebook. The norms it computes are added to the cache.
"""

from __future__ import annotations

from collections.abc import Mapping

import ipywidgets as widgets
import torch
import traitlets

from ..core.token_text import escape, position_labels
from ..state_norms import FROM_POINTS, POINT, StateNormJob, computable
from ._base import STYLE, CacheView
from ._figures import figure_widget, fit_height
from ._idle import IdleTask
from ._static import Page
from ._tokens import Window, tick_room, ticks

TOKEN_WINDOW = 1024  # ≤ 0.5 MB of float32 per map at 128 heads or experts; a slider moves it
EXPECTED = {"mamba": None}  # the view checks its blocks itself: norms cached, or computable
NAMES = "'hook_state_norm'"
NORMS = {"raw": "raw ‖state‖", "head": "÷ head's max", "token": "÷ token's max"}
TIPS = [
    "the Frobenius norm itself",
    "each head divided by its max over tokens",
    "each token divided by its max over heads",
]


class SSMStateNorms(CacheView):
    """State norm per token per head for a Mamba layer, and per token per Mamba layer for all of them.

    ``cache`` holds ``blocks.{i}.mamba.hook_state_norm`` (b p h) for one or more Mamba layers. ``layer``:
    the block shown first (default: the first one cached); ``norm``: ``'raw'``, ``'head'`` or ``'token'``;
    ``horizons``: optional memory horizons per head, ``{layer: tensor (h,)}`` in tokens (e.g.
    ``nemo_explore.analysis.mean_memory_horizon``), drawn beside the heads; ``batch``: the row of the
    batch; ``window``: first position of the window on long inputs.
    """

    title = "Mamba state norms"
    ARRAYS = {"mamba": "mamba.hook_state_norm"}  # (p, h) per block
    norms_pending = traitlets.Int(0, help="Mamba blocks whose norms are still being computed")

    def __init__(
        self,
        cache,
        layer: int | None = None,
        *,
        norm: str = "raw",
        horizons: Mapping[int, torch.Tensor] | None = None,
        batch: int = 0,
        window: int | None = None,
    ) -> None:
        super().__init__(cache, batch)
        self._task: IdleTask | None = None
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, not {norm!r}")
        layer = self._read(cache, layer, horizons, window)

        self.layer_select = widgets.Dropdown(
            options=[(f"{i} · mamba", i) for i in self._sources], value=layer, description="layer"
        )
        self.norm_select = widgets.ToggleButtons(
            options=[(v, k) for k, v in NORMS.items()],
            value=norm,
            tooltips=TIPS,
            style=dict(button_width="120px"),
        )
        self.window_slider = self._slider()
        # The two figures share one token axis: same width, margins and x domain, colour bars at the same
        # place, so that a token's column lines up in both.
        right = 0.8 if self._horizons else 0.88
        bar = dict(thickness=12, x=right + 0.01, xanchor="left")
        self.heads = figure_widget(760, 320, margin=dict(l=90, r=10, t=36, b=10))
        self.heads.add_heatmap(colorscale="Viridis", colorbar=bar, xaxis="x", yaxis="y")
        if self._horizons:
            self.heads.add_bar(orientation="h", xaxis="x2", yaxis="y", marker_color="#17a398")
            self.heads.update_layout(
                xaxis2=dict(domain=[0.9, 1.0], title=dict(text="horizon (tokens)", font=dict(size=10))),
            )
        self.heads.update_yaxes(autorange="reversed", title_text="head")
        self.overview = figure_widget(760, 240, margin=dict(l=90, r=10, t=36, b=10))
        self.overview.add_heatmap(colorscale="Viridis", colorbar=bar)
        self.overview.data[0].on_click(self._on_overview_click)
        self.overview.update_yaxes(autorange="reversed", title_text="Mamba layer", type="category")
        for fig in (self.heads, self.overview):  # margins set per update (tick_room): plotly draws once
            fig.layout.xaxis.update(tickfont=dict(size=9), tickangle=-60, domain=[0, right], automargin=False)
            fig.layout.yaxis.automargin = False
        if self._horizons:
            self.heads.layout.xaxis2.automargin = False
        for control in (self.layer_select, self.norm_select):
            control.observe(self._on_control, names="value")
        self.children = [
            widgets.HTML(STYLE),
            widgets.HBox([self.layer_select, self.norm_select]),
            self.window_slider,
            self.note,
            self.heads,
            self.overview,
        ]
        self._sync_slider(self.window_slider, self._window)
        self._continue()
        self._redraw()

    def _read(self, cache, layer: int | None, horizons, window: int | None) -> int:
        """Take the state norms (or what they are computed from) and horizons of ``cache``; check the layer
        to show and return it. Its norms are computed when it is drawn (or in idle time, with the rest)."""
        sources = [i for i in cache.layers("mamba") if f"blocks.{i}.{POINT}" in cache or computable(cache, i)]
        if not sources:
            raise ValueError(
                "SSMStateNorms found no Mamba state norms in this cache: cache them first, e.g. "
                f"model.run_with_cache(text, names_filter=lambda n: n.endswith({NAMES})), or what they are "
                f"computed from, n.endswith({FROM_POINTS})"
            )
        if self._task is not None:
            self._task.cancel()
        self.cache, self._sources = cache, sources
        self._job = StateNormJob(cache, sources)  # the blocks whose norms the cache lacks
        self._rows: dict[int, torch.Tensor] = {}  # block -> its norms (p h), as read
        if layer is None:
            shown = getattr(self, "layer_select", None)
            layer = shown.value if shown is not None and shown.value in sources else sources[0]
        self._check_layer(layer, EXPECTED, NAMES)
        self._check_source(layer)
        norms = f"blocks.{layer}.{POINT}"  # (b, p, h), as are the step sizes they are computed from
        p, h = cache[norms if norms in cache else f"blocks.{layer}.mamba.hook_dt"].shape[1:]
        self._all_tokens, self._offset = self._tokens(p)
        self._horizons = self._check_horizons(horizons, h)
        self._window = Window(TOKEN_WINDOW, self._offset, self._offset + len(self._all_tokens), start=window)
        return layer

    def _check_source(self, layer: int) -> None:
        if layer not in self._sources:
            raise ValueError(
                f"block {layer}'s state norms are not in this cache, nor {', '.join(FROM_POINTS)}: cache "
                f"them first, e.g. model.run_with_cache(text, names_filter=lambda n: n.endswith({NAMES}))"
            )

    def norms_of(self, layer: int) -> torch.Tensor:
        """Block ``layer``'s state norms for the view's batch row (p h), computed now if still pending."""
        if layer not in self._rows:
            self._job.compute(layer)
            name = f"blocks.{layer}.{POINT}"
            self._rows[layer] = self._row(self.cache[name], name)
            self.norms_pending = len(self._job.pending)
        return self._rows[layer]

    def _continue(self) -> None:
        """Before a draw: the pending blocks' norms, in the kernel's idle time from the next moment on (the
        overview is drawn again, whole, at the end); where there is no idle time (no notebook), now."""
        if not self._job.done:
            self._task = IdleTask(
                self._job.steps(),
                on_step=self._on_progress,
                on_done=self._on_norms_done,
                on_error=self._on_error,
            )
            if not self._task.start():
                self._task = None
                self._job.finish()
        self.norms_pending = len(self._job.pending)

    @property
    def norms_seconds(self) -> float:
        """The time spent computing the state norms this cache lacked."""
        return self._job.seconds

    def finish_norms(self) -> None:
        """Compute every pending block's norms now (and draw the overview whole)."""
        if not self._job.done:
            if self._task is not None:
                self._task.cancel()
            self._job.finish()
            self._on_norms_done()

    def _on_progress(self) -> None:
        self.norms_pending = len(self._job.pending)

    def _on_norms_done(self) -> None:
        self.norms_pending = 0
        self._redraw()

    def _on_error(self, err: BaseException) -> None:
        message = escape(f"{type(err).__name__}: {err}")
        self.note.value = f'<div class="ne-warn">computing the state norms: {message}</div>'

    def rebind(
        self, cache, layer: int | None = None, horizons: Mapping[int, torch.Tensor] | None = None
    ) -> None:
        """Show another cache (a new prompt) in this widget: its figures are updated in place, and only
        the new data goes to the browser. ``layer``: the block to show (default: the one shown now, if
        the new cache has it); ``horizons``: as for the constructor, given now if and only if given then
        (the figure has a bar chart for them or not)."""
        if bool(horizons) != bool(self._horizons):
            raise ValueError("rebind takes horizons exactly when the view was built with them")
        self._check_cache(cache)
        layer = self._read(cache, layer, horizons, None)
        self._set_layers([(f"{i} · mamba", i) for i in self._sources], layer)
        self._sync_slider(self.window_slider, self._window)
        self._continue()
        self._redraw()

    def _release(self) -> None:
        super()._release()
        if self._task is not None:
            self._task.cancel()
        self._task, self._job, self._rows = None, None, {}
        self.norms_pending = 0

    @property
    def norm(self) -> str:
        return self.norm_select.value

    def select(self, layer: int | None = None, norm: str | None = None, window: int | None = None) -> None:
        """Show another layer, normalisation or window position (what the controls do)."""
        if layer is not None:
            self._check_layer(layer, EXPECTED, NAMES)
            self._check_source(layer)
        if norm is not None and norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, not {norm!r}")
        self._set([(self.layer_select, layer), (self.norm_select, norm)], window)

    def _check_horizons(self, horizons, h: int) -> dict[int, torch.Tensor]:
        if horizons is None:
            return {}
        if not isinstance(horizons, Mapping):
            raise TypeError(
                "horizons must be a dict {mamba layer: tensor (heads,)} of memory horizons in tokens"
            )
        out = {}
        for i, value in horizons.items():
            if i not in self._sources:
                raise ValueError(f"horizons given for block {i}, which is not a cached Mamba layer here")
            value = torch.as_tensor(value).detach().float().cpu().reshape(-1)
            if value.shape != (h,):
                raise ValueError(
                    f"horizons[{i}] must have one value per head ({h}), got {tuple(value.shape)}"
                )
            out[i] = value
        return out

    def _on_overview_click(self, trace, points, state) -> None:
        if points.ys:
            self.layer_select.value = int(str(points.ys[0]).split()[0])

    # -------------------------------------------------------------- data
    def normalised(self, layer: int) -> torch.Tensor:
        """Block ``layer``'s norms over the row's real tokens (n h), normalised as chosen."""
        x = self.norms_of(layer)[self._offset : self._offset + len(self._all_tokens)]
        tiny = torch.finfo(x.dtype).tiny
        if self.norm == "head":
            return x / x.amax(0, keepdim=True).clamp_min(tiny)
        if self.norm == "token":
            return x / x.amax(1, keepdim=True).clamp_min(tiny)
        return x

    def shown(self) -> dict:
        """What the view draws now: ``heads`` (h, n) for the selected layer, ``overview`` (L, n) (mean over
        heads per Mamba layer; NaN for a block whose norms are still pending), ``raw`` (h, n), ``tokens``
        (n) and ``start``, for the window's positions."""
        s, e = self._window.start - self._offset, self._window.stop - self._offset
        layer = self.layer
        pending = set(self._job.pending)
        rows = [
            torch.full((e - s,), torch.nan) if i in pending else self.normalised(i)[s:e].mean(1)
            for i in self._sources
        ]
        return dict(
            heads=self.normalised(layer)[s:e].T,
            raw=self.norms_of(layer)[self._offset :][s:e].T,
            overview=torch.stack(rows),
            tokens=self._all_tokens[s:e],
            start=self._window.start,
        )

    def _figures(self) -> tuple:
        return (self.heads, self.overview)

    def _draw(self) -> None:
        view = self.shown()
        cats = position_labels(view["tokens"], view["start"])
        axis = ticks(view["tokens"], view["start"], pixels=560 if self._horizons else 610)
        room = tick_room(view["tokens"], view["start"])
        layer, what = self.layer, NORMS[self.norm]
        h = view["heads"].shape[0]
        heads = [f"h{k}" for k in range(h)]
        with self.heads.batch_update():
            self.heads.data[0].update(
                x=cats,
                y=heads,
                z=view["heads"].numpy(),
                # raw norms for hover: z itself when it is raw (not sent twice)
                customdata=None if self.norm == "raw" else view["raw"].numpy(),
                colorbar=dict(title=dict(text="‖state‖" if self.norm == "raw" else "norm.")),
                hovertemplate="token %{x}<br>head %{y}<br>‖state‖ = "
                + ("%{z:.4g}" if self.norm == "raw" else f"%{{customdata:.4g}}<br>{what}: %{{z:.3f}}")
                + "<extra></extra>",
            )
            if self._horizons:
                hz = self._horizons.get(layer)
                self.heads.data[1].update(
                    x=None if hz is None else hz.numpy(),
                    y=heads if hz is not None else [],
                    hovertemplate="head %{y}: half-life %{x:.3g} tokens<extra></extra>",
                )
            self.heads.layout.xaxis.update(**axis)
            # the horizon axis's numbers and title need 48 px below the plot
            bottom = max(room, 48) if self._horizons else room
            fit_height(self.heads, min(560, max(140, 14 * h)), bottom)
            self.heads.layout.title = dict(
                text=f"block {layer} · mamba: state norm per token and head ({what})"
            )
        names = [f"{i} mamba" for i in self._sources]
        with self.overview.batch_update():
            self.overview.data[0].update(
                x=cats,
                y=names,
                z=view["overview"].numpy(),
                hovertemplate="token %{x}<br>block %{y}<br>mean over heads = %{z:.4g}<extra></extra>",
            )
            self.overview.update_xaxes(**axis)
            row = self._sources.index(layer)
            self.overview.layout.shapes = [
                dict(
                    type="rect",
                    xref="paper",
                    x0=0,
                    x1=self.overview.layout.xaxis.domain[1],  # the map, not its colour bar
                    y0=row - 0.5,
                    y1=row + 0.5,
                    line=dict(color="#e4572e", width=2),
                )
            ]
            fit_height(self.overview, min(350, max(70, 22 * len(names))), room)
            waiting = len(self._job.pending)
            so_far = f" — {len(names) - waiting} of {len(names)} so far, the rest follow" if waiting else ""
            self.overview.layout.title = dict(
                text=f"all Mamba layers: mean over heads ({what}); click a row{so_far}"
            )
        note = (
            "<b>State norm</b> ‖h<sub>t</sub>‖ of each head's recurrent state after token t (Frobenius norm, "
            "head_dim × d_state): how much the head is carrying forward."
        )
        if self._horizons:
            note += " Bars: each head's memory horizon, the tokens a contribution takes to halve."
        self._show_note(note, "token maps")

    def _static(self, page: Page) -> None:
        self.finish_norms()  # a page shows every block
        page.html(f'<p class="ne-note">{self.note.value}</p>')
        page.figure(self.heads)
        page.figure(self.overview)
