"""CorpusView: the heatmap is ``result.matrix``, a click lists ``result.contexts`` in order, token text is
escaped, and bad input fails clearly. A small corpus collected on the tiny model (in memory, ~2 s)."""

from __future__ import annotations

import html
import re
from itertools import islice

import numpy as np
import pyarrow as pa
import pytest

import nemo_explore as ne
from nemo_explore.corpus import CorpusResult, collect, demo_corpus, read_documents
from nemo_explore.widgets._tokens import visible
from nemo_explore.widgets.corpus import CorpusView, _log_ticks

SCRIPT = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def result() -> CorpusResult:
    docs = [f"Look: {SCRIPT} & done.", *islice(read_documents(demo_corpus()), 15)]
    return collect(ne.load("tiny"), docs, max_docs=16, top_k=4, progress=False)


@pytest.fixture(scope="module")
def scripted(result) -> CorpusResult:
    """The result with the first context's centre token replaced by a whole ``<script>`` tag."""
    tables = {n: result.table(n) for n in result.table_names}
    rows = tables["contexts"].to_pylist()
    rows[0]["tokens"][rows[0]["centre"]] = SCRIPT
    tables["contexts"] = pa.Table.from_pylist(rows, schema=tables["contexts"].schema)
    return CorpusResult(tables, result.manifest)


def click(fig, x: str, y: str) -> None:
    """What the browser sends when a heatmap cell is clicked (as tests/test_widgets.py does)."""
    points = {"xs": [x], "ys": [y], "point_indexes": [0], "trace_indexes": [0]}
    fig._js2py_pointsCallback = {"event_type": "plotly_click", "points": points}


def lines(view: CorpusView) -> list[tuple[str, list[str], int]]:
    """(meta text, chip texts, index of the outlined chip) per context line of the panel."""
    out = []
    for line in view.contexts.value.split('<div class="ne-ctx">')[1:]:
        meta = re.search(r'<span class="ne-ctx-meta">(.*?)</span>', line).group(1)
        chips = re.findall(r'<span class="ne-tok([^"]*)"[^>]*>(.*?)</span>', line)
        centre = [j for j, (cls, _) in enumerate(chips) if "ne-centre" in cls]
        assert len(centre) == 1, line
        out.append((meta, [html.unescape(text) for _, text in chips], centre[0]))
    return out


def expected_lines(result, kind, block, unit) -> list[tuple[str, list[str], int]]:
    return [
        (f"#{c.rank + 1} · score {c.score:.4g}<br>doc {c.doc} · position {c.position}",
         [visible(t) for t in c.tokens], c.centre)
        for c in result.contexts(kind, block, unit)
    ]  # fmt: skip


def test_heatmap_is_the_matrix(result):
    view = CorpusView(result)
    for kind in result.kinds():
        for column in view.columns(kind):
            view.select(kind=kind, column=column)
            blocks, units, values = result.matrix(kind, column)
            trace = view.overview.data[0]
            z = np.array(trace.z, dtype=float)
            shown = np.where(values > 0, np.log10(values), np.nan) if view.log_box.value else values
            np.testing.assert_array_equal(z, shown)
            np.testing.assert_array_equal(np.array(trace.customdata, dtype=float), values)  # what hover shows
            finite = shown[np.isfinite(shown)]
            low = finite.min() if view.log_box.value or finite.min() < 0 else 0  # linear: from zero
            assert (trace.zmin, trace.zmax) == (low, finite.max())
            prefix = "e" if kind == "moe" else "h"
            assert list(trace.x) == [f"{prefix}{u}" for u in units]
            assert list(trace.y) == [f"block {b} · {kind}" for b in blocks]


def test_defaults_pick_the_top_unit(result):
    view = CorpusView(result)
    assert (view.kind, view.column, view.log_box.value) == ("moe", "share", False)
    assert view.kind_select.options == (("MoE experts", "moe"), ("Mamba heads", "mamba"),
                                        ("Attention heads", "attention"))  # fmt: skip
    assert "fraction of all tokens" in view.note.value
    for kind, column, log in (("mamba", "mean_rate_horizon", True), ("attention", "induction", False)):
        view.select(kind=kind)
        assert (view.column, view.log_box.value) == (column, log)
        blocks, units, values = result.matrix(kind, column)
        b, u = np.unravel_index(np.nanargmax(values), values.shape)
        assert (view.block, view.unit) == (blocks[b], units[u])
        for rect in view.overview.layout.shapes:  # a black and a white outline
            assert (rect.x0, rect.x1, rect.y0, rect.y1) == (u - 0.5, u + 0.5, b - 0.5, b + 0.5)
    assert "token[k−1] = token[q]" in view.note.value  # what induction means
    assert any("induction" in label for label, _ in view.column_select.options)


def test_log_colour_bar_is_labelled_with_values():
    bar = _log_ticks(np.log10(1.7), np.log10(240))
    assert bar["ticktext"] == ["2", "5", "10", "20", "50", "100", "200"]
    np.testing.assert_allclose(bar["tickvals"], np.log10([2, 5, 10, 20, 50, 100, 200]))
    assert _log_ticks(-3, 3)["ticktext"] == ["0.001", "0.01", "0.1", "1", "10", "100", "1000"]
    assert _log_ticks(np.log10(1.2), np.log10(1.8))["ticktext"] == ["1.2", "1.8"]  # no step inside


