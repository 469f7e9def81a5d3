"""The widgets in a real browser (JupyterLab 4 + headless Chromium): bytes sent, click-to-drawn times, heap.

    python bench/bench_widgets_browser.py                      # all three parts, JSON to stdout and --out
    python bench/bench_widgets_browser.py --parts tiny,big     # a subset: tiny, nb01, big
    python bench/bench_widgets_browser.py --parts real --reuse-freed-memory   # kernels keep freed memory
    python bench/bench_widgets_browser.py --package DIR        # the kernel imports nemo_explore from DIR
                                                               # (e.g. an older version, for a before/after)
    python bench/bench_widgets_browser.py --parts real --profiles DIR   # Chromium's CPU profile of each
                                                               # Explorer click (.cpuprofile, and a .txt of
                                                               # the functions with the most own time)

Parts (the bars of issue 15):
- ``tiny``: ``Explorer(ne.load("tiny"))``; the page's bytes for the cell, then 10 Runs with new prompts:
  click-to-drawn time, bytes and JS heap growth (after a forced GC) across the 10.
- ``nb01``: ``notebooks/01_quickstart.ipynb``, Run All: bytes the page received in total.
- ``real``: ``Explorer`` on a random model of Nemotron 3 Nano 30B-A3B's shape (52 layers, 128 experts) at
  4,096 tokens: drawn against one forward, then a click on an attention, a Mamba and an MoE block, on the
  overview (a new window of query rows) and on "by load": click-to-drawn and bytes each, kernel peak memory.
- ``long``: the same clicks on ``Explorer(ne.load("tiny"), text)`` at 32,768 tokens.
- ``big``: 2,048 tokens on a random model at the issue's size (hidden 1024, 32 attention heads, 64 Mamba
  heads, 64 experts top-6); first draw of each view (the cache exists), then layer / head / mode switches:
  click-to-drawn time and bytes each.

"Bytes" are what the page received over its kernel websockets. Times run from the input event the browser
dispatched (pointerdown, change or keydown, caught on the document) to "drawn": when the widget's DOM stopped
changing (no mutation inside a ``.ne-view`` for 300 ms), less those 300 ms. Long tasks are the page's
main-thread blocks over 50 ms (PerformanceObserver). Needs /usr/bin/chromium and the ``browser`` test stack.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "browser"))
from labserver import CHROMIUM, CHROMIUM_ARGS, Lab, code_notebook  # noqa: E402

QUIET_MS = 300
WATCH = """
window.__ne = { long: [], last: 0, input: 0 };
for (const type of ["pointerdown", "change", "keydown"]) {
  document.addEventListener(type, () => { window.__ne.input = performance.now(); }, true);
}
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__ne.long.push([e.startTime, e.duration]);
}).observe({ entryTypes: ["longtask"] });
new MutationObserver((records) => {
  for (const r of records) {
    const el = r.target.nodeType === 1 ? r.target : r.target.parentElement;
    if (el && el.closest && el.closest(".ne-view")) { window.__ne.last = performance.now(); return; }
  }
}).observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
"""
BIG = dict(
    hidden_size=1024,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=32,
    mamba_num_heads=64,
    mamba_head_dim=16,
    ssm_state_size=16,
    n_groups=2,
    chunk_size=128,
    intermediate_size=256,
    n_routed_experts=64,
    num_experts_per_tok=6,
    moe_intermediate_size=64,
    moe_shared_expert_intermediate_size=128,
)
# textContent, not innerText: the predicates run after each DOM change, and innerText lays the page out
CHANGED = "([selector, old]) => document.querySelector(selector)?.textContent !== old"
# Waits for a predicate (JS, called with one argument) to hold: tested at once and after each DOM change,
# resolving with the time it held. playwright's wait_for_function tests on every animation frame, which keeps
# Chromium making frames on the 2 cores the kernel computes on (during a Run: 30 s of them) where a user's
# page would be idle.
WAIT = """([arg, timeout]) => new Promise((resolve, reject) => {
  const predicate = %s;
  const holds = () => { try { return Boolean(predicate(arg)); } catch (e) { return false; } };
  if (holds()) return resolve(performance.now());
  const watch = new MutationObserver(() => {
    if (holds()) { watch.disconnect(); clearTimeout(timer); resolve(performance.now()); }
  });
  watch.observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
  const timer = setTimeout(() => { watch.disconnect(); reject(new Error("timed out")); }, timeout);
})"""
PROMPTS = [f"The little cat sat on the mat{' and the dog' * i} by the door." for i in range(10)]


def norms_in(scope: str) -> str:
    """A JS predicate: the status line of the widget with class ``scope`` says every state norm is in."""
    return f"() => document.querySelector('.{scope} .ne-note').textContent.includes('State norms of')"


def browser_cpu() -> float:
    """CPU seconds (user + system) spent so far by this machine's Chromium processes: what the page took
    from the 2 cores the kernel computes on."""
    import psutil

    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if (proc.info["name"] or "").startswith("chrom") and proc.info["cpu_times"] is not None:
            total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    return total


REUSE_FREED_MEMORY = False  # --reuse-freed-memory: each kernel calls ne.reuse_freed_memory() first
RUNS = 2  # --runs: new Runs of the real-shape and long Explorers, each between two plain forwards
PROFILES: Path | None = None  # --profiles DIR: Chromium's CPU profile of each Explorer click goes there


def preamble(package: str | None) -> str:
    path = f"import sys; sys.path.insert(0, {package!r})\n" if package else ""
    reuse = "import nemo_explore\nnemo_explore.reuse_freed_memory()\n" if REUSE_FREED_MEMORY else ""
    return path + reuse + "import torch\ntorch.set_num_threads(1)\n"


class Page:
    """A notebook open in Chromium, with the bytes it receives and its DOM changes watched."""

    def __init__(self, browser, url: str) -> None:
        self.frames: list[int] = []
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.page.add_init_script(WATCH)
        self.page.on("websocket", lambda ws: ws.on("framereceived", lambda f: self.frames.append(len(f))))
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)[:300]))
        self.page.on("console", lambda m: self.errors.append(m.text[:300]) if m.type == "error" else None)
        self.page.goto(url, wait_until="domcontentloaded")
        self.page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        self.page.wait_for_selector("#jp-main-statusbar >> text=Idle", timeout=120_000)
        self.cdp = self.page.context.new_cdp_session(self.page)

    def bytes(self) -> int:
        return sum(self.frames)

    def now(self) -> float:
        return self.page.evaluate("() => performance.now()")

    def settle(self, since: float, timeout: float = 300.0) -> float:
        """Wait until no widget DOM changed for QUIET_MS; the seconds from ``since`` to the last change."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now, last = self.page.evaluate("() => [performance.now(), window.__ne.last]")
            if now - last > QUIET_MS and now - since > QUIET_MS:
                return max(0.0, last - since) / 1000
            time.sleep(0.05)
        raise TimeoutError("the widgets kept changing")

    def act(self, do, *until: tuple[str, object], profile: Path | None = None) -> dict:
        """Do something; wait for each ``(predicate, arg)`` (JS) and for the widgets' DOM to settle: the
        seconds to the last change, and the bytes received. ``profile``: where to write the page's CPU
        profile of it (Chrome DevTools' .cpuprofile, and its costliest functions as text beside it)."""
        if profile is not None:
            self.cdp.send("Profiler.enable")
            self.cdp.send("Profiler.setSamplingInterval", {"interval": 200})  # µs
            self.cdp.send("Profiler.start")
        b0, n0, t0, cpu0 = self.bytes(), len(self.frames), self.now(), browser_cpu()
        do()
        # the user's input event, not when playwright was asked: its actionability checks take 0.1-0.8 s
        t0 = max(t0, self.page.evaluate("() => window.__ne.input"))
        held, cpu = [], []  # seconds from the input event until each predicate held; Chromium's CPU till then
        for predicate, arg in until:
            try:
                at = self.page.evaluate(WAIT % predicate, [arg, 180_000])
                held.append(round((at - t0) / 1000, 3))
                cpu.append(round(browser_cpu() - cpu0, 2))
            except Exception:
                shot = ROOT / "artifacts" / "bench" / "timeout.png"
                shot.parent.mkdir(parents=True, exist_ok=True)
                self.page.screenshot(path=str(shot), full_page=True)
                print("timed out waiting for", predicate, "errors:", self.errors, file=sys.stderr)
                raise
        seconds = self.settle(t0)
        time.sleep(0.2)  # frames still in flight
        if profile is not None:
            write_profile(self.cdp.send("Profiler.stop")["profile"], profile)
        largest = sorted(self.frames[n0:], reverse=True)[:6]  # which messages made up the bytes
        out = {"s": round(seconds, 3), "kB": round((self.bytes() - b0) / 1e3, 1)}
        out["largest_kB"] = [round(n / 1e3, 1) for n in largest]
        return out | ({"until_s": held, "browser_cpu_s": cpu} if until else {})

    def run_cell(self, i: int, *drawn: str) -> dict:
        """Run cell ``i`` (Shift+Enter), wait until it has an execution count and each of ``drawn`` holds."""
        prompt = self.page.locator(".jp-Notebook .jp-Cell").nth(i).locator(".jp-InputArea-prompt")
        prompt.wait_for(state="visible", timeout=60_000)  # a notebook opened beside a busy one lays out late
        prompt.click(force=True)
        self.page.keyboard.press("Escape")  # command mode: Shift+Enter runs the selected cell
        done = (
            "(i) => /\\[\\d+\\]/.test(document.querySelectorAll('.jp-Notebook .jp-Cell')[i]"
            ".querySelector('.jp-InputArea-prompt').textContent)"
        )
        until = [(done, i)] + [(d, None) for d in drawn]
        return self.act(lambda: self.page.keyboard.press("Shift+Enter"), *until)

    def run_all(self) -> None:
        self.page.click(".lm-MenuBar-itemLabel >> text=Run")
        self.page.click(".lm-Menu-itemLabel >> text=Run All Cells")

    def shoot(self, selector: str, name: str) -> None:
        """A screenshot of the first element ``selector`` matches, to artifacts/bench/``name``. The viewport
        is made as tall as the element first: JupyterLab scrolls a notebook inside its own panel, so a
        taller element's screenshot would be stitched from scrolled views of the page."""
        element = self.page.locator(selector).first
        size = self.page.viewport_size
        height = int(element.bounding_box()["height"]) + 400
        self.page.set_viewport_size({"width": size["width"], "height": max(size["height"], height)})
        try:
            element.scroll_into_view_if_needed()
            shot = ROOT / "artifacts" / "bench" / name
            shot.parent.mkdir(parents=True, exist_ok=True)
            element.screenshot(path=str(shot))
        finally:
            self.page.set_viewport_size(size)

    def heap_mb(self) -> float:
        self.cdp.send("HeapProfiler.collectGarbage")
        return self.cdp.send("Runtime.getHeapUsage")["usedSize"] / 2**20

    def longest_task_ms(self, since: float = 0.0) -> float:
        tasks = self.page.evaluate("() => window.__ne.long")
        return round(max([d for s, d in tasks if s >= since] or [0.0]), 1)


