"""CorpusView: corpus statistics per block × expert / head, and the top contexts of the unit clicked.

Reads a :class:`nemo_explore.corpus.CorpusResult` (``collect(...)`` or ``load(DIR)``). The heatmap shows one
per-unit score (``result.matrix(kind, column)``) for every block of a kind; clicking a cell lists that
expert's / head's top contexts (``result.contexts``), each a window of token chips shaded by the unit's
value on each token, the token the context is about outlined.
"""

from __future__ import annotations

import math

import ipywidgets as widgets
import numpy as np

from ..core.layer_types import LAYER_COLORS, canonical
from ..core.token_text import escape, visible
from ._base import STYLE
from ._figures import SEQUENTIAL, SHARE, figure_widget
from ._static import Page
from ._tokens import token_chips

KINDS = {"moe": "MoE experts", "mamba": "Mamba heads", "attention": "Attention heads"}
UNITS = {"moe": "expert", "mamba": "head", "attention": "head"}
SCALES = {"moe": SHARE, "mamba": "Teal", "attention": "Oranges"}
DEFAULT_COLUMNS = {
    "moe": ("share",),
    "mamba": ("mean_rate_horizon", "norm_mean"),
    "attention": ("induction",),
}
LOG_COLUMNS = {"mean_rate", "mean_rate_horizon"}  # span decades: a log colour scale by default

# column -> (short label for the menu, one sentence for the note); after the manifest's definitions
COLUMNS = {
    "load": ("tokens routed", "the tokens routed to the expert (it was one of their top-k)."),
    "share": ("load share", "the fraction of all tokens routed to the expert (load ÷ tokens)."),
    "mean_weight": ("mean weight", "the mean routing weight over the tokens routed to the expert."),
    "weight_sum": ("total weight", "the routing weight the expert received, summed over the corpus."),
    "count": ("tokens seen", "the tokens the head processed."),
    "norm_mean": (
        "mean ‖state‖",
        "the mean norm of the head's recurrent state ‖h<sub>t</sub>‖ over all tokens.",
    ),
    "norm_std": ("std ‖state‖", "the standard deviation of the head's state norm over all tokens."),
    "norm_max": ("max ‖state‖", "the largest state norm the head reached."),
    "mean_rate": ("decay rate", "the mean decay rate dt·exp(A_log) per token: how fast the head forgets."),
    "mean_rate_horizon": (
        "memory horizon",
        "ln2 ÷ mean rate: the tokens it takes a contribution to the head's state to halve.",
    ),
    "queries": ("queries", "the queries counted (every position but a row's first)."),
    "entropy": ("entropy", "the mean entropy of a query's attention pattern, in nats (low: focused)."),
    "sink": ("sink", "the mean attention on the row's first token (an attention sink)."),
    "prev_token": ("previous token", "the mean attention on the previous token (key q−1)."),
    "induction": (
        "induction",
        "the attention a query puts on keys k whose previous token equals the query's token "
        "(token[k−1] = token[q]: on what followed it last time), averaged over the queries that have one.",
    ),
    "induction_queries": (
        "induction queries",
        "the queries with at least one key k where token[k−1] = token[q].",
    ),
    "distance": ("distance", "the mean distance attended back, Σ<sub>k</sub> P[q,k]·(q−k), in tokens."),
}
SCORES = {
    "moe": (
        "the expert's routing weight on the token",
        "the expert's routing weight on each token (0: not routed)",
    ),
    "mamba": (
        "the jump of the head's state norm at the token, norm[p] − norm[p−1]",
        "the head's state norm after each token",
    ),
    "attention": (
        "the query's distance attended back, Σ<sub>k</sub> P[q,k]·(q−k)",
        "the query's attention on each key",
    ),
}
CENTRE = "ne-centre"
CORPUS_CSS = (
    f"<style>.ne-ctx {{ display: flex; gap: 8px; align-items: baseline; border-top: 1px solid #eee; }}"
    f".ne-ctx-meta {{ flex: 0 0 15em; font: 11px ui-monospace, monospace; color: #555; }}"
    f".ne-ctx .ne-toks {{ flex: 1 1 auto; }}"
    f".ne-tok.{CENTRE} {{ border: 2px solid #111; font-weight: bold; }}</style>"
)


