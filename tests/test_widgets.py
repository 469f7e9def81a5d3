"""The widgets' data: what each one sends to the browser equals the cache, computed independently here.

Fake caches with hand-made tensors of the hook-table shapes; the Explorer runs a random model with a
character tokenizer (``tests/browser/demo_model.py``). The real-browser test is ``tests/browser/``.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import re
import subprocess
import sys
import warnings
import weakref
from collections import Counter

import numpy as np
import pytest
import torch

from nemo_explore.cache import ActivationCache
from nemo_explore.core.token_text import visible
from nemo_explore.widgets import AttentionHeads, Explorer, MoERouting, SSMStateNorms
from nemo_explore.widgets._static import script_json
from nemo_explore.widgets._tokens import tick_room
from nemo_explore.widgets.attention import OVERVIEW
from nemo_explore.widgets.attention import PAIRWISE_WINDOW as W

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "browser"))
from demo_model import demo_model  # noqa: E402

TYPES = ["mamba", "attention", "mlp", "moe", "mamba", "attention"]  # block 5: attention, never cached
TOKENS = ["<s>", "The", " cat", "\n", "<script>", "alert(1)", "</script>", "<!--", " ", "\t", "&amp;", "x"]
H_ATTN, H_MAMBA, E, K = 4, 6, 8, 2


def causal_pattern(b: int, h: int, p: int, g: torch.Generator) -> torch.Tensor:
    scores = torch.randn(b, h, p, p, generator=g).masked_fill(torch.ones(p, p).triu(1).bool(), -math.inf)
    return scores.softmax(-1)


def routing(b: int, p: int, g: torch.Generator):
    """Sigmoid scores, an unsorted top-k of them, and weights normalised over the top-k and scaled."""
    scores = torch.randn(b, p, E, generator=g).sigmoid()
    idx = scores.topk(K, dim=-1).indices.flip(-1)  # unsorted, as the router's sorted=False may give
    w = scores.gather(-1, idx)
    return scores, idx, 2.5 * w / w.sum(-1, keepdim=True)


def make_cache(p: int = len(TOKENS), b: int = 2, seed: int = 0, drop: tuple[str, ...] = (), **extra):
    g = torch.Generator().manual_seed(seed)
    scores, idx, w = routing(b, p, g)
    data = {
        "blocks.0.mamba.hook_hidden_attn": torch.randn(b, H_MAMBA, p, p, generator=g).tril(),
        "blocks.0.mamba.hook_state_norm": torch.rand(b, p, H_MAMBA, generator=g) * 5,
        "blocks.1.attn.hook_pattern": causal_pattern(b, H_ATTN, p, g),
        "blocks.3.moe.hook_router_scores": scores,
        "blocks.3.moe.hook_topk_indices": idx,
        "blocks.3.moe.hook_topk_weights": w,
        "blocks.4.mamba.hook_hidden_attn": torch.randn(b, H_MAMBA, p, p, generator=g).tril(),
        "blocks.4.mamba.hook_state_norm": torch.rand(b, p, H_MAMBA, generator=g),
        "blocks.0.hook_resid_post": torch.randn(b, p, 8, generator=g),
    }
    data = {k: v for k, v in data.items() if not any(d in k for d in drop)}
    tokens = (TOKENS * (p // len(TOKENS) + 1))[:p]
    return ActivationCache(
        {**data, **extra},
        layer_types=TYPES,
        str_tokens=[tokens, tokens[::-1]],
        tokens=torch.ones(b, p).long(),
    )


def z(trace) -> np.ndarray:
    """A heatmap's z as sent (nested lists, None for a gap) -> float array with NaN gaps."""
    return np.array(trace.z, dtype=float)


def click(fig, x, y, trace: int = 0) -> None:
    """What the browser sends when a point is clicked."""
    points = {"xs": [x], "ys": [y], "point_indexes": [0], "trace_indexes": [trace]}
    fig._js2py_pointsCallback = {"event_type": "plotly_click", "points": points}


def text(html: str) -> str:
    return re.sub(r"<[^>]+>", "", html)


def label(j: int, tok: str) -> str:
    shown = tok.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")
    return f"{j} {shown}".replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@pytest.fixture(scope="module")
def cache():
    return make_cache()


# ------------------------------------------------------------------ tokens and static pages
def test_tokens_made_visible_and_escaped(cache):
    assert visible(" a\n\tb\r\x00") == "␣a↵⇥b␍\\x00" and visible("") == "∅"
    view = AttentionHeads(cache)
    assert list(view.detail.data[0].x) == [label(j, t) for j, t in enumerate(TOKENS)]
    assert "4 &lt;script&gt;" in view.detail.data[0].y and "7 &lt;!--" in view.detail.data[0].y
    assert not any("<script>" in x or "<!--" in x for x in view.detail.data[0].x)


def test_script_json_cannot_close_its_block():
    value = {"t": "</script><script>alert(1)</script><!-- ]]> & \u2028"}
    text = script_json(value)
    assert not re.search(r"[<>&\u2028]", text)
    assert json.loads(text) == value


@pytest.mark.parametrize("make", [AttentionHeads, SSMStateNorms, MoERouting])
def test_to_html_is_self_contained_and_escaped(cache, make):
    page = make(cache).to_html()
    head, body = page.split("</head>", 1)
    assert head.count("<script>") == 1  # the inlined plotly.js, once
    assert not re.search(r"<script[^>]*\bsrc=", page) and "<link" not in page
    blocks = re.findall(r"<script>(.*?)</script>", body, flags=re.S)
    assert len(blocks) == 2 and all(b.startswith("(function () { const f = {") for b in blocks)
    for block in blocks:  # the figure JSON parses back, with the token text in it
        spec = json.loads(block[block.index("{", 20) : block.rindex("};") + 1])
        assert spec["data"] and spec["layout"]
    assert "\\u0026lt;script\\u0026gt;" in body  # '&lt;script&gt;' inside JSON inside <script>
    assert "<script>alert" not in page and "<!--" not in page



@pytest.mark.parametrize("make", [AttentionHeads, SSMStateNorms, MoERouting])
def test_to_html_of_a_long_input_holds_the_shown_slice(make):
    """A static page of a 2,048-token view carries what the view shows (a window, the overview), not the
    whole cache: a few MB at most, plotly.js (about 4.8 MB) included."""
    drop = ("hook_hidden_attn",) if make is AttentionHeads else ("hook_hidden_attn", "hook_pattern")
    view = make(make_cache(p=2048, b=1, drop=drop))
    page = view.to_html()
    figures = re.findall(r"<script>(.*?)</script>", page.split("</head>", 1)[1], flags=re.S)
    data = sum(len(f) for f in figures)
    if make is AttentionHeads:
        assert len(figures) == 3 and "all 2048 queries" in page  # thumbnails, overview, detail
    assert data < 4e6 and len(page) < 9e6, (data, len(page))