def write_profile(profile: dict, path: Path) -> None:
    """``profile`` (CDP's Profiler.Profile) to ``path`` (.cpuprofile, for DevTools' Performance panel) and
    the functions with the most samples of their own to ``path`` with .txt: ms, function, script:line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile))
    nodes = {n["id"]: n["callFrame"] for n in profile["nodes"]}
    own: dict[str, float] = {}
    for node, dt in zip(profile["samples"], profile["timeDeltas"], strict=True):
        f = nodes[node]
        where = f"{f['functionName'] or '(anonymous)'}  {f['url'].rsplit('/', 1)[-1][:40]}:{f['lineNumber']}"
        own[where] = own.get(where, 0.0) + dt / 1000
    top = sorted(own.items(), key=lambda kv: -kv[1])[:40]
    path.with_suffix(".txt").write_text("".join(f"{ms:8.1f} ms  {where}\n" for where, ms in top))


def has_text(scope: str) -> str:
    """A JS predicate: some title or note of the widget with class ``scope`` contains the argument."""
    return (
        f"(t) => [...document.querySelectorAll('.{scope} .gtitle, .{scope} .ne-note')]"
        ".some(e => e.textContent.includes(t))"
    )


def bench_tiny(browser, lab, root: Path, package: str | None) -> dict:
    code_notebook(
        root / "tiny.ipynb",
        [
            preamble(package) + "import nemo_explore as ne\nmodel = ne.load('tiny')",
            "from nemo_explore.widgets import Explorer\nex = Explorer(model)\nex.add_class('b-tiny')\nex",
        ],
    )
    page = Page(browser, lab.url("tiny.ipynb"))
    out = {"setup": page.run_cell(0)}
    out["first_draw"] = page.run_cell(
        1, "() => document.querySelectorAll('.b-tiny .js-plotly-plot .main-svg').length >= 6"
    )
    heap0, runs = page.heap_mb(), []
    box = ".b-tiny textarea, .b-tiny input[type=text]"
    since = page.now()
    for prompt in PROMPTS:
        status = page.page.locator(".b-tiny .ne-note").first.text_content()  # as CHANGED reads it
        page.page.locator(box).first.fill(prompt)
        runs.append(
            page.act(
                lambda: page.page.locator(".b-tiny button", has_text="Run").first.click(),
                (CHANGED, [".b-tiny .ne-note", status]),
            )
        )
    out["runs"] = runs
    out["run_s_max"] = max(r["s"] for r in runs)
    out["run_kB_max"] = max(r["kB"] for r in runs)
    out["heap_growth_10_runs_mb"] = round(page.heap_mb() - heap0, 1)
    out["longest_task_during_runs_ms"] = page.longest_task_ms(since)
    out["errors"] = page.errors
    page.page.close()
    return out


def bench_nb01(browser, lab, root: Path, package: str | None) -> dict:
    nb = nbformat.read(ROOT / "notebooks" / "01_quickstart.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.cells.insert(0, nbformat.v4.new_code_cell(preamble(package)))
    nb.cells.append(nbformat.v4.new_code_cell("print('NB01 DONE')"))
    nbformat.write(nb, root / "nb01.ipynb")
    page = Page(browser, lab.url("nb01.ipynb"))
    b0, t0 = page.bytes(), time.monotonic()
    page.run_all()
    page.page.wait_for_selector(".jp-OutputArea-output >> text=NB01 DONE", timeout=600_000)
    page.settle(page.now() - QUIET_MS - 1)
    time.sleep(1.0)
    out = {
        "received_MB": round((page.bytes() - b0) / 1e6, 2),
        "run_all_s": round(time.monotonic() - t0, 1),
        "longest_task_ms": page.longest_task_ms(),
        "errors": page.errors,
    }
    page.page.close()
    return out


def bench_big(browser, lab, root: Path, package: str | None) -> dict:
    setup = (
        preamble(package)
        + f"import sys\nsys.path[:0] = [{str(ROOT / 'tests' / 'browser')!r}, {str(ROOT / 'tests')!r}]\n"
        + f"""from demo_model import PATTERN, char_tokenizer
