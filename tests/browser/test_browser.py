"""The widgets in a real JupyterLab, in headless Debian Chromium, driven as a person would (Playwright).

Run All on a generated notebook (``make_notebook.py``), then check that each widget drew (DOM), that
switching layer / head / block updates it, that hover details and token text show (a ``<script>``
token as text, never run), and that no JavaScript error or network request happened. The Explorer's
static page is opened from disk with every request outside it refused. Screenshots go to
``artifacts/browser/``. Needs /usr/bin/chromium (``scripts/install_browser.sh``).
"""

from __future__ import annotations

import re
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
from make_notebook import DONE, STOP_AT, write_notebook

pytestmark = pytest.mark.browser
SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "browser"
NOTEBOOK = "widgets.ipynb"
# plotly figures per widget (by its CSS class); the attention views hold an overview too, hidden while the
# input fits
PLOTS = {"t-attn": 3, "t-ssm": 2, "t-moe": 2, "t-explorer": 7, "t-long": 3, "t-text": 2}


def titles(page, scope: str) -> list[str]:
    """Plotly figure titles inside the widget with CSS class ``scope``."""
    return page.evaluate(f"() => [...document.querySelectorAll('.{scope} .gtitle')].map(t => t.textContent)")


def wait_title(page, scope: str, text: str, timeout: float = 60_000) -> None:
    page.wait_for_function(
        "([scope, text]) => [...document.querySelectorAll('.' + scope + ' .gtitle')]"
        ".some(t => t.textContent.includes(text))",
        arg=[scope, text],
        timeout=timeout,
    )


def point_on_page(plot, x: float, y: float) -> tuple[float, float]:
    """Page pixel coordinates of data point (x, y) on a plotly plot (its first x and y axes)."""
    plot.scroll_into_view_if_needed()
    return tuple(
        plot.evaluate(
            """(gd, [x, y]) => {
                const r = gd.getBoundingClientRect(), X = gd._fullLayout.xaxis, Y = gd._fullLayout.yaxis;
                return [r.left + X._offset + X.l2p(x), r.top + Y._offset + Y.l2p(y)];
            }""",
            [x, y],
        )
    )