def test_click_selects_a_unit_and_lists_its_contexts(result):
    view = CorpusView(result, kind="mamba", column="norm_mean")
    blocks = result.blocks("mamba")
    click(view.overview, "h5", f"block {blocks[-1]} · mamba")
    assert (view.block, view.unit) == (blocks[-1], 5)
    assert lines(view) == expected_lines(result, "mamba", blocks[-1], 5)
    assert len(lines(view)) == 4  # top_k
    assert [(r.x0, r.y0) for r in view.overview.layout.shapes] == [(4.5, len(blocks) - 1.5)] * 2
    assert f"block {blocks[-1]} · head 5" in view.contexts.value
    view.select(kind="moe", unit=2)  # the block not given: the top-scoring one's
    assert (view.block, view.unit) == (result.blocks("moe")[0], 2)
    assert lines(view) == expected_lines(result, "moe", result.blocks("moe")[0], 2)


def test_shading_is_the_value_over_the_line_max(result):
    view = CorpusView(result, kind="moe")
    ctx = result.contexts("moe", view.block, view.unit)[0]
    first = view.contexts.value.split('<div class="ne-ctx">')[1]
    alphas = [float(a) for a in re.findall(r"rgba\([^)]*, ([0-9.]+)\)", first)]
    top = max(abs(v) for v in ctx.values)
    assert alphas == pytest.approx([0.15 + 0.85 * abs(v) / top for v in ctx.values if v], abs=1e-3)
    pos = ctx.position - ctx.centre
    assert f'title="position {pos}: ' in first and f"value {ctx.values[0]:.4g}" in first


def test_controls_update_the_same_figure(result):
    view = CorpusView(result)
    fig, trace = view.overview, view.overview.data[0]
    view.kind_select.value = "mamba"
    assert view.kind == "mamba" and view.column == "mean_rate_horizon"
    view.column_select.value = "norm_max"
    view.log_box.value = False
    assert view.overview is fig and view.overview.data[0] is trace and len(fig.data) == 1
    np.testing.assert_array_equal(np.array(trace.z, dtype=float), result.matrix("mamba", "norm_max")[2])
    view.log_box.value = True
    np.testing.assert_array_equal(
        np.array(trace.z, dtype=float), np.log10(result.matrix("mamba", "norm_max")[2])
    )
    assert trace.colorbar.ticktext and len(trace.colorbar.ticktext) == len(trace.colorbar.tickvals)
    assert "log colour scale" in fig.layout.title.text
    view.kind_select.value = "attention"
    assert (view.kind, view.column, view.log_box.value) == ("attention", "induction", False)
    assert trace.colorbar.tickvals is None and trace.colorbar.ticktext is None  # no log ticks left over
    assert view.column_select.label == "induction"
    assert view.overview is fig and list(trace.x) == ["h0", "h1", "h2", "h3"]


def test_token_text_is_escaped(scripted):
    row = scripted.table("contexts").to_pylist()[0]
    assert SCRIPT in scripted.contexts(row["kind"], row["block"], row["unit"])[row["rank"]].tokens
    view = CorpusView(scripted, kind=row["kind"], block=row["block"], unit=row["unit"])
    for text in (view.contexts.value, view.to_html()):
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        assert "<script>alert" not in text


def test_collected_markup_is_escaped(result):
    """Contexts whose tokens hold ``<`` (the tokenizer splits ``<script>``) show it as text."""
    view, seen = CorpusView(result), 0
    for row in result.table("contexts").to_pylist():
        if any("<" in t for t in row["tokens"]):
            view.select(kind=row["kind"], block=row["block"], unit=row["unit"])
            assert "&lt;" in view.contexts.value
            assert "<" not in re.sub(r"</?(div|span|b|br)\b[^>]*>", "", view.contexts.value)
            seen += 1
    assert seen


def test_to_html_is_a_static_copy(result):
    view = CorpusView(result, kind="attention")
    page = view.to_html()
    assert page.count("Plotly.newPlot") == 1 and page.count('class="ne-ctx"') == len(lines(view))
    assert "ne-centre" in page and "induction" in page and "<title>Corpus statistics</title>" in page


def test_bad_input(result):
    with pytest.raises(TypeError, match=r"CorpusResult \(from nemo_explore.corpus.collect.*load"):
        CorpusView({"moe": 1})
    with pytest.raises(ValueError, match="no 'mlp' statistics in this result; it has: moe, mamba, attention"):
        CorpusView(result, kind="mlp")
    with pytest.raises(ValueError, match="no 'banana' statistics"):
        CorpusView(result, kind="banana")
    view = CorpusView(result, kind="attn")  # any spelling of a layer type
    assert view.kind == "attention"
    with pytest.raises(ValueError, match="attention has no score 'load'; choose one of queries, entropy"):
        view.select(column="load")
    with pytest.raises(IndexError, match=r"block 0 has no attention statistics; blocks: \[3\]"):
        view.select(block=0)
    with pytest.raises(IndexError, match=r"head 4 out of range: attention blocks have 4 heads \(0..3\)"):
        view.select(unit=4)
    assert (view.kind, view.column) == ("attention", "induction")  # a failed select changes nothing
    only_moe = CorpusResult({"moe_experts": result.table("moe_experts"),
                             "contexts": result.table("contexts")}, result.manifest)  # fmt: skip
    with pytest.raises(ValueError, match="it has: moe$"):
        CorpusView(only_moe, kind="mamba")