def _rgb(hex_colour: str) -> str:
    """``'#8e5fc2'`` -> ``'142, 95, 194'`` (what ``token_chips`` takes)."""
    return ", ".join(str(int(hex_colour[i : i + 2], 16)) for i in (1, 3, 5))


def _log_ticks(lo: float, hi: float) -> dict:
    """Colour bar ticks for log10 values in [lo, hi], labelled with the values: 1-2-5 steps over at most
    three decades, powers of ten beyond, the ends when no step falls inside."""
    steps = (1, 2, 5) if hi - lo <= 3 else (1,)
    values = [m * 10.0**k for k in range(math.floor(lo), math.ceil(hi) + 1) for m in steps]
    inside = [math.log10(v) for v in values if lo - 1e-9 <= math.log10(v) <= hi + 1e-9]
    if len(inside) < 2:
        inside = sorted({lo, hi, *inside})
    return dict(tickvals=inside, ticktext=[f"{10**t:.4g}" for t in inside])


class CorpusView(widgets.VBox):
    """Corpus statistics of a kind of unit (MoE experts, Mamba heads, attention heads): one score per
    block × unit as a heatmap, and the clicked unit's top contexts as token chips.

    ``result``: a CorpusResult (``nemo_explore.corpus.collect`` or ``load``); ``kind``: ``'moe'``,
    ``'mamba'`` or ``'attention'`` (default: the first present); ``column``: the score shown (default:
    load share, memory horizon, induction); ``block``, ``unit``: the unit whose contexts are listed
    (default: the one with the largest score).
    """

    title = "Corpus statistics"

    def __init__(
        self,
        result,
        kind: str | None = None,
        column: str | None = None,
        block: int | None = None,
        unit: int | None = None,
    ) -> None:
        super().__init__(layout=widgets.Layout(width="100%"))
        self.add_class("ne-view")
        self._check_result(result)
        self.result = result
        self._kinds = [k for k in result.kinds() if k in KINDS]
        if not self._kinds:
            raise ValueError("this CorpusResult holds no MoE, Mamba or attention statistics")
        self._hold = False
        self._kind, self._column, self._block, self._unit = self._kinds[0], "", 0, 0
        self.kind_select = widgets.Dropdown(
            options=[(KINDS[k], k) for k in self._kinds],
            description="units",
            layout=widgets.Layout(width="260px"),
        )
        self.column_select = widgets.Dropdown(description="score", layout=widgets.Layout(width="400px"))
        self.log_box = widgets.Checkbox(
            description="log colour scale", indent=False, layout=widgets.Layout(width="160px")
        )
        self.note = widgets.HTML()
        self.overview = figure_widget(760, 260)
        self.overview.add_heatmap(colorbar=dict(thickness=12), hoverongaps=False, xgap=1, ygap=1)
        self.overview.data[0].on_click(self._on_click)
        self.overview.update_xaxes(type="category", side="top")
        self.overview.update_yaxes(type="category", autorange="reversed")
        self.overview.layout.margin = dict(l=10, r=10, t=80, b=10)
        self.overview._config = {"displayModeBar": False}  # a click selects: no zoom tools over the title
        self.contexts = widgets.HTML()
        for control in (self.kind_select, self.column_select, self.log_box):
            control.observe(self._on_control, names="value")
        self.children = [
            widgets.HTML(STYLE + CORPUS_CSS),
            widgets.HBox([self.kind_select, self.column_select, self.log_box]),
            self.note,
            self.overview,
            self.contexts,
        ]
        self.select(kind=kind or self._kinds[0], column=column, block=block, unit=unit)

    # -------------------------------------------------------------- state
    @property
    def kind(self) -> str:
        return self._kind

    @property
    def column(self) -> str:
        return self._column

    @property
    def block(self) -> int:
        return self._block

    @property
    def unit(self) -> int:
        return self._unit

    @staticmethod
    def _check_result(result) -> None:
        try:
            from ..corpus.result import CorpusResult
        except ImportError:  # no pyarrow: there can be no CorpusResult either
            CorpusResult = ()  # noqa: N806
        if not isinstance(result, CorpusResult):
            raise TypeError(
                f"CorpusView takes a CorpusResult (from nemo_explore.corpus.collect(model, texts) or "
                f"nemo_explore.corpus.load(path)), not {type(result).__name__}"
            )

    def columns(self, kind: str) -> list[str]:
        """The numeric per-unit scores of ``kind`` the heatmap can show."""
        import pyarrow as pa

        from ..corpus.tables import UNIT_TABLES

        schema = self.result.table(UNIT_TABLES[kind]).schema
        numeric = (pa.types.is_integer, pa.types.is_floating)
        return [c for c in self.result.columns(kind) if any(f(schema.field(c).type) for f in numeric)]

    def _canonical(self, kind: str) -> str:
        try:
            k = canonical(kind)
        except ValueError:
            k = kind
        if k not in self._kinds:
            raise ValueError(f"no {kind!r} statistics in this result; it has: {', '.join(self._kinds)}")
        return k

    def _default_column(self, kind: str) -> str:
        cols = self.columns(kind)
        return next((c for c in DEFAULT_COLUMNS[kind] if c in cols), cols[0])

    def matrix(self) -> tuple[list[int], list[int], np.ndarray]:
        """``(blocks, units, values)`` of the score shown (``result.matrix(kind, column)``)."""
        return self.result.matrix(self._kind, self._column)

    # -------------------------------------------------------------- selection
    def select(
        self,
        kind: str | None = None,
        column: str | None = None,
        block: int | None = None,
        unit: int | None = None,
    ) -> None:
        """Show another kind, score column or unit (what the controls and a click on the heatmap do). A new
        kind starts at its default score and its top-scoring block and unit, where not given."""
        new_kind = self._canonical(kind) if kind is not None else self._kind
        changed = new_kind != self._kind or not self._column
        cols = self.columns(new_kind)
        if column is None:
            column = self._default_column(new_kind) if changed else self._column
        elif column not in cols:
            raise ValueError(f"{new_kind} has no score {column!r}; choose one of {', '.join(cols)}")
        blocks, units, values = self.result.matrix(new_kind, column)
        if changed:  # what is not given: the top-scoring unit's
            b, u = np.unravel_index(int(np.argmax(np.nan_to_num(values, nan=-np.inf))), values.shape)
            block, unit = blocks[b] if block is None else block, units[u] if unit is None else unit
        block = self._block if block is None else block
        unit = self._unit if unit is None else unit
        if block not in blocks:
            raise IndexError(f"block {block} has no {new_kind} statistics; blocks: {blocks}")
        if unit not in units:
            raise IndexError(
                f"{UNITS[new_kind]} {unit} out of range: {new_kind} blocks have {len(units)} "
                f"{UNITS[new_kind]}s ({units[0]}..{units[-1]})"
            )
        log = column in LOG_COLUMNS if column != self._column or changed else self.log_box.value
        self._kind, self._column, self._block, self._unit = new_kind, column, int(block), int(unit)
        self._hold = True
        try:
            self.kind_select.value = new_kind
            self.column_select.options = [(self._option(c), c) for c in cols]
            self.column_select.value = column
            self.log_box.value = log
        finally:
            self._hold = False
        self._redraw()

    @staticmethod
    def _option(column: str) -> str:
        """The column menu's entry: ``'share — load share'``; the name alone when the label is the name."""
        label = COLUMNS.get(column, (column,))[0]
        return column if label == column else f"{column} — {label}"

    def _on_control(self, change) -> None:
        if self._hold:
            return
        owner = change["owner"]
        if owner is self.kind_select:
            self.select(kind=change["new"])
        elif owner is self.column_select:
            self.select(column=change["new"])
        else:
            self._redraw()

    def _on_click(self, trace, points, state) -> None:
        if points.xs:
            self.select(block=int(str(points.ys[0]).split()[1]), unit=int(str(points.xs[0])[1:]))

    # -------------------------------------------------------------- drawing
    def _redraw(self) -> None:
        self._draw_overview()
        self._draw_contexts()
        label, sentence = COLUMNS.get(self._column, (self._column, "a per-unit score (see the definitions)."))
        named = f"<b>{escape(self._column)}</b>" + (f" ({label})" if label != self._column else "")
        definition = self.result.manifest.get("definitions", {}).get(self._kind, "")
        more = f" <details><summary>definitions</summary>{escape(definition)}</details>" if definition else ""
        self.note.value = f'<div class="ne-note">{named}: {sentence}{more}</div>'

    def _draw_overview(self) -> None:
        kind, column = self._kind, self._column
        blocks, units, values = self.matrix()
        prefix = UNITS[kind][0]
        xs, ys = [f"{prefix}{u}" for u in units], [f"block {b} · {kind}" for b in blocks]
        log = self.log_box.value
        bar = dict(title=dict(text=escape(column)), thickness=12, tickvals=None, ticktext=None)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(values > 0, np.log10(values), np.nan) if log else values
        finite = z[np.isfinite(z)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (None, None)
        if log and finite.size:
            bar.update(_log_ticks(lo, hi))
        elif lo is not None and lo >= 0:
            lo = 0.0  # a sequential scale from zero: a cell's shade is proportional to its value
        with self.overview.batch_update():
            self.overview.data[0].update(
                x=xs,
                y=ys,
                z=z,
                customdata=values,
                zmin=lo,
                zmax=hi,
                colorscale=SCALES.get(kind, SEQUENTIAL),
                colorbar=bar,
                hovertemplate=f"%{{y}} · %{{x}}<br>{escape(column)} = %{{customdata:.6g}}<extra></extra>",
            )
            b, u = blocks.index(self._block), units.index(self._unit)
            cell = dict(type="rect", x0=u - 0.5, x1=u + 0.5, y0=b - 0.5, y1=b + 0.5)
            self.overview.layout.shapes = [  # black and white: visible on any shade
                dict(cell, line=dict(color="#111", width=4)),
                dict(cell, line=dict(color="white", width=1.5)),
            ]
            self.overview.layout.height = min(900, max(220, 26 * len(blocks) + 130))
            scale = " (log colour scale; ≤ 0 left blank)" if log else ""
            self.overview.layout.title = dict(
                text=f"{KINDS[kind]}: {escape(column)} per block and {UNITS[kind]}{scale}<br>"
                f"<sub>selected: block {self._block} · {UNITS[kind]} {self._unit}; click a cell for its "
                "top contexts</sub>",
                font=dict(size=13),
            )

    def _draw_contexts(self) -> None:
        kind, unit_name = self._kind, UNITS[self._kind]
        found = self.result.contexts(kind, self._block, self._unit)
        score, value = SCORES[kind]
        head = (
            f'<div class="ne-note"><b>Top contexts of block {self._block} · {unit_name} {self._unit}</b> '
            f"({len(found)}, best first). Score: {score}. Shade: {value}, ÷ the line's largest; the token "
            "itself outlined; hover a token for its position and value.</div>"
        )
        if not found:
            self.contexts.value = head + '<div class="ne-warn">No contexts recorded for this unit.</div>'
            return
        lines = [self._line(c, LAYER_COLORS.get(kind, "#8e5fc2")) for c in found]
        self.contexts.value = head + "".join(lines)

    @staticmethod
    def _line(ctx, colour: str) -> str:
        """One context: rank, score, document and position, then its window as token chips."""
        top = max((abs(v) for v in ctx.values), default=0.0) or 1.0
        first = ctx.position - ctx.centre
        titles = [
            f"position {first + j}: {visible(t)} — value {v:.4g}"
            for j, (t, v) in enumerate(zip(ctx.tokens, ctx.values, strict=True))
        ]
        weights = [abs(v) / top for v in ctx.values]
        chips = token_chips(ctx.tokens, first, weights, titles, _rgb(colour), marked=(ctx.centre, CENTRE))
        meta = f"#{ctx.rank + 1} · score {ctx.score:.4g}<br>doc {ctx.doc} · position {ctx.position}"
        return f'<div class="ne-ctx"><span class="ne-ctx-meta">{meta}</span>{chips}</div>'

    # -------------------------------------------------------------- static
    def to_html(self) -> str:
        """A self-contained HTML page of what the view shows now (no network or kernel needed to view)."""
        page = Page(self.title)
        page.html(CORPUS_CSS)
        page.html(self.note.value)
        page.figure(self.overview)
        page.html(self.contexts.value)
        return page.render()
