"""CorpusView in a real JupyterLab in headless Chromium: it draws, a click on the heatmap lists that unit's
contexts, token text shows as text, its static page works offline, and no JavaScript error happens.
Screenshots go to ``artifacts/browser/corpus_view*.png``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from labserver import (
    CHROMIUM,
    CHROMIUM_ARGS,
    Lab,
    assert_no_js_errors,
    code_notebook,
    open_notebook,
    open_offline,
    run_all,
    watch,
)
from test_browser import SHOTS, point_on_page, wait_title

pytestmark = pytest.mark.browser
NOTEBOOK = "corpus.ipynb"
DONE = "CORPUS CELLS DONE"
CELLS = [
    """import tempfile
from itertools import islice
import torch
torch.set_num_threads(1)
import nemo_explore as ne
from nemo_explore.corpus import collect, demo_corpus, read_documents
from nemo_explore.widgets.corpus import CorpusView
docs = ["Look: <script>alert(1)</script> & done.", *islice(read_documents(demo_corpus()), 29)]
result = collect(ne.load("tiny"), docs, out=tempfile.mkdtemp(), max_docs=30, progress=False)
result""",
    """view = CorpusView(result)
view.add_class("t-corpus")
view""",
    f"""open("corpus_static.html", "w", encoding="utf-8").write(view.to_html())
print({DONE!r})""",
]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """JupyterLab + Chromium with the notebook run (Run > Run All Cells); yields (page, events, root,
    browser), as tests/browser/test_browser.py's fixture does."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install_browser.sh (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    root, work = tmp_path_factory.mktemp("lab-root"), tmp_path_factory.mktemp("lab-work")
    code_notebook(root / NOTEBOOK, CELLS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    events = {"console": [], "pageerror": [], "requestfailed": [], "dialog": []}
    with Lab(root, work) as lab, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        watch(page, events)
        open_notebook(page, lab.url(NOTEBOOK))
        t = time.monotonic()
        run_all(page, DONE)
        page.wait_for_selector(
            ".t-corpus .js-plotly-plot .heatmaplayer image", state="attached", timeout=60_000
        )
        print(f"Run All to a drawn CorpusView: {time.monotonic() - t:.1f} s")
        try:
            yield page, events, root, browser
        finally:
            browser.close()


def contexts_head(page) -> str:
    return page.locator(".t-corpus .ne-note", has_text="Top contexts of").inner_text()


def test_view_drew(session):
    page, _, _, _ = session
    assert page.locator("[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
    view = page.locator(".t-corpus")
    assert view.locator(".js-plotly-plot").count() == 1
    wait_title(page, "t-corpus", "MoE experts: share per block and expert")
    assert view.locator(".ne-ctx").count() == 16  # top_k contexts of the selected expert
    assert view.locator(".ne-ctx .ne-centre").count() == 16
    assert "fraction of all tokens" in view.locator(".ne-note").first.inner_text()
    view.scroll_into_view_if_needed()
    view.screenshot(path=str(SHOTS / "corpus_view.png"))


def test_click_lists_the_units_contexts(session):
    page, _, _, _ = session
    page.locator(".t-corpus select").first.select_option(label="Mamba heads")
    wait_title(page, "t-corpus", "Mamba heads: mean_rate_horizon per block and head")
    plot = page.locator(".t-corpus .js-plotly-plot")
    x, y = point_on_page(plot, 5, 2)  # head 5 of the third Mamba block (blocks 0, 2, 4, 6: block 4)
    page.mouse.move(x - 4, y)
    page.mouse.move(x, y)  # plotly reports a click on a point it has hovered
    hover = page.locator(".t-corpus .hoverlayer .hovertext")
    hover.first.wait_for(timeout=30_000)
    assert "block 4 · mamba · h5" in hover.first.text_content()
    assert "mean_rate_horizon = " in hover.first.text_content()
    page.mouse.click(x, y)
    page.wait_for_selector(".t-corpus .ne-note >> text=Top contexts of block 4 · head 5", timeout=30_000)
    wait_title(page, "t-corpus", "selected: block 4 · head 5")
    assert page.locator(".t-corpus .ne-ctx").count() == 16
    page.locator(".t-corpus").screenshot(path=str(SHOTS / "corpus_view_clicked.png"))


def test_token_text_shows_as_text(session):
    page, events, _, _ = session
    page.locator(".t-corpus select").first.select_option(label="Attention heads")
    wait_title(page, "t-corpus", "Attention heads: induction")
    page.wait_for_selector(".t-corpus .ne-note >> text=Top contexts of block 3", timeout=30_000)
    page.locator(".t-corpus").screenshot(path=str(SHOTS / "corpus_view_attention.png"))
    bar = page.evaluate(
        "() => [...document.querySelectorAll('.t-corpus .colorbar text')].map(t => t.textContent)"
    )
    assert "induction" in bar and all(float(t) <= 1 for t in bar if t != "induction"), (
        bar
    )  # no log ticks left
    chips = page.evaluate("() => [...document.querySelectorAll('.t-corpus .ne-tok')].map(c => c.textContent)")
    assert chips and all("\\x" not in c for c in chips)
    # expert 0's contexts hold the document with <script> (split: "<", "sc", "ript", ">")
    page.locator(".t-corpus select").first.select_option(label="MoE experts")
    wait_title(page, "t-corpus", "MoE experts")
    # plotly reports a click on the point it hovers: the hover label first (the mouse moved again if the
    # figure was still redrawing when it came, which clears the hover)
    label = page.locator(".t-corpus .hoverlayer .hovertext", has_text="block 1 · moe · e0").first
    for attempt in range(3):
        x, y = point_on_page(page.locator(".t-corpus .js-plotly-plot"), 0, 0)
        page.mouse.move(x - 4, y)
        page.mouse.move(x, y)
        try:
            label.wait_for(timeout=10_000)
            break
        except Exception:
            if attempt == 2:
                raise
    page.mouse.click(x, y)
    page.wait_for_selector(".t-corpus .ne-note >> text=Top contexts of block 1 · expert 0", timeout=30_000)
    chips = page.locator(".t-corpus .ne-tok").all_inner_texts()
    assert "<" in chips and "sc" in chips and "ript" in chips, chips
    assert events["dialog"] == []


def test_static_page_offline(session):
    _, _, root, browser = session
    shutil.copy(root / "corpus_static.html", SHOTS / "corpus_static.html")
    static, blocked, errors = open_offline(
        browser, SHOTS / "corpus_static.html", viewport={"width": 1000, "height": 900}
    )
    static.wait_for_selector(".js-plotly-plot .heatmaplayer image", timeout=60_000)
    assert static.locator(".ne-ctx").count() == 16
    static.screenshot(path=str(SHOTS / "corpus_view_static.png"), full_page=True)
    static.close()
    assert blocked == [] and errors == [], (blocked, errors)


def test_no_js_errors(session):
    _, events, _, _ = session
    assert_no_js_errors(events)