from models import random_model
import nemo_explore as ne
from nemo_explore.widgets import AttentionHeads, MoERouting, SSMStateNorms
tok = char_tokenizer()
model = ne.load(random_model(PATTERN, seed=0, vocab_size=len(tok), **{BIG!r}), tokenizer=tok)
text = ("The cat sat on the mat. " * 90)[:2048]  # a token per character
points = ("hook_pattern", "hook_hidden_attn", "hook_state_norm", "hook_router_scores", "hook_topk_indices",
          "hook_topk_weights")
_, cache = model.run_with_cache(text, names_filter=lambda n: n.endswith(points),
                                pattern_window=(1536, 2048), hidden_attn_window=(1536, 2048))
print(len(cache.str_tokens), "tokens")"""
    )
    code_notebook(
        root / "big.ipynb",
        [
            setup,
            "attn = AttentionHeads(cache)\nattn.add_class('b-attn')\nattn",
            "ssm = SSMStateNorms(cache)\nssm.add_class('b-ssm')\nssm",
            "moe = MoERouting(cache)\nmoe.add_class('b-moe')\nmoe",
        ],
    )
    page = Page(browser, lab.url("big.ipynb"))
    out = {"setup": page.run_cell(0)}
    first = {}
    for i, scope in ((1, "b-attn"), (2, "b-ssm"), (3, "b-moe")):
        first[scope] = page.run_cell(
            i, f"() => document.querySelectorAll('.{scope} .js-plotly-plot .main-svg').length >= 2"
        )
    out["first_draw"] = first
    p = page.page
    sel = lambda scope, k: p.locator(f".{scope} select").nth(k)  # noqa: E731
    switches = {
        "attn layer 1->6": (
            lambda: sel("b-attn", 0).select_option(label="6 · attention"),
            "b-attn",
            "block 6 · attention",
        ),
        "attn head 0->20": (lambda: sel("b-attn", 1).select_option(label="head 20"), "b-attn", "head 20"),
        "attn layer 6->0 (mamba)": (
            lambda: sel("b-attn", 0).select_option(label="0 · mamba (hidden attention)"),
            "b-attn",
            "block 0 · mamba",
        ),
        "attn mode signed->share": (
            lambda: p.locator(".b-attn .widget-toggle-buttons button", has_text="row Σ").click(),
            "b-attn",
            "not a softmax",
        ),
        "ssm layer 0->5": (
            lambda: sel("b-ssm", 0).select_option(label="5 · mamba"),
            "b-ssm",
            "block 5 · mamba",
        ),
        "ssm norm raw->head": (
            lambda: p.locator(".b-ssm .widget-toggle-buttons button", has_text="head's max").click(),
            "b-ssm",
            "÷ head's max)",
        ),
        "moe layer 3->7": (lambda: sel("b-moe", 0).select_option(label="7 · moe"), "b-moe", "block 7 · moe"),
        "moe weight->score": (
            lambda: p.locator(".b-moe .widget-toggle-buttons button", has_text="router score").click(),
            "b-moe",
            "router score",
        ),
    }
    since, results = page.now(), {}
    for name, (do, scope, text) in switches.items():
        results[name] = page.act(do, (has_text(scope), text))
    out["switches"] = results
    out["switch_s_max"] = max(r["s"] for r in results.values())
    out["switch_kB_max"] = max(r["kB"] for r in results.values())
    out["longest_task_during_switches_ms"] = page.longest_task_ms(since)
    out["errors"] = page.errors
    for scope in ("b-attn", "b-ssm", "b-moe"):
        page.shoot(f".{scope}", f"big_{scope}.png")
    page.page.close()
    return out


REAL_MODEL = """from bench_explorer import real_shape
model = real_shape("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B", 256)
base = "The little cat sat on the mat by the door. "
text = (base * ({tokens} // len(base) + 1))[: {tokens} - 1]"""
LONG_MODEL = """import nemo_explore as ne
model = ne.load("tiny")
torch.manual_seed(0)
text = model.tokenizer.decode(torch.randint(3, model.cfg.d_vocab, ({tokens},)))
while len(model.to_str_tokens(text)) > {tokens}:
    text = text[: int(len(text) * 0.98)]"""


def bench_real(browser, lab, root: Path, package: str | None) -> dict:
    """The Explorer on a real shape (Nemotron 3 Nano 30B-A3B's 52 layers, 128 experts, 64 Mamba heads, 32/2
    attention heads; residual width 256) at 4,096 tokens."""
    return bench_explorer_clicks(browser, lab, root, package, "real", REAL_MODEL.format(tokens=4096))


def bench_long(browser, lab, root: Path, package: str | None) -> dict:
    """The Explorer on the tiny checkpoint at 32,768 tokens (random ids, their text cut to fit)."""
    return bench_explorer_clicks(browser, lab, root, package, "long", LONG_MODEL.format(tokens=32768))


def bench_explorer_clicks(browser, lab, root: Path, package: str | None, name: str, make_model: str) -> dict:
    """``Explorer(model, text)`` with ``model`` and ``text`` made by ``make_model``: drawn against one plain
    forward (after a first Explorer of a short prompt has loaded plotly's script into the page), then a click
    on each kind of block, on the overview (a new window of query rows) and on the
    experts by load; click-to-drawn and bytes each, the kernel's peak memory, a screenshot."""
    scope = f"b-{name}"
    setup = (
        preamble(package).replace("torch.set_num_threads(1)", "torch.set_num_threads(2)")
        + f"import sys\nsys.path[:0] = [{str(ROOT / 'bench')!r}, {str(ROOT / 'tests' / 'browser')!r}, "
        f"{str(ROOT / 'tests')!r}]\nimport time\n"
        + make_model
        + """
ids, _ = model.to_inputs(text)
# the forward an Explorer's run is timed against: HF's, asking (as the Explorer does) for the last logits only
with torch.no_grad():
    model.hf_model(ids, logits_to_keep=1)  # a first forward also pays for the first touch of its memory
    t0 = time.perf_counter(); model.hf_model(ids, logits_to_keep=1); forward = time.perf_counter() - t0
print(ids.shape[1], "tokens, one forward", round(forward, 1), "s")"""
    )
    code_notebook(
        root / f"{name}.ipynb",
        [
            setup,
            # a first widget on the page: the page loads plotly's script (5.5 MB) once, whatever the length
            "from nemo_explore.widgets import Explorer\n"
            "first = Explorer(model, 'The cat sat.')\nfirst.add_class('b-first')\nfirst",
            # beside it, a button that times a plain forward in the same kernel (for the Runs, below)
            # and what each costs the kernel process: CPU in user and kernel mode, minor page faults
            "import itertools, resource\nimport ipywidgets as widgets\n"
            "def usage():\n    r = resource.getrusage(resource.RUSAGE_SELF)\n"
            "    return r.ru_utime, r.ru_stime, r.ru_minflt\n"
            "def spent(a):\n    b = usage()\n"
            "    user, sys, faults = (b[k] - a[k] for k in range(3))\n"
            "    return f'user {user:.1f} s, sys {sys:.1f} s, {faults / 1e6:.2f} M faults'\n"
            "plain, said = widgets.Button(description='plain forward'), widgets.HTML()\n"
            "count = itertools.count(1)\n"
            "plain.add_class('b-plain'); said.add_class('b-plain-said')\n"
            "def plain_forward(_):  # on the prompt in the Explorer's box: the input its Run runs\n"
            "    now, _ = model.to_inputs(ex.prompt.value)\n    with torch.no_grad():\n"
            "        a = usage(); t0 = time.perf_counter(); model.hf_model(now, logits_to_keep=1)\n"
            "        s, n = time.perf_counter() - t0, now.shape[1]\n"
            "        said.value = f'{s:.2f} s (forward {next(count)}, {n} tokens; {spent(a)})'\n"
            "plain.on_click(plain_forward)\n"
            f"ex = Explorer(model, text)\nex.add_class({scope!r})\n"
            "ran, run_said = ex._run, widgets.HTML()\nrun_said.add_class('b-run-said')\n"
            "def counted_run(text):\n    a = usage(); ran(text); run_said.value = spent(a)\n"
            "ex._run = counted_run  # the Run button's forward and drawing, counted\n"
            "widgets.VBox([widgets.HBox([plain, said, run_said]), ex])",
            *["print('peak kernel RSS MiB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)"] * 2,
        ],
    )
    page = Page(browser, lab.url(f"{name}.ipynb"))
    out = {"setup": page.run_cell(0)}
    said = page.page.locator(".jp-OutputArea-output >> text=one forward").first.inner_text()
    out["tokens"] = int(said.split()[0])
    out["forward_s"] = float(said.split("one forward")[1].split("s")[0])
    out["first_widget_on_the_page"] = page.run_cell(
        1, "() => document.querySelectorAll('.b-first .js-plotly-plot .main-svg').length >= 6"
    )
    # drawn: every figure there (until_s[1]); then the state norms come in, the status line says (until_s[2])
    out["explorer_drawn"] = page.run_cell(
        2,
        f"() => document.querySelectorAll('.{scope} .js-plotly-plot .main-svg').length >= 6",
        norms_in(scope),
    )
    out["explorer_drawn"]["status"] = page.page.locator(f".{scope} .ne-note").first.inner_text()
    p = page.page
    kinds = p.evaluate(
        f"() => [...document.querySelectorAll('.{scope} .ne-cell')]"
        ".map(c => [...c.classList].find(k => k.startsWith('ne-cell-')).slice(8))"
    )
    attn = len(kinds) - 1 - kinds[::-1].index("attention")  # the last attention block
    mambas = [i for i, k in enumerate(kinds) if k == "mamba"]
    mamba, moe = mambas[min(1, len(mambas) - 1)], kinds.index("moe")

    def cell(i: int):
        return lambda: p.locator(f".{scope} .ne-cell").nth(i).click()

    def overview():  # the attention view's overview: a click at its centre moves the detail there
        p.locator(f".{scope} .ne-view:visible .js-plotly-plot").nth(1).locator(".nsewdrag").first.click()

    def by_load():
        p.locator(f".{scope} .widget-toggle-buttons button:visible", has_text="by load").click()

    clicks = {
        f"click attention block {attn}": (cell(attn), (has_text(scope), f"block {attn} · attention")),
        f"click Mamba block {mamba}": (cell(mamba), (has_text(scope), f"block {mamba} · mamba")),
        "overview click: query rows at the middle": (overview, None),
        f"click MoE block {moe}": (cell(moe), (has_text(scope), f"block {moe} · moe")),
        "experts by load": (by_load, None),
    }
    since, results = page.now(), {}
    for k, (what, (do, until)) in enumerate(clicks.items()):
        profile = None if PROFILES is None else PROFILES / f"{name}_click{k}.cpuprofile"
        results[what] = page.act(do, *([until] if until else []), profile=profile)
        if k == 0:  # the attention view as the click left it
            page.shoot(f".{scope}", f"{name}_explorer_attention.png")
            time.sleep(1.0)  # the page's relayout after the viewport's resizes, before the next click
    out["clicks"] = results
    out["click_s_max"] = max(r["s"] for r in results.values())
    out["click_kB_max"] = max(r["kB"] for r in results.values())
    out["longest_task_during_clicks_ms"] = page.longest_task_ms(since)
    out["peak_kernel_rss_mib"] = peak_rss(page, 3)  # the Explorer drawn and clicked
    out["runs"] = new_runs(page, scope, rounds=RUNS)
    out["peak_kernel_rss_mib_after_runs"] = peak_rss(page, 4)
    out["errors"] = page.errors
    page.shoot(f".{scope}", f"{name}_explorer.png")
    page.page.close()
    return out


def peak_rss(page: Page, cell: int) -> int:
    """The kernel's peak resident memory so far (MiB), as notebook cell ``cell`` prints it."""
    page.run_cell(cell)
    output = page.page.locator(".jp-Notebook .jp-Cell").nth(cell).locator(".jp-OutputArea-output")
    return int(output.first.inner_text().split()[-1])


def new_runs(page: Page, scope: str, rounds: int) -> list[dict]:
    """``rounds`` new Runs of the Explorer (its prompt with a space added or taken off), each against the
    plain forwards of the same prompt just before and after it (the button beside the Explorer): click to
    the status line's "Ran ..." (the views drawn), and to the last state norm."""
    p = page.page

    spent = []

    def forward() -> float:
        said = p.locator(".b-plain-said").first.text_content()  # as CHANGED reads it
        act = page.act(lambda: p.locator(".b-plain").first.click(), (CHANGED, [".b-plain-said", said]))
        said = p.locator(".b-plain-said").first.inner_text()
        spent.append(f"{said.split(' (', 1)[1].rstrip(')')}; browser {act['browser_cpu_s'][0]} s")
        return float(said.split()[0])

    ran = (
        "([scope, old]) => { const t = document.querySelector('.' + scope + ' .ne-note').textContent;"
        " return t !== old && t.startsWith('Ran'); }"
    )
    box = p.locator(f".{scope} textarea").first
    forwards, runs = [], []
    for _ in range(rounds):
        status = p.locator(f".{scope} .ne-note").first.text_content()  # as `ran` reads it
        text = box.input_value()
        box.fill(text[:-1] if text.endswith(" ") else text + " ")
        forwards.append(forward())  # the new prompt (one token more or less than the last)
        click = p.locator(f".{scope} button", has_text="Run").first.click
        run = page.act(click, (ran, [scope, status]), (norms_in(scope), None))
        forwards.append(forward())
        drawn, mean = run["until_s"][0], (forwards[-2] + forwards[-1]) / 2
        runs.append(
            {"drawn_s": drawn, "norms_in_s": run["until_s"][1], "forwards_before_after_s": forwards[-2:],
             "drawn_minus_forward_s": round(drawn - mean, 2), "kB": run["kB"],
             "status": p.locator(f".{scope} .ne-note").first.inner_text(),
             "run_spent": p.locator(".b-run-said").first.inner_text(), "plain_spent": spent[-2:],
             "browser_cpu_to_drawn_s": run["browser_cpu_s"][0]}
        )  # fmt: skip
    return runs


def main() -> None:
    global REUSE_FREED_MEMORY, RUNS, PROFILES
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="tiny,nb01,big")
    ap.add_argument("--package", help="directory the kernel imports nemo_explore from (default: installed)")
    ap.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench" / "widgets_browser.json")
    ap.add_argument("--reuse-freed-memory", action="store_true", help="kernels call ne.reuse_freed_memory()")
    ap.add_argument("--runs", type=int, default=RUNS, help="new Runs of the real and long Explorers")
    ap.add_argument("--profiles", type=Path, help="write Chromium's CPU profile of each Explorer click here")
    args = ap.parse_args()
    REUSE_FREED_MEMORY, RUNS, PROFILES = args.reuse_freed_memory, args.runs, args.profiles
    from playwright.sync_api import sync_playwright

    parts = {"tiny": bench_tiny, "nb01": bench_nb01, "big": bench_big, "real": bench_real, "long": bench_long}
    results: dict = {"freed_memory": "reused" if args.reuse_freed_memory else "given back (the default)"}
    with tempfile.TemporaryDirectory() as tmp:
        root, work = Path(tmp, "root"), Path(tmp, "work")
        root.mkdir()
        work.mkdir()
        with Lab(root, work) as lab, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            for name in args.parts.split(","):
                t = time.monotonic()
                results[name] = parts[name](browser, lab, root, args.package)
                results[name]["part_s"] = round(time.monotonic() - t, 1)
                print(name, json.dumps(results[name]), flush=True)
            browser.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