def test_as_circuitsvis_is_inline_and_escaped(cache):
    html = str(AttentionHeads(cache).as_circuitsvis())
    assert "unpkg" not in html.split("CircuitsVis.render(")[1] and "CircuitsVis.render(" in html
    assert 'from "http' not in html and "import {" not in html
    props = html.split("CircuitsVis.AttentionHeads, ", 1)[1].rsplit(");", 1)[0]
    assert "<" not in props
    parsed = json.loads(props)
    assert parsed["tokens"] == [visible(t) for t in TOKENS]
    np.testing.assert_allclose(parsed["attention"], cache["blocks.1.attn.hook_pattern"][0].numpy(), rtol=1e-6)


# ------------------------------------------------------------------ AttentionHeads
def test_attention_pattern_values(cache):
    view = AttentionHeads(cache, head=2)
    assert view.layer == 1 and view.head == 2
    want = cache["blocks.1.attn.hook_pattern"][0, 2].numpy()
    got = z(view.detail.data[0])
    upper = np.triu(np.ones_like(want, dtype=bool), 1)
    assert np.isnan(got[upper]).all()
    np.testing.assert_array_equal(got[~upper], want[~upper].astype(np.float32))
    # colour range: from 0 to the largest p below the first row (which is always 1), and by default
    # right of the first column (the attention sink, which saturates)
    assert view.detail.data[0].zmin == 0 and view.detail.data[0].zmax == pytest.approx(want[1:, 1:].max())
    assert "leaves out the first token" in view.note.value
    view.sink_box.value = False
    assert view.detail.data[0].zmax == pytest.approx(want[1:].max())
    assert "leaves out the first token" not in view.note.value


def test_mamba_hidden_attention_signed_and_share(cache):
    view = AttentionHeads(cache)
    view.layer_select.value = 4
    view.head_select.value = 5
    view.layer_select.value = 1  # 4 heads: back to head 0
    assert view.head == 0
    view.select(layer=4, head=5)
    M = cache["blocks.4.mamba.hook_hidden_attn"][0, 5].numpy()
    trace = view.detail.data[0]
    got = z(trace)
    low = np.tril(np.ones_like(M, dtype=bool))
    np.testing.assert_array_equal(got[low], M[low])
    assert (got[low] < 0).any()  # signed: nothing clipped to look like a probability
    assert trace.zmid == 0 and trace.zmin == -trace.zmax == pytest.approx(-np.abs(M).max())
    assert "signed, unnormalised" in view.detail.layout.title.text
    view.mode_select.value = "share"
    share = np.abs(M) / np.abs(M).sum(1, keepdims=True)
    np.testing.assert_allclose(z(view.detail.data[0])[low], share[low], rtol=1e-5)
    assert "|M| ÷ row Σ|M|" in view.detail.layout.title.text and view.detail.data[0].zmin == 0