def received(events) -> int:
    """Bytes the page has received over its websockets (kernel messages) so far."""
    return sum(len(f) for f in events["ws"])


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """JupyterLab + Chromium with the notebook run (Run > Run All Cells); yields (page, events, root)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install_browser.sh (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    root, work = tmp_path_factory.mktemp("lab-root"), tmp_path_factory.mktemp("lab-work")
    write_notebook(root / NOTEBOOK)
    SHOTS.mkdir(parents=True, exist_ok=True)
    events = {"console": [], "pageerror": [], "requestfailed": [], "dialog": [], "timings": {}, "ws": []}
    t0 = time.monotonic()
    with Lab(root, work) as lab, sync_playwright() as pw:
        events["timings"]["lab_start_s"] = time.monotonic() - t0
        events["lab"] = lab
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        watch(page, events)
        page.on("websocket", lambda ws: ws.on("framereceived", lambda f: events["ws"].append(f)))
        t = time.monotonic()
        open_notebook(page, lab.url(NOTEBOOK))
        events["timings"]["page_ready_s"] = time.monotonic() - t
        t = time.monotonic()
        run_all(page, DONE)
        events["timings"]["run_all_kernel_s"] = time.monotonic() - t
        page.wait_for_function(  # every figure drew (views render their figures one after another)
            "plots => Object.entries(plots).every(([scope, n]) =>"
            " document.querySelectorAll('.' + scope + ' .js-plotly-plot .main-svg').length >= n)",
            arg=PLOTS,
            timeout=60_000,
        )
        events["timings"]["run_all_drawn_s"] = time.monotonic() - t
        events["run_all_bytes"] = received(events)
        try:
            yield page, events, root, browser
        finally:
            page.screenshot(path=str(SHOTS / "notebook_viewport.png"))
            outputs = page.locator(".jp-Cell .jp-Cell-outputArea")
            for i in range(outputs.count()):
                try:
                    outputs.nth(i).scroll_into_view_if_needed(timeout=5_000)
                    outputs.nth(i).screenshot(path=str(SHOTS / f"cell{i}.png"), timeout=30_000)
                except Exception as err:  # a screenshot is a by-product: never hide the real failure
                    print(f"screenshot of cell {i} failed: {err}")
            browser.close()
    print("timings (s):", {k: round(v, 1) for k, v in events["timings"].items()})


def test_each_widget_drew(session):
    page, events, _, _ = session
    errors = page.locator("[data-mime-type='application/vnd.jupyter.stderr'], .jp-OutputArea-output >> "
                          "text=Error displaying widget")  # fmt: skip
    assert errors.count() == 0, errors.all_inner_texts()
    for scope, plots in PLOTS.items():
        assert page.locator(f".{scope} .js-plotly-plot").count() == plots, scope
        assert page.locator(f".{scope} .js-plotly-plot .heatmaplayer image").count() >= 1, scope
    # every figure drew with its own layout and traces: none rendered before its state reached the page
    empty = page.evaluate(
        """() => [...document.querySelectorAll('.ne-view .js-plotly-plot')]
            .filter(gd => !gd.layout.width || !gd.data.length)
            .map(gd => gd.closest('.ne-view').className + ' | ' + JSON.stringify(gd.layout).slice(0, 80))"""
    )
    assert not empty, empty
    assert any("block 1 · attention · head 0" in t for t in titles(page, "t-attn")), titles(page, "t-attn")
    assert page.locator(".t-attn .js-plotly-plot:visible").count() == 2  # a short input: no overview
    assert page.locator(".t-moe .ne-tok").count() > 10
    assert page.locator(".t-moe .scatterlayer .point").count() > 10  # the top-k marks
    # circuitsvis, inlined: the React component rendered children next to its <script>
    rendered = page.evaluate(
        "() => [...document.querySelectorAll(\"[id^='circuits-vis-']\")]"
        ".map(e => e.querySelectorAll('*').length)"
    )
    assert rendered and rendered[0] > 10, rendered


def test_tokens_shown_as_text_never_run(session):
    page, events, _, _ = session
    ticks = page.evaluate(
        "() => [...document.querySelectorAll('.t-attn .xtick text')].map(t => t.textContent)"
    )
    assert any("<script>" in t for t in ticks), ticks[:20]
    assert any("↵" in t for t in ticks) or any("␣" in t for t in ticks), ticks[:20]
    chips = page.locator(".t-moe .ne-tok").all_inner_texts()
    assert "<script>" in chips and "</script>" in chips and "␣" in chips and "↵" in chips, chips
    assert events["dialog"] == []


def test_hover_details(session):
    page, _, _, _ = session
    detail = page.locator(".t-attn .js-plotly-plot").last.locator(".nsewdrag").first  # the detail
    detail.scroll_into_view_if_needed()
    box = detail.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.8)
    page.wait_for_selector(".t-attn .hoverlayer .hovertext", timeout=30_000)
    text = page.locator(".t-attn .hoverlayer .hovertext").first.text_content()
    assert "query" in text and "key" in text and "p =" in text, text


def test_switching_layer_and_head_redraws(session):
    page, _, _, _ = session
    page.locator(".t-attn select").first.select_option(label="0 · mamba (hidden attention)")
    wait_title(page, "t-attn", "block 0 · mamba · head 0: hidden attention M (signed")
    # 8 heads in 4 columns of 48-cell tiles with 6-cell gaps: the middle of head 1's tile is (78, 24)
    x, y = point_on_page(page.locator(".t-attn .js-plotly-plot").first, 78, 24)
    page.mouse.move(x - 5, y)
    page.mouse.move(x, y)  # plotly reports a click on a point it has hovered
    page.wait_for_selector(".t-attn .hoverlayer .hovertext >> text=head 1", timeout=30_000)
    page.mouse.click(x, y)
    wait_title(page, "t-attn", "block 0 · mamba · head 1")
    page.locator(".t-attn .widget-toggle-buttons button", has_text="row Σ").click()
    wait_title(page, "t-attn", "|M| ÷ row Σ|M| (not a softmax)")

    page.locator(".t-ssm select").first.select_option(label="5 · mamba")
    wait_title(page, "t-ssm", "block 5 · mamba: state norm")
    page.locator(".t-moe select").first.select_option(label="7 · moe")
    wait_title(page, "t-moe", "block 7 · moe: routing weight")
    page.locator(".t-moe .widget-toggle-buttons button", has_text="router score").click()
    wait_title(page, "t-moe", "block 7 · moe: router score")


def test_explorer_links_layer_map_to_views(session):
    page, _, _, _ = session
    current = ".t-explorer .lm-TabBar-tab.lm-mod-current"
    page.locator(".t-explorer button.ne-cell", has_text=re.compile(r"^7$")).click()
    page.wait_for_selector(f"{current} >> text=MoE routing", timeout=30_000)
    wait_title(page, "t-explorer", "block 7 · moe")
    page.locator(".t-explorer button.ne-cell", has_text=re.compile(r"^5$")).click()
    page.wait_for_selector(f"{current} >> text=Attention heads", timeout=30_000)
    wait_title(page, "t-explorer", "block 5 · mamba · head 0")
    # the state-norm view, in a hidden tab, draws block 5 when its tab is opened (not before)
    ssm_title = "block 5 · mamba: state norm"
    titles = "() => [...document.querySelectorAll('.t-explorer .gtitle')].map(t => t.textContent)"
    assert not any(ssm_title in t for t in page.evaluate(titles))
    page.locator(".t-explorer .lm-TabBar-tab", has_text="Mamba state norms").click()
    wait_title(page, "t-explorer", ssm_title)
    page.locator(".t-explorer .widget-tab").first.screenshot(path=str(SHOTS / "explorer_ssm_tab.png"))
    page.locator(".t-explorer .lm-TabBar-tab", has_text="Attention heads").click()
    prompt = "A new prompt <!-- here"
    page.locator(".t-explorer textarea").fill(prompt)
    page.locator(".t-explorer button", has_text="Run").click()
    n = len(prompt) - len("<!--") + 1  # a token per character; "<!--" is one token (demo_model.WORDS)
    page.wait_for_selector(f".t-explorer >> text=Ran {n} tokens", timeout=60_000)
    wait_title(page, "t-explorer", "block 5 · mamba · head 0")  # the chosen block survives a new run


def test_plotly_js_reaches_the_page_once(session):
    page, events, _, _ = session
    big = [len(f) for f in events["ws"] if len(f) > 3e6]
    assert len(big) == 1, big  # 14 figures, one plotly bundle (plotly's FigureWidget: one per figure)
    assert page.evaluate("() => globalThis.__nemo_explore_plotly_bundle__ instanceof Promise")
    assert events["run_all_bytes"] < 12e6, events["run_all_bytes"]  # plotly's FigureWidget: ~5 MB a figure
    print(f"Run All received {events['run_all_bytes'] / 1e6:.1f} MB")


def test_new_prompt_updates_figures_in_place(session):
    page, events, _, _ = session
    marked = page.evaluate(
        "() => [...document.querySelectorAll('.t-explorer .js-plotly-plot')]"
        ".map((p, i) => (p.dataset.mark = i))"
    )
    before, prompt = received(events), 'The "cat"\nsat'
    page.locator(".t-explorer textarea").fill(prompt)
    t = time.monotonic()
    page.locator(".t-explorer button", has_text="Run").click()
    n = len(prompt)  # a token per character
    page.wait_for_selector(f".t-explorer >> text=Ran {n} tokens", timeout=60_000)
    wait_title(page, "t-explorer", "block")
    # the state norms, computed in the kernel's idle time after the draw, come in and the status says so
    page.wait_for_selector(r".t-explorer >> text=/State norms of 3 Mamba layers computed in/", timeout=30_000)
    titles = page.evaluate(
        "() => [...document.querySelectorAll('.t-explorer .gtitle')].map(t => t.textContent)"
    )
    assert not any("so far" in t for t in titles), titles  # an overview drawn whole once they are in
    seconds, sent = time.monotonic() - t, received(events) - before
    kept = page.evaluate(
        "() => [...document.querySelectorAll('.t-explorer .js-plotly-plot')].map(p => p.dataset.mark)"
    )
    assert kept == [str(m) for m in marked], kept  # the same plot elements, redrawn
    ticks = page.evaluate(
        "() => [...document.querySelectorAll('.t-explorer .xtick text')].map(t => t.textContent)"
    )
    assert any("↵" in t for t in ticks) and any('"' in t for t in ticks), ticks  # newline kept, no &quot;
    assert sent < 1e6, sent
    print(f"Explorer Run: {seconds:.2f} s, {sent / 1e3:.0f} kB received")


def test_token_text_rule_in_the_browser(session):
    page, _, _, _ = session
    folded = page.locator(".t-text details").first  # more than 128 tokens: the chips are one line, folded
    assert folded.count() == 1 and page.locator(".t-text .ne-tok").first.inner_text() == ""
    folded.locator("summary").click()  # unfolded by a click
    chips = page.locator(".t-text .ne-tok").all_inner_texts()
    assert chips[1:5] == ["—₁", "—₂", "—₃", '␣"q"'], chips[:6]
    labels = page.evaluate(
        "() => [...document.querySelectorAll('.t-text .xtick text')].map(t => t.textContent)"
    )
    assert all("&quot;" not in t and "&#34;" not in t and "\\x" not in t for t in labels), labels[:8]
    widths = page.evaluate(
        "() => [...document.querySelectorAll('.t-text .xtick text')].map(t => t.getBBox().width)"
    )
    assert "10 ␣×40" in labels and max(widths) < 120, (labels[:3], max(widths))  # not a 300 px label
    # chips wrap inside the output: none runs off the right edge
    overflow = page.evaluate(
        """() => { const box = document.querySelector('.t-text .ne-toks').getBoundingClientRect();
            return [...document.querySelectorAll('.t-text .ne-tok')]
              .filter(c => c.getBoundingClientRect().right > box.right + 1).length; }"""
    )
    assert overflow == 0, overflow


def test_controls_and_axes_fit(session):
    page, _, _, _ = session
    fits = page.evaluate(
        """() => { const s = document.querySelectorAll('.t-attn select')[1];
            const c = document.createElement('canvas').getContext('2d');
            c.font = getComputedStyle(s).font;
            return [s.clientWidth, c.measureText('head 40').width]; }"""
    )
    assert fits[0] >= fits[1] + 24, fits  # the text and the arrow fit
    axes = """() => [...document.querySelectorAll('.t-ssm .js-plotly-plot')]
        .map(gd => [gd.getBoundingClientRect().left + gd._fullLayout.xaxis._offset,
                    gd._fullLayout.xaxis._length])"""
    # The two figures redraw one after the other after a layer switch: wait until both have settled.
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            f"""() => {{ const a = ({axes})(), near = (u, v) => Math.abs(u - v) < 1;
                return a.length == 2 && near(a[0][0], a[1][0]) && near(a[0][1], a[1][1]); }}""",
            timeout=10_000,
        )
    except PlaywrightTimeout:
        layouts = page.evaluate(
            """() => [...document.querySelectorAll('.t-ssm .js-plotly-plot')].map(gd => JSON.stringify([
                gd.layout.width, gd.layout.margin, gd.layout.xaxis && gd.layout.xaxis.domain,
                gd._fullLayout.width, gd._fullLayout.margin, gd._fullLayout.xaxis.domain]))"""
        )
        raise AssertionError(f"SSM token axes never lined up: {page.evaluate(axes)}; {layouts}") from None


def test_tick_labels_inside_their_figures(session):
    """Token axes have margins set from their labels (automargin off, so plotly draws once per update):
    every tick label, long, wide-glyph or turned, lies inside its figure."""
    page, _, _, _ = session
    out = page.evaluate(
        """() => [...document.querySelectorAll('.ne-view .js-plotly-plot')].flatMap(gd => {
            const box = gd.querySelector('.main-svg').getBoundingClientRect();
            return [...gd.querySelectorAll('.xtick text, .ytick text')]
              .map(t => [t, t.getBoundingClientRect()])
              .filter(([t, r]) => r.width && (r.left < box.left - 1 || r.bottom > box.bottom + 1))
              .map(([t, r]) => gd.closest('.ne-view').className + ': ' + t.textContent); })"""
    )
    assert not out, out[:10]
    assert page.locator(".t-text .xtick text", has_text="漢字漢字").count() == 1


def test_explorer_status_follows_the_block(session):
    page, _, _, _ = session
    page.locator(".t-explorer button.ne-cell", has_text=re.compile(r"^4$")).click()
    page.wait_for_selector(".t-explorer >> text=dense MLP", timeout=30_000)
    page.locator(".t-explorer button.ne-cell", has_text=re.compile(r"^7$")).click()
    page.wait_for_selector(".t-explorer >> text=Showing block 7 (moe)", timeout=30_000)
    assert page.locator(".t-explorer >> text=dense MLP").count() == 0


def test_long_input_is_windowed(session):
    page, _, _, _ = session
    warning = page.locator(".t-long .ne-warn").inner_text()
    assert warning.startswith("Long input: showing positions 0–255 of 0–599"), warning
    assert page.locator(".t-long .widget-slider").count() == 2  # query rows, key columns
    plots = page.locator(".t-long .js-plotly-plot")
    assert plots.count() == 3  # head thumbnails, the whole map's overview, the detail
    ticks = plots.nth(2).locator(".ytick")
    assert 0 < ticks.count() <= 256
    assert any("all 600 queries × 600 keys" in t for t in titles(page, "t-long"))
    # a click on the overview at a late query and an early key moves the detail there
    x, y = point_on_page(plots.nth(1), 20, 590)
    page.mouse.click(x, y)
    wait_title(page, "t-long", "keys 0–255 shown")
    page.wait_for_selector(".t-long .ne-warn >> text=Keys 0–255 against queries 344–599", timeout=30_000)
    plots.nth(1).screenshot(path=str(SHOTS / "long_overview.png"))


def test_saved_notebook_shows_the_widgets_without_their_kernel(session):
    page, events, root, browser = session
    page.locator(".jp-Cell .jp-InputPrompt").first.click()
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 30
    while "application/vnd.jupyter.widget-state+json" not in (root / NOTEBOOK).read_text():
        assert time.monotonic() < deadline, "the notebook was saved without its widget state"
        time.sleep(0.5)
    shutil.copy(root / NOTEBOOK, root / "reopened.ipynb")  # no kernel has seen this one
    reopened = browser.new_page(viewport={"width": 1300, "height": 1000})
    errors = []
    reopened.on("console", lambda m: errors.append(m.text) if "model not found" in m.text else None)
    # a workspace of its own: the default one would open widgets.ipynb next to it, live from its kernel
    reopened.goto(events["lab"].url("reopened.ipynb", app="lab/workspaces/reopened/tree"))
    try:
        for scope in ("t-attn", "t-ssm", "t-moe", "t-long"):
            plot = f".{scope} .js-plotly-plot .main-svg"
            reopened.wait_for_selector(plot, state="attached", timeout=60_000)
        reopened.wait_for_function(  # drawn from the saved state: the thumbnails and the detail
            "() => document.querySelectorAll('.t-attn .js-plotly-plot .heatmaplayer image').length >= 2",
            timeout=60_000,
        )
    finally:
        reopened.screenshot(path=str(SHOTS / "reopened.png"))
    assert reopened.locator(".jp-NotebookPanel").count() == 1
    assert reopened.locator(".jp-OutputArea-output", has_text="model not found").count() == 0 and not errors
    reopened.close()


# Holds the page's main thread for 2.5 s when the next figure's front-end code (a small text naming plotly's
# _py2js_ messages) becomes a Blob: anywidget makes it just after starting that model's 2 s start-up timer.
HOLD_NEXT_FIGURE = """() => {
    const Original = window.Blob;
    window.Blob = class extends Original {
        constructor(parts, options) {
            super(parts, options);
            const text = parts && parts.length === 1 && typeof parts[0] === "string" ? parts[0] : "";
            if (!window.__held && text.length < 20000 && text.includes("_py2js_")) {
                window.__held = true;
                const t = performance.now();
                while (performance.now() - t < 2500);
            }
        }
    };
}"""


def notebook_alone(events, root, browser, name: str, cells: list[str]):
    """A notebook of ``cells`` opened in a browser context (its own renderer: held busy, it stalls no other
    page) and a workspace of its own (no other notebook restored next to it): ``(context, page)``."""
    code_notebook(root / f"{name}.ipynb", cells)
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    page = context.new_page()
    open_notebook(page, events["lab"].url(f"{name}.ipynb", app=f"lab/workspaces/{name}/tree"))
    return context, page


def test_a_figure_keeps_its_edits_when_the_page_is_busy(session):
    """anywidget drops every message to a model whose front end took over 2 s to start. A figure whose
    front-end code loads while the page is held busy 2.5 s still gets its trace (sent after it opened) and
    a later edit."""
    _, events, root, browser = session
    context, page = notebook_alone(events, root, browser, "busy", [
        "from nemo_explore.widgets._plotly import Figure",
        "fig = Figure(layout=dict(width=320, height=240))\nfig.add_heatmap(z=[[1, 2], [3, 4]])\nfig",
        "fig.layout.title = 'edited later'\nprint('BUSY DONE')",
    ])  # fmt: skip
    try:
        page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-InputArea-prompt").click(force=True)
        page.keyboard.press("Escape")
        page.keyboard.press("Shift+Enter")  # the first cell: plotly.js reaches the page
        page.wait_for_function(
            "() => globalThis.__nemo_explore_plotly_bundle__?.then(() => true)", timeout=60_000
        )
        page.evaluate(HOLD_NEXT_FIGURE)
        run_all(page, "BUSY DONE")
        page.wait_for_function(
            """() => { const gd = document.querySelector('.js-plotly-plot');  // the page's one figure
                return gd && gd.data.length === 1 && gd._fullLayout.title.text === 'edited later'; }""",
            timeout=30_000,
        )
        # the page was held while the figure started (anywidget logs "Failed to initialize model" for it)
        assert page.evaluate("() => window.__held") is True
    finally:
        page.screenshot(path=str(SHOTS / "busy.png"))
        context.close()


def test_figures_made_with_the_first_import_draw_each_trace_once(session):
    """Figures made, edited and shown in the cell that first imports the widgets: their edits reach the page
    while plotly.js is still loading, and are kept for it. Showing a figure re-sends it whole (its data and
    layout, edits included): the edits kept before that are dropped, not applied twice."""
    _, events, root, browser = session
    context, page = notebook_alone(events, root, browser, "first", [
        "from nemo_explore.widgets._plotly import Figure\n"
        "figs = [Figure(layout=dict(width=300, height=200)) for _ in range(3)]\n"
        "for f in figs:\n    f.add_heatmap(z=[[1, 2], [3, 4]])\n    f.layout.title = 'edited'\n"
        "display(*figs)\nprint('FIRST DONE')"
    ])  # fmt: skip
    try:
        run_all(page, "FIRST DONE")
        images = "() => document.querySelectorAll('.js-plotly-plot .heatmaplayer image').length >= 3"
        page.wait_for_function(images, timeout=60_000)
        drawn = page.evaluate(
            """() => [...document.querySelectorAll('.js-plotly-plot')]
                .map(gd => [gd.data.length, gd._fullLayout.title.text])"""
        )
        assert drawn == [[1, "edited"]] * 3, drawn
    finally:
        page.screenshot(path=str(SHOTS / "first_import.png"))
        context.close()


def test_widgets_draw_in_notebook_7(session):
    _, events, root, browser = session
    code_notebook(root / "nb7.ipynb", [
        "import nemo_explore as ne\nfrom nemo_explore.widgets import Explorer\n"
        "ex = Explorer(ne.load('tiny'))\nex.add_class('t-nb7')\nex"
    ])  # fmt: skip
    nb7 = browser.new_page(viewport={"width": 1300, "height": 1000})
    nb7.goto(events["lab"].url("nb7.ipynb", app="notebooks"))
    nb7.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    nb7.wait_for_selector("text=Python 3 (ipykernel)", timeout=60_000)  # Notebook 7's kernel name: ready
    nb7.click(".lm-MenuBar-itemLabel >> text=Run")
    nb7.click(".lm-Menu-itemLabel >> text=Run All Cells")
    nb7.wait_for_selector(r".t-nb7 >> text=/Ran \d+ tokens/", timeout=120_000)
    nb7.wait_for_function(
        "() => document.querySelectorAll('.t-nb7 .js-plotly-plot .heatmaplayer image').length >= 2",
        timeout=60_000,
    )
    nb7.screenshot(path=str(SHOTS / "notebook7.png"))
    nb7.close()


def test_an_interrupted_run_hides_the_views_until_the_next(session):
    page, _, _, _ = session
    tabs = page.locator(".t-explorer .widget-tab").first
    assert tabs.is_visible()
    page.locator(".t-explorer textarea").fill("x" * STOP_AT)  # a token each: the notebook's hook stops it
    page.locator(".t-explorer button", has_text="Run").click()
    page.wait_for_selector(".t-explorer >> text=press Run to see the views again", timeout=60_000)
    assert "Interrupted" in page.locator(".t-explorer .ne-warn").first.inner_text()
    page.wait_for_function("e => e.offsetParent === null", arg=tabs.element_handle(), timeout=10_000)
    page.locator(".t-explorer").first.screenshot(path=str(SHOTS / "explorer_interrupted.png"))
    page.locator(".t-explorer textarea").fill("The cat sat")
    page.locator(".t-explorer button", has_text="Run").click()
    page.wait_for_selector(".t-explorer >> text=Ran 11 tokens", timeout=60_000)
    wait_title(page, "t-explorer", "block")
    assert tabs.is_visible()


def test_static_page_offline(session):
    _, _, root, browser = session
    shutil.copy(root / "explorer_static.html", SHOTS / "explorer_static.html")
    static, blocked, errors = open_offline(browser, SHOTS / "explorer_static.html")
    static.wait_for_selector(".js-plotly-plot .heatmaplayer image", timeout=60_000)
    assert static.locator(".js-plotly-plot").count() == 6
    assert "<script>" in static.locator(".ne-toks").first.inner_text()
    static.screenshot(path=str(SHOTS / "explorer_static.png"), full_page=True)
    static.close()
    assert blocked == [] and errors == [], (blocked, errors)


def test_no_js_errors(session):
    _, events, _, _ = session
    assert_no_js_errors(events)