def test_grid_tiles_and_click_select_a_head(cache):
    view = AttentionHeads(cache, layer=0)
    grid, p = z(view.grid.data[0]), len(TOKENS)
    step = p + max(1, p // 8)
    for k in range(H_MAMBA):
        r, c = divmod(k, 4)
        tile = grid[r * step : r * step + p, c * step : c * step + p]
        M = cache["blocks.0.mamba.hook_hidden_attn"][0, k].numpy()
        low = np.tril(np.ones((p, p), dtype=bool))
        np.testing.assert_allclose(tile[low], (M / np.abs(M).max())[low], rtol=1e-6)
        assert np.isnan(tile[~low]).all()
    click(view.grid, x=step + 1, y=step + 1)  # row 1, column 1: head 5
    assert view.head == 5
    assert z(view.detail.data[0])[3, 1] == cache["blocks.0.mamba.hook_hidden_attn"][0, 5, 3, 1].item()


def test_layer_menu_lists_both_kinds_and_batch_row(cache):
    view = AttentionHeads(cache, batch=1)
    assert view.layer_select.options == (
        ("0 · mamba (hidden attention)", 0),
        ("1 · attention", 1),
        ("4 · mamba (hidden attention)", 4),
    )
    np.testing.assert_array_equal(
        np.nan_to_num(z(view.detail.data[0])), cache["blocks.1.attn.hook_pattern"][1, 0].numpy()
    )
    assert view.detail.data[0].x[0] == label(0, TOKENS[-1])  # row 1's own tokens


def test_padding_and_missing_tokenizer():
    """A padded row shows its real tokens only; without a tokenizer the labels are the token ids."""
    full = make_cache()
    mask = torch.ones(2, len(TOKENS), dtype=torch.long)
    mask[1, 8:] = 0
    data = {k: full[k] for k in full}
    padded = ActivationCache(
        data, layer_types=TYPES, str_tokens=[TOKENS, TOKENS[:8]], tokens=torch.arange(24).view(2, 12),
        attention_mask=mask,
    )  # fmt: skip
    view = AttentionHeads(padded, batch=1)
    want = full["blocks.1.attn.hook_pattern"][1, 0, :8, :8].numpy()
    np.testing.assert_array_equal(np.nan_to_num(z(view.detail.data[0])), want)
    assert list(view.detail.data[0].x) == [label(j, t) for j, t in enumerate(TOKENS[:8])]
    bare = ActivationCache(data, layer_types=TYPES, tokens=torch.arange(24).view(2, 12))
    assert MoERouting(bare, batch=1).routing.data[0].x[:2] == ("0 #12", "1 #13")


def test_long_input_is_windowed():
    p = 700
    cache = make_cache(p=p, b=1, drop=("mamba",))
    view = AttentionHeads(cache)
    pattern = cache["blocks.1.attn.hook_pattern"][0, 0].numpy()
    assert z(view.detail.data[0]).shape == (W, W) and len(view.detail.data[0].x) == W
    assert f"Long input: showing positions 0–{W - 1} of 0–699" in text(view.note.value)
    assert view.window_slider.layout.display is None and view.window_slider.max == p - W
    view.window_slider.value = 150
    got = z(view.detail.data[0])
    np.testing.assert_array_equal(np.nan_to_num(got), np.tril(pattern[150 : 150 + W, 150 : 150 + W]))
    assert view.detail.data[0].y[0].startswith("150 ")
    assert len(z(view.grid.data[0])) < 2 * 48  # 4 heads of 48×48 block means in one row
    assert AttentionHeads(make_cache()).window_slider.layout.display == "none"


def test_overview_shows_the_whole_map_pooled_and_moves_the_window():
    p = 700
    cache = make_cache(p=p, b=1, drop=("mamba",))
    pattern = cache["blocks.1.attn.hook_pattern"][0, 3]
    view = AttentionHeads(cache, head=3)
    assert view.overview_box.layout.display is None
    got = z(view.overview.data[0])
    assert got.shape == (OVERVIEW, OVERVIEW)
    # an independent pooling: the mean of each bin's cells, bins as torch's adaptive pooling makes them
    edges = [((i * p) // OVERVIEW, -(-(i + 1) * p // OVERVIEW)) for i in range(OVERVIEW)]
    for r, c in [(0, 0), (5, 2), (127, 0), (127, 127), (64, 30)]:
        (a, b), (c0, c1) = edges[r], edges[c]
        np.testing.assert_allclose(got[r, c], pattern[a:b, c0:c1].mean().item(), rtol=1e-5)
    assert np.isnan(got[0, 127]) and np.isnan(got[10, 40])  # blocks wholly above the diagonal: blank
    title = view.overview.layout.title.text
    assert f"all {p} queries × {p} keys" in title and "block means of ≤6×6 cells" in title
    rect = view.overview.layout.shapes[0]
    assert (rect.y0, rect.y1, rect.x0, rect.x1) == (-0.5, W - 0.5, -0.5, W - 0.5)
    # a click on a late query row and an early key column moves the detail there, independently
    click(view.overview, 40.0, 600.0)
    assert (view.window_slider.value, view.key_slider.value) == (p - W, 0)
    detail = z(view.detail.data[0])
    above = np.arange(0, W)[None, :] > np.arange(p - W, p)[:, None]
    np.testing.assert_array_equal(detail[~above], pattern.numpy()[p - W :, :W][~above])
    rect = view.overview.layout.shapes[0]
    assert (rect.y0, rect.x0) == (p - W - 0.5, -0.5)
    assert AttentionHeads(make_cache()).overview_box.layout.display == "none"  # short input: no overview


def test_share_mode_divides_by_whole_row_sums():
    cache = make_cache(p=700, b=1)
    M = cache["blocks.0.mamba.hook_hidden_attn"][0, 1]
    view = AttentionHeads(cache, layer=0, head=1, mode="share")
    view.select(window=300, keys=100)
    want = M[300 : 300 + W].abs() / M[300 : 300 + W].abs().sum(-1, keepdim=True)
    got = z(view.detail.data[0])
    keep = ~np.isnan(got)
    np.testing.assert_allclose(got[keep], want[:, 100 : 100 + W].numpy()[keep], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(view.shown()["maps"][1].numpy(), want[:, 100 : 100 + W].numpy(), rtol=1e-5)


def test_hidden_attention_for_a_window_of_query_rows():
    full = make_cache()
    rows = full["blocks.0.mamba.hook_hidden_attn"][:, :, 8:12]
    cache = make_cache(
        drop=("hook_hidden_attn", "attn.hook_pattern"), **{"blocks.0.mamba.hook_hidden_attn": rows}
    )
    with pytest.raises(ValueError, match=r"holds 4 query rows of 12 positions.*hidden_attn_window"):
        AttentionHeads(cache)
    view = AttentionHeads(cache, hidden_attn_window=(8, 12))
    got = z(view.detail.data[0])  # rows 8..11 against every key they can see (all fit in the key window)
    np.testing.assert_array_equal(
        np.nan_to_num(got), np.tril(full["blocks.0.mamba.hook_hidden_attn"][0, 0, 8:, :].numpy(), 8)
    )
    assert view.detail.data[0].y[0] == label(8, TOKENS[8]) and view.detail.data[0].x[0] == label(0, TOKENS[0])


def test_attention_pattern_for_a_window_of_query_rows(model):
    x = "The cat sat on"[:12]
    _, full = model.run_with_cache(x, names_filter="blocks.1.attn.hook_pattern")
    _, cache = model.run_with_cache(x, names_filter="blocks.1.attn.hook_pattern", pattern_window=(7, 12))
    view = AttentionHeads(cache)  # the cache says which rows it holds
    got = z(view.detail.data[0])
    np.testing.assert_allclose(
        np.nan_to_num(got), np.tril(full["blocks.1.attn.hook_pattern"][0, 0, 7:, :].numpy(), 7), atol=1e-6
    )
    assert view.window_slider.min == 7
    cache.options = dataclasses.replace(cache.options, pattern_window=None)  # a cache that does not say
    with pytest.raises(ValueError, match=r"holds 5 query rows of 12 positions.*pattern_window=\(start"):
        AttentionHeads(cache)
    assert AttentionHeads(cache, pattern_window=(7, 12)).window_slider.min == 7


def test_attention_errors(cache):
    with pytest.raises(ValueError, match=r"no attention pattern or Mamba hidden attention.*names_filter"):
        AttentionHeads(make_cache(drop=("hook_pattern", "hook_hidden_attn")))
    with pytest.raises(ValueError, match="block 2 is a mlp layer; AttentionHeads shows attention and mamba"):
        AttentionHeads(cache, layer=2)
    with pytest.raises(IndexError, match=r"layer 9 does not exist: the model has 6 blocks"):
        AttentionHeads(cache, layer=9)
    with pytest.raises(
        ValueError, match=r"needs blocks\.5\.attn\.hook_pattern, or blocks\.5\.attn\.hook_q.*run_with_cache"
    ):
        AttentionHeads(cache, layer=5)
    with pytest.raises(IndexError, match="head 4 out of range: block 1 has 4 heads"):
        AttentionHeads(cache, head=4)
    with pytest.raises(ValueError, match="mode must be"):
        AttentionHeads(cache, mode="softmax")
    with pytest.raises(TypeError, match="takes an ActivationCache"):
        AttentionHeads({"blocks.1.attn.hook_pattern": torch.ones(1, 1, 2, 2)})


# ------------------------------------------------------------------ SSMStateNorms
def test_state_norm_values_and_normalisations(cache):
    view = SSMStateNorms(cache)
    norms = cache["blocks.0.mamba.hook_state_norm"][0].numpy()  # p h
    heads = view.heads.data[0]
    np.testing.assert_array_equal(z(heads), norms.T)
    assert heads.customdata is None and "%{z:.4g}" in heads.hovertemplate  # raw: hover reads z, not a copy
    assert list(heads.y) == [f"h{k}" for k in range(H_MAMBA)] and list(heads.x) == [
        label(j, t) for j, t in enumerate(TOKENS)
    ]
    view.norm_select.value = "head"
    np.testing.assert_allclose(z(view.heads.data[0]), (norms / norms.max(0)).T, rtol=1e-6)
    np.testing.assert_array_equal(np.array(view.heads.data[0].customdata), norms.T)  # hover: raw values
    view.norm_select.value = "token"
    np.testing.assert_allclose(z(view.heads.data[0]), (norms / norms.max(1, keepdims=True)).T, rtol=1e-6)
    other = cache["blocks.4.mamba.hook_state_norm"][0].numpy()
    overview = np.stack([(n / n.max(1, keepdims=True)).mean(1) for n in (norms, other)])
    np.testing.assert_allclose(z(view.overview.data[0]), overview, rtol=1e-6)
    assert list(view.overview.data[0].y) == ["0 mamba", "4 mamba"]


def test_state_norm_layer_switch_click_and_horizons(cache):
    horizons = {0: torch.arange(H_MAMBA) + 1.0, 4: torch.arange(H_MAMBA) * 2.0}
    view = SSMStateNorms(cache, horizons=horizons)
    np.testing.assert_array_equal(view.heads.data[1].x, horizons[0].numpy())
    click(view.overview, x=label(3, TOKENS[3]), y="4 mamba")
    assert view.layer == 4
    np.testing.assert_array_equal(z(view.heads.data[0]), cache["blocks.4.mamba.hook_state_norm"][0].numpy().T)
    np.testing.assert_array_equal(view.heads.data[1].x, horizons[4].numpy())
    with pytest.raises(ValueError, match=r"horizons\[0\] must have one value per head \(6\)"):
        SSMStateNorms(cache, horizons={0: torch.ones(3)})
    with pytest.raises(ValueError, match="block 1 is a attention layer; SSMStateNorms shows mamba layers: "):
        SSMStateNorms(cache, layer=1)
    with pytest.raises(ValueError, match=r"no Mamba state norms.*hook_state_norm"):
        SSMStateNorms(make_cache(drop=("hook_state_norm",)))


def test_state_norms_long_input_window():
    cache = make_cache(p=2100, b=1, drop=("hook_hidden_attn", "hook_pattern", "moe"))
    view = SSMStateNorms(cache, window=1100)
    norms = cache["blocks.0.mamba.hook_state_norm"][0].numpy()
    np.testing.assert_array_equal(z(view.heads.data[0]), norms[1076:2100].T)  # clamped: at most 1024
    assert "showing positions 1076–2099 of 0–2099" in text(view.note.value)


# ------------------------------------------------------------------ MoERouting
def test_routing_weights_marks_and_load(cache):
    view = MoERouting(cache)
    idx = cache["blocks.3.moe.hook_topk_indices"][0]
    w = cache["blocks.3.moe.hook_topk_weights"][0]
    dense = np.zeros((E, len(TOKENS)), dtype=np.float32)
    for j in range(len(TOKENS)):
        for r in range(K):
            dense[idx[j, r], j] = w[j, r]
    np.testing.assert_array_equal(z(view.routing.data[0]), dense)
    marks = view.routing.data[1]
    got = Counter(zip(marks.x, marks.y, strict=True))
    want = Counter((label(j, TOKENS[j]), f"e{int(e)}") for j in range(len(TOKENS)) for e in idx[j])
    assert got == want
    weights = {(x, y): cd[1] for x, y, cd in zip(marks.x, marks.y, marks.customdata, strict=True)}
    assert weights[(label(4, TOKENS[4]), f"e{int(idx[4, 1])}")] == pytest.approx(float(w[4, 1]))
    load = Counter(int(e) for e in idx.flatten())
    assert list(view.load.data[0].y) == [load[e] for e in range(E)]
    assert view.expert == max(range(E), key=lambda e: (load[e], -e))
    assert (view.routing.data[0].zmin, view.routing.data[0].zmax) == (0, pytest.approx(float(w.max())))
    view.values_select.value = "score"
    assert (view.routing.data[0].zmin, view.routing.data[0].zmax) == (0, 1)
    np.testing.assert_array_equal(
        z(view.routing.data[0]), cache["blocks.3.moe.hook_router_scores"][0].numpy().T
    )


def test_tokens_of_an_expert(cache):
    view = MoERouting(cache)
    idx = cache["blocks.3.moe.hook_topk_indices"][0]
    click(view.load, x="e3", y=1)
    assert view.expert == 3
    html = view.tokens.value
    chips = re.findall(r'<span class="ne-tok" title="([^"]*)"( style="[^"]*")?>([^<]*)</span>', html)
    assert [c[2] for c in chips] == [
        visible(t).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") for t in TOKENS
    ]
    routed = [j for j in range(len(TOKENS)) if 3 in idx[j].tolist()]
    assert [j for j, c in enumerate(chips) if c[1]] == routed
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert all("expert 3, choice" in chips[j][0] for j in routed)


def test_moe_errors_and_window(cache):
    with pytest.raises(ValueError, match=r"needs blocks\.3\.moe\.hook_topk_weights.*cache it first"):
        MoERouting(make_cache(drop=("hook_topk_weights",)))
    with pytest.raises(ValueError, match="no MoE routing in this cache"):
        MoERouting(make_cache(drop=("moe",)))
    with pytest.raises(ValueError, match="block 0 is a mamba layer; MoERouting shows moe layers: "):
        MoERouting(cache, layer=0)
    with pytest.raises(IndexError, match="expert 8 out of range"):
        MoERouting(cache, expert=8)
    long = make_cache(p=2300, b=1, drop=("hook_hidden_attn", "hook_pattern"))
    view = MoERouting(long)
    assert z(view.routing.data[0]).shape == (E, 256) and sum(view.load.data[0].y) == 2300 * K
    assert view.load._config == {"displayModeBar": False}  # no modebar over the load chart's title
    assert "Long input" in view.note.value
    # 256 tokens of the window, folded under one line; a short input's chips are open (test above)
    folded = view.tokens.value
    assert folded.startswith("<details><summary") and folded.count('class="ne-tok"') == 256
    # 256 tokens in 640 px: no room for a top-k mark per cell, so none is sent (the title says so)
    assert (
        len(view.routing.data[1].x) == 0
        and "marks left out: cells under 6 px" in view.routing.layout.title.text
    )


# ------------------------------------------------------------------ Explorer
@pytest.fixture(scope="module")
def model():
    return demo_model()


TEXT = "The cat sat. <script>alert(1)</script>\nThe cat"


def test_explorer_runs_views_and_links(model):
    ex = Explorer(model, TEXT)
    assert list(ex.views) == ["attention", "ssm", "moe"]
    assert ex.cache.str_tokens == model.to_str_tokens(TEXT)
    per_token = {"mamba.hook_state_norm", "mamba.hook_dt", "mamba.hook_B", "mamba.hook_C", "attn.hook_q",
                 "attn.hook_k", "moe.hook_router_scores", "moe.hook_topk_indices",
                 "moe.hook_topk_weights"}  # fmt: skip
    assert {n.split(".", 2)[2] for n in ex.cache} == per_token  # per-token points only: no p × p map is held
    assert [c.style.button_color for c in ex.cells] == [
        {"mamba": "#17a398", "attention": "#f28e2b", "mlp": "#9aa0a6", "moe": "#8e5fc2"}[t]
        for t in model.layer_types
    ]
    maps = ("hook_pattern", "hook_hidden_attn")
    _, ref = model.run_with_cache(TEXT, names_filter=lambda n: n.endswith(maps))
    forwards = []
    handle = model.hf_model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        ex.cells[6].click()
        assert ex.tabs.selected_index == 0 and ex.views["attention"].layer == 6
        want = ref["blocks.6.attn.hook_pattern"][0, 0].numpy()
        np.testing.assert_array_equal(np.nan_to_num(z(ex.views["attention"].detail.data[0])), want)
        ex.cells[7].click()
        assert ex.tabs.selected_index == 2 and ex.views["moe"].layer == 7
        ex.tabs.selected_index = 1
        shown = ex.views["attention"].detail.data[0].z
        ex.cells[5].click()  # a Mamba block while its SSM tab is open: stays there, both views follow
        assert ex.tabs.selected_index == 1 and ex.views["ssm"].layer == 5 and ex.views["attention"].layer == 5
        # the attention view, in a hidden tab, draws when its tab is opened
        assert ex.views["attention"].detail.data[0].z is shown
        ex.tabs.selected_index = 0
        want = ref["blocks.5.mamba.hook_hidden_attn"][0, 0].numpy()
        np.testing.assert_array_equal(np.nan_to_num(z(ex.views["attention"].detail.data[0])), want)
        ex.cells[4].click()
        assert "Block 4 is a dense MLP" in ex.status.value
        for i in (0, 1, 2, 5, 6):
            ex.select_layer(i)
    finally:
        handle.remove()
    assert not forwards  # a click computes from the per-token points: it never runs the model
    with pytest.raises(IndexError):
        ex.select_layer(8)


def test_explorer_new_prompt_keeps_layer_and_reports_errors(model):
    ex = Explorer(model, TEXT)
    ex.select_layer(2)
    ex.prompt.value = "A new <!-- prompt"
    ex.run_button.click()
    assert ex.cache.str_tokens == model.to_str_tokens("A new <!-- prompt")
    assert ex.views["attention"].layer == 2 and ex.views["moe"].layer == 3
    assert f"Ran {len(ex.cache.str_tokens)} tokens" in ex.status.value
    ex.prompt.value = ""
    ex.run_button.click()  # an error in a button callback is shown, not lost
    assert "ValueError" in ex.status.value and "non-empty prompt" in ex.status.value
    with pytest.raises(TypeError, match="takes a nemo_explore model"):
        Explorer(object(), TEXT)


def test_explorer_default_prompt_is_a_sentence_said_twice(model):
    from nemo_explore.widgets.explorer import DEFAULT_PROMPT

    half, rest = DEFAULT_PROMPT.split(". ", 1)
    assert rest == half + "."
    ex = Explorer(model)
    assert ex.prompt.value == DEFAULT_PROMPT and ex.cache.str_tokens == model.to_str_tokens(DEFAULT_PROMPT)


def test_explorer_horizons_and_static_page(model):
    ex = Explorer(model, TEXT)
    ssm = ex.views["ssm"]
    for i in model.layers("mamba"):
        dt = ex.cache[f"blocks.{i}.mamba.hook_dt"][0]  # p h
        rate = dt * torch.exp(model.blocks[i].mixer.A_log.detach())
        want = math.log(2) / rate.mean(0)
        torch.testing.assert_close(ssm._horizons[i], want, rtol=1e-5, atol=0)
    assert ssm.heads.data[1].x is None  # in a hidden tab from the start: not drawn yet
    page = ex.to_html()  # draws it
    np.testing.assert_allclose(ssm.heads.data[1].x, ssm._horizons[0].numpy())
    assert page.count('title="block ') == len(model.layer_types)
    assert "Hello" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert" not in page
    assert len(re.findall(r"Plotly\.newPlot", page)) == 6
    ex.select_layer(5)  # the SSM view's tab is hidden: the page shows it at block 5 all the same
    assert "block 0 \\u00b7 mamba" in ssm.heads.layout.title.text.replace("·", "\\u00b7")
    assert "block 5 \\u00b7 mamba: state norm" in ex.to_html()


def test_explorer_long_prompt_shows_any_query_rows(model):
    text = "abcdefghij" * 110  # 1,100 tokens
    ex = Explorer(model, text)
    assert "Ran 1100 tokens" in ex.status.value and "of per-token points held" in ex.status.value
    ex.select_layer(0)
    view = ex.views["attention"]
    assert view.window_slider.min == 0 and view.window_slider.max == 1100 - W  # every query row
    view.select(window=588)
    assert view.detail.data[0].y[0].startswith("588 ")
    name = "blocks.0.mamba.hook_hidden_attn"
    _, ref = model.run_with_cache(text, names_filter=name, hidden_attn_window=(588, 588 + W))
    want = np.tril(ref["blocks.0.mamba.hook_hidden_attn"][0, 0, :, 588 : 588 + W].numpy())
    np.testing.assert_array_equal(np.nan_to_num(z(view.detail.data[0])), want)
    assert "all 1100 queries × 1100 keys" in view.overview.layout.title.text
    view.select(layer=1, window=0)  # the attention layer, its first rows
    _, ref = model.run_with_cache(text, names_filter="blocks.1.attn.hook_pattern", pattern_window=(0, W))
    want = ref["blocks.1.attn.hook_pattern"][0, view.head, :, :W].numpy()
    np.testing.assert_array_equal(np.nan_to_num(z(view.detail.data[0])), want)


def test_explorer_shows_progress_and_can_be_interrupted(model, monkeypatch):
    from nemo_explore.widgets import explorer

    ex = Explorer(model, "the cat")
    seen = []
    ex.status.observe(lambda change: seen.append(change["new"]), names="value")
    monkeypatch.setattr(explorer, "PROGRESS_AFTER_S", 0.0)
    monkeypatch.setattr(explorer, "PROGRESS_EVERY_S", 0.0)
    ex.run("the cat sat on the mat")
    n, blocks = len(model.to_str_tokens("the cat sat on the mat")), model.n_layers
    steps = [text(v) for v in seen if "block" in v and "of" in v and "Interrupt" in v]
    assert steps[0].startswith(f"running ({n} tokens): block 1 of {blocks}")
    assert any(f"block {blocks} of {blocks}" in s for s in steps)
    assert text(seen[-1]).startswith(f"Ran {n} tokens")
    cache, views = ex.cache, dict(ex.views)

    def stop(tensor, hook):  # what interrupting the kernel does mid-forward
        raise KeyboardInterrupt

    model.add_hook("blocks.2.hook_resid_post", stop)
    try:
        ex.run("a different prompt")
    finally:
        model.reset_hooks()
    # the previous run's points were let go before the forward: the views hide, and say how to get them back
    assert "Interrupted" in ex.status.value and "press Run" in ex.status.value
    assert ex.cache is None and ex.tabs.layout.display == "none"
    with pytest.raises(RuntimeError, match="run a prompt first"):
        ex.select_layer(1)
    with pytest.raises(RuntimeError, match="run a prompt first"):
        ex.to_html()
    ex.run("the cat")  # hooks were removed: runs as before, into the same views
    assert text(ex.status.value).startswith("Ran ") and ex.views == views and ex.tabs.layout.display is None
    assert ex.cache is not cache and ex.views["moe"].cache is ex.cache
    ex.select_layer(1)
    ex.run("")  # a failure before the forward keeps the run shown
    assert "ValueError" in ex.status.value and "still show the previous prompt" in ex.status.value
    assert ex.cache is not None and ex.tabs.layout.display is None


def test_explorer_holds_one_runs_points_at_a_time(model):
    """A new run lets go of the previous run's points before its forward: by the new forward's first block,
    every tensor over the last run's memory is freed (the views keep only what they drew)."""
    ex = Explorer(model, "the cat sat on the mat")
    ex.select_layer(1)  # the attention view holds that layer's q and k for its maps
    storages = {t.untyped_storage().data_ptr() for t in ex.cache.values()}
    with warnings.catch_warnings():  # isinstance on every object reads deprecated module attributes
        warnings.simplefilter("ignore", FutureWarning)
        over_them = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.device.type == "cpu"]
    held = [weakref.ref(o) for o in over_them if o.untyped_storage().data_ptr() in storages]
    assert len(held) >= len(storages)  # the cache's own tensors are among them
    del over_them
    alive = []

    def look(tensor, hook):
        gc.collect()
        alive.append(sum(ref() is not None for ref in held))

    model.add_hook("blocks.0.hook_resid_pre", look)
    try:
        ex.run("a different prompt", raise_errors=True)
    finally:
        model.reset_hooks()
    assert alive == [0]
    # and a caller who kept the cache keeps it whole
    kept = ex.cache
    ex.run("the cat", raise_errors=True)
    assert "blocks.1.attn.hook_q" in kept and kept["blocks.1.attn.hook_q"].shape[1] == len(
        model.to_str_tokens("a different prompt")
    )


def test_nemo_explore_imports_without_ipywidgets():
    code = (
        "import sys; sys.modules['ipywidgets'] = None\n"
        "import nemo_explore\n"
        "try:\n    import nemo_explore.widgets\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'nemo-explore[widgets]'" in out.stdout


# ------------------------------------------------------------------ token text and small defects (issue 15)
def test_split_characters_joined_and_fragments_kept():
    from nemo_explore.core.token_text import join_pieces

    pieces = ["a", " ", "\\xe2", "\\x80", "\\x94", " b", "\\xf0\\x9f", "\\x98\\x80x", "\\xe2"]
    want = ["a", " ", "—₁", "—₂", "—₃", " b", "😀₁", "😀₂x", "\\xe2"]  # the last one: a real fragment
    assert join_pieces(pieces) == want
    assert join_pieces(["\\x14", "é", "\\x85"]) == ["\\x14", "é", "\\x85"]  # nothing to join
    cache = make_cache(p=6, b=1)
    cache.str_tokens_all[0][:] = ["<s>", "\\xe2", "\\x80", "\\x94", ' "q"', "x"]
    view = MoERouting(cache)
    assert list(view.routing.data[0].x[1:4]) == ["1 —₁", "2 —₂", "3 —₃"]
    assert view.routing.data[0].x[4] == "4 ␣&#34;q&#34;"  # plotly shows &quot; literally, &#34; as "
    assert "&quot;" not in view.tokens.value and "—₂" in view.tokens.value


def test_analysis_figures_read_tokens_as_the_widgets_do(model):
    """One token-text rule (nemo_explore/core/token_text.py): an analysis figure's axis labels read as a
    widget's tick labels, built from the same tokens; quotes plotly decodes, never ``&quot;``."""
    from nemo_explore.analysis import logit_lens

    text = "a\"<&\n\t'b"
    lens = logit_lens(model, text).figure()
    _, cache = model.run_with_cache(text, names_filter="blocks.1.attn.hook_pattern")
    axis = AttentionHeads(cache).detail.layout.xaxis
    assert list(axis.tickvals) == list(axis.ticktext)  # tokens short enough to show whole on a tick
    shown = list(lens.data[0].x)  # positions 0..p-2: the lens scores next-token targets
    assert shown == list(axis.ticktext)[: len(shown)]
    assert shown == ["0 a", "1 &#34;", "2 &lt;", "3 &amp;", "4 ↵", "5 ⇥", "6 &#39;"]
    figure = json.dumps([lens.to_plotly_json(), axis.to_plotly_json()], default=str)
    assert "&quot;" not in figure and "\\n" not in figure


def test_long_tokens_short_on_ticks_whole_on_hover():
    cache = make_cache(p=4, b=1, drop=("mamba", "moe"))
    cache.str_tokens_all[0][:] = ["<s>", " " * 40, "<script>", "abcdefghijklmnopqrstuvwxyz"]
    view = AttentionHeads(cache)
    axis = view.detail.layout.xaxis
    assert list(axis.tickvals) == list(view.detail.data[0].x)  # every category has its tick: 4 fit
    assert list(axis.ticktext) == ["0 &lt;s&gt;", "1 ␣×40", "2 &lt;script&gt;", "3 abcdefghijk…"]
    assert view.detail.data[0].x[1] == "1 " + "␣" * 40  # hover shows the whole token
    long = AttentionHeads(make_cache(p=600, b=1, drop=("mamba", "moe")))
    assert 20 < len(long.detail.layout.xaxis.tickvals) <= 460 // 11  # thinned to the plot's pixels


def test_windowed_attention_title_says_what_rows_sum_to():
    view = AttentionHeads(make_cache(p=700, b=1, drop=("mamba",)))
    assert "each row sums to 1" in view.detail.layout.title.text
    view.select(window=100)
    title = view.detail.layout.title.text
    assert "each row sums to 1" not in title and f"keys 100–{99 + W} shown" in title


def test_query_and_key_windows_are_independent():
    p = 700
    cache = make_cache(p=p, b=1, drop=("mamba",))
    pattern = cache["blocks.1.attn.hook_pattern"][0, 2].numpy()
    view = AttentionHeads(cache, head=2)
    assert view.key_slider.layout.display is None and view.key_slider.max == p - W
    view.select(window=p - W, keys=0)  # late queries against early keys
    got, above = z(view.detail.data[0]), np.arange(W)[None, :] > np.arange(p - W, p)[:, None]
    np.testing.assert_array_equal(got[~above], pattern[p - W :, :W][~above])
    assert np.isnan(got[above]).all() and not np.isnan(got[-1]).any()  # the last query sees every key
    assert view.detail.data[0].y[0].startswith(f"{p - W} ") and view.detail.data[0].x[0].startswith("0 ")
    assert f"Keys 0–{W - 1} against queries {p - W}–699" in text(view.note.value)
    assert f"keys 0–{W - 1} shown" in view.detail.layout.title.text
    view.window_slider.value = 100  # the query window carries the keys along
    assert view.key_slider.value == 100 and z(view.detail.data[0]).shape == (W, W)
    view.key_slider.value = 50
    got = z(view.detail.data[0])
    upper = np.arange(50, 50 + W)[None, :] > np.arange(100, 100 + W)[:, None]
    assert np.isnan(got[upper]).all()
    np.testing.assert_array_equal(got[~upper], pattern[100 : 100 + W, 50 : 50 + W][~upper])
    assert len(z(view.grid.data[0])) < 2 * 48  # thumbnails: the query rows' own square


def test_controls_fit_their_text(cache):
    view = AttentionHeads(cache)
    assert view.head_select.layout.width == "190px" and view.head_select.style.description_width == "40px"
    ssm = SSMStateNorms(cache, horizons={0: torch.ones(H_MAMBA), 4: torch.ones(H_MAMBA)})
    for fig in (ssm.heads, ssm.overview):  # one token axis: same width, margins, domain and colour bar
        assert (fig.layout.width, fig.layout.margin.l, fig.layout.margin.r) == (760, 90, 10)
        assert fig.layout.xaxis.domain == (0, 0.8) and fig.data[0].colorbar.x == pytest.approx(0.81)
        assert fig.layout.yaxis.automargin is False


def test_token_axes_have_margins_from_their_labels(cache):
    """Token axes draw without automargin (one plotly draw per update): the margin is the labels' room."""
    assert tick_room(["a"]) < tick_room(["abcdef"]) < tick_room(["漢字漢字漢字"])  # wide glyphs count more
    assert tick_room(["abcdefghij" * 4]) == tick_room(["abcdefghijk…"])  # ticks show at most TICK_CHARS
    assert tick_room(["abc"], start=1000) > tick_room(["abc"])  # the position is part of the label
    assert tick_room(["abcdef"], angle=90) > tick_room(["abcdef"])  # level labels beside the plot
    toks = cache.str_tokens
    attn, ssm, moe = AttentionHeads(cache), SSMStateNorms(cache), MoERouting(cache)
    margin = attn.detail.layout.margin
    assert margin.b == tick_room(toks) and margin.l == tick_room(toks, angle=90)
    for fig in (ssm.heads, ssm.overview, moe.routing):
        assert fig.layout.margin.b == tick_room(toks) and fig.layout.xaxis.automargin is False
    assert attn.detail.layout.xaxis.automargin is False and attn.detail.layout.yaxis.automargin is False


def test_explorer_status_and_multiline_prompt(model):
    ex = Explorer(model, "The cat\nsat")
    assert ex.prompt.value == "The cat\nsat" and "\n" in ex.cache.str_tokens
    ex.select_layer(4)
    assert "dense MLP" in ex.status.value and "Ran " in ex.status.value
    ex.select_layer(7)  # the MLP sentence does not stay behind
    assert "dense MLP" not in ex.status.value and "Showing block 7 (moe)" in ex.status.value


def test_cpu_kernel_advice_dropped_without_cuda():
    import logging

    from nemo_explore.checkpoints.loading import _CpuKernelAdvice, quiet_cpu_kernel_advice

    advice = "`mamba_chunk_scan_combined` is falling back to its reference PyTorch implementation because"
    record = logging.LogRecord("transformers.integrations.hub_kernels", 30, __file__, 1, advice, None, None)
    other = logging.LogRecord("transformers.integrations.hub_kernels", 30, __file__, 1, "other", None, None)
    assert _CpuKernelAdvice().filter(record) == torch.cuda.is_available()
    assert _CpuKernelAdvice().filter(other)
    quiet_cpu_kernel_advice()  # what load() does, once however often it is called
    quiet_cpu_kernel_advice()
    logger = logging.getLogger("transformers.integrations.hub_kernels")
    assert sum(isinstance(f, _CpuKernelAdvice) for f in logger.filters) == 1


def test_explorer_run_updates_views_in_place(model):
    ex = Explorer(model, TEXT)
    ex.select_layer(5)
    views, figures = dict(ex.views), [v.detail for v in ex.views.values() if hasattr(v, "detail")]
    ex.run("A new <!-- prompt")
    assert ex.views == views and list(ex.tabs.children) == list(views.values())  # the same widgets
    assert [v.detail for v in ex.views.values() if hasattr(v, "detail")] == figures
    attn = ex.views["attention"]
    assert attn.layer == 5 and len(attn.detail.data[0].x) == len(ex.cache.str_tokens)
    _, ref = model.run_with_cache("A new <!-- prompt", names_filter="blocks.5.mamba.hook_hidden_attn")
    M = ref["blocks.5.mamba.hook_hidden_attn"][0, 0].numpy()
    np.testing.assert_allclose(np.nan_to_num(z(attn.detail.data[0])), np.tril(M), rtol=1e-5, atol=1e-6)
    norms = ex.cache["blocks.5.mamba.hook_state_norm"][0].numpy()  # the SSM view followed block 5
    assert ex.views["ssm"].layer == 5
    assert ex.views["ssm"].heads.layout.title.text is None  # hidden from the start: drawn when opened
    ex.tabs.selected_index = 1
    np.testing.assert_array_equal(z(ex.views["ssm"].heads.data[0]), norms.T)


def test_views_rebind_keep_or_reset_layer(cache):
    view = AttentionHeads(cache, layer=4)
    view.rebind(make_cache(seed=1))
    assert view.layer == 4
    want = make_cache(seed=1)["blocks.4.mamba.hook_hidden_attn"][0, 0].numpy()
    np.testing.assert_array_equal(np.nan_to_num(z(view.detail.data[0])), np.tril(want))
    view.rebind(make_cache(drop=("mamba",)))  # block 4 is gone: the first attention layer
    assert view.layer == 1 and [v for _, v in view.layer_select.options] == [1]
    moe = MoERouting(cache)
    moe.rebind(make_cache(p=5, seed=2))
    assert len(moe.routing.data[0].x) == 5 and sum(moe.load.data[0].y) == 5 * K
    ssm = SSMStateNorms(cache)
    with pytest.raises(ValueError, match="horizons exactly when"):
        ssm.rebind(cache, horizons={0: torch.ones(H_MAMBA)})
    ssm.rebind(make_cache(p=5, seed=2), layer=4)
    assert ssm.layer == 4 and z(ssm.heads.data[0]).shape == (H_MAMBA, 5)


def test_a_figure_opens_with_its_data_and_layout(monkeypatch):
    """plotly's view draws the layout its model holds when it renders: the comm's first message must hold
    the layout and data, with no state update after it (a late layout once left a figure drawn empty)."""
    import comm

    from nemo_explore.widgets._plotly import Figure

    opened, sent = [], []

    class Recorder(comm.base_comm.BaseComm):
        def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            (opened if msg_type == "comm_open" else sent).append((data, buffers))

    monkeypatch.setattr(comm, "create_comm", lambda **kw: Recorder(**kw))
    fig = Figure(data=[dict(type="heatmap", z=np.eye(3))], layout=dict(width=321, title="t"))
    ((state, buffers),) = [(d["state"], b) for d, b in opened if "_widget_layout" in d["state"]]
    assert state["_widget_layout"]["width"] == 321
    assert state["_ne_uid"] == fig.model_id  # the front end finds its model by it
    assert len(state["_widget_data"]) == 1 and len(buffers) == 3  # z as three binary rows
    assert not sent, sent
    fig.layout.width = 300  # later edits still reach the page
    edits = [d["state"]["_py2js_relayout"] for d, _ in sent if d["state"].get("_py2js_relayout")]
    assert [e["relayout_data"] for e in edits] == [{"width": 300}]


def test_a_view_sends_each_figure_once_as_soon_as_it_is_computed(cache, monkeypatch):
    """A redraw sends each figure's edits in one message, in ``_figures`` order, each as soon as it is
    computed: the browser draws the first while the kernel computes the next."""
    import comm

    sent = []

    class Recorder(comm.base_comm.BaseComm):
        def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            state = (data or {}).get("state", {})  # a figure's edit (plotly then sets it back to None)
            edit = any(k.startswith("_py2js") and v is not None for k, v in state.items())
            if msg_type == "comm_msg" and (edit or "value" in state):  # or a control's, a note's value
                sent.append(self.comm_id)

    monkeypatch.setattr(comm, "create_comm", lambda **kw: Recorder(**kw))
    changes = {AttentionHeads(cache): lambda v: v.select(layer=0),
               SSMStateNorms(cache): lambda v: v.select(norm="head"),
               MoERouting(cache): lambda v: v.rebind(make_cache(seed=1))}  # fmt: skip
    for view, change in changes.items():
        figures = [f.comm.comm_id for f in view._figures()]
        del sent[:]
        change(view)
        ours = [c for c in sent if c in figures]  # (an overview of a short input is hidden, not sent)
        assert len(ours) >= 2 and ours == [c for c in figures if c in ours], type(view).__name__
    # the attention view's detail is on its way before the heads' thumbnails are computed
    view = next(iter(changes))
    seen, rows = [], view._rows

    def computing(*args, **keys):  # what had been sent when each map computation began
        seen.append(list(sent))
        return rows(*args, **keys)

    monkeypatch.setattr(view, "_rows", computing)
    del sent[:]
    view.select(layer=next(i for i in view._sources if i != view.layer))
    detail = view.detail.comm.comm_id
    assert detail not in seen[0] and detail in seen[-1], seen  # the detail's rows first, then the grid's


def test_figures_load_plotly_once_and_send_binary(cache):
    from nemo_explore.widgets._plotly import Figure, PlotlyBundle, to_js

    views = [AttentionHeads(cache), SSMStateNorms(cache), MoERouting(cache)]
    figures = [v.detail for v in views[:1]] + [views[0].grid, views[1].heads, views[2].load]
    assert all(isinstance(f, Figure) and len(f._esm) < 6000 for f in figures)  # a loader, not plotly.js
    bundles = {id(f._bundle) for f in figures}
    assert len(bundles) == 1 and isinstance(figures[0]._bundle, PlotlyBundle)  # one bundle for them all
    code = figures[0]._bundle.code
    assert len(code) > 1_000_000 and "export" in code[-3000:]
    # the front end skips plotly's delta round trips: each method's one definition returns at once
    for method in ("_sendTraceDeltas", "_sendLayoutDelta"):
        defs = [m.end() for m in re.finditer(method + r"\(\w+\)\{", code)]
        assert len(defs) == 1 and code[defs[0] : defs[0] + 7] == "return;", (method, len(defs))
    state = figures[0].get_state()
    assert state["_bundle"] == "IPY_MODEL_" + figures[0]._bundle.model_id  # a reference, not a copy
    rows = to_js({"z": np.array([[1.0, np.nan], [3.0, 4.0]])})["z"]
    assert [r["dtype"] for r in rows] == ["float32"] * 2 and bytes(rows[0]["buffer"])[:4] == b"\x00\x00\x80?"


# ------------------------------------------------------------------ views over plain arrays
def test_views_over_plain_arrays(cache):
    """Each view takes numpy arrays and token strings, no model and no cache, and shows what a cache of the
    same values shows."""
    tokens = [f"t{j}" for j in range(len(TOKENS))]
    pattern = cache["blocks.1.attn.hook_pattern"][0].numpy()  # h q k
    hidden = cache["blocks.0.mamba.hook_hidden_attn"][0].numpy()
    view = AttentionHeads.from_arrays({1: pattern, 0: hidden}, tokens, kinds={0: "mamba"}, layer=1, head=2)
    np.testing.assert_array_equal(np.nan_to_num(z(view.detail.data[0])), pattern[2])
    assert [o[1] for o in view.layer_select.options] == [0, 1] and view.detail.data[0].x[1] == "1 t1"
    view.select(layer=0)
    np.testing.assert_array_equal(np.nan_to_num(z(view.detail.data[0])), np.tril(hidden[2]))
    norms = cache["blocks.0.mamba.hook_state_norm"][0].numpy()
    ssm = SSMStateNorms.from_arrays({0: norms}, tokens)
    np.testing.assert_array_equal(z(ssm.heads.data[0]), norms.T)
    names = ("topk_indices", "topk_weights", "router_scores")
    moe = MoERouting.from_arrays({3: {n: cache[f"blocks.3.moe.hook_{n}"][0].numpy() for n in names}}, tokens)
    np.testing.assert_array_equal(z(moe.routing.data[0]), z(MoERouting(cache).routing.data[0]))
    with pytest.raises(ValueError, match=r"blocks\.0\.mamba\.hook_state_norm: shape .* not fit 3 tokens"):
        SSMStateNorms.from_arrays({0: norms}, tokens[:3])
    with pytest.raises(KeyError, match="unknown array 'weights'"):
        MoERouting.from_arrays({3: {"weights": norms}}, tokens)
    with pytest.raises(ValueError, match="kind 'moe'; this view shows attention and mamba layers"):
        AttentionHeads.from_arrays({1: pattern}, tokens, kinds={1: "moe"})


def test_experts_by_load(cache):
    """order='load' puts the busiest experts first, each row still its own expert's values."""
    view = MoERouting(cache, order="load")
    load = view.expert_load()
    rows = sorted(range(E), key=lambda k: (-int(load[k]), k))
    assert list(view.routing.data[0].y) == [f"e{k}" for k in rows]
    assert list(view.routing.layout.yaxis.categoryarray) == [f"e{k}" for k in rows]
    np.testing.assert_array_equal(z(view.routing.data[0]), view.dense_weights().T[rows].numpy())
    view.order_select.value = "index"
    assert list(view.routing.data[0].y) == [f"e{k}" for k in range(E)]
    with pytest.raises(ValueError, match="order must be 'index' or 'load'"):
        MoERouting(cache, order="size")
