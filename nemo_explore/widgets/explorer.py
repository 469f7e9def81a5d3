"""Explorer: a model and a prompt -> the hybrid layer map and the three views, linked.

It runs ``model.run_with_cache`` once per prompt, caching only per-token points (O(p) per layer): what
the views show per token, and what the p × p maps are made of (an attention layer's q and k, a Mamba
layer's dt, B and C), from which ``nemo_explore.pairwise`` computes exactly the rows and the pooled
overview a view draws. An h × p × p map per layer would not fit in memory for a large model at long inputs,
and a click never runs the model. The Mamba state norms are computed after the forward from the layer's x,
dt and B (``nemo_explore.state_norms``): the shown block's before the views are drawn, the others in the
kernel's idle time, so the views appear one forward after Run; x is then let go. Clicking a block on the
map opens its view; a new prompt re-runs the model and updates the same views in place (the browser gets
only the new data, never new figures), keeping the chosen layers. A new run lets go of the previous one's
points before its forward, so the kernel holds one run's points at a time, not two. After
``ne.reuse_freed_memory()`` a run copies its points into blocks of their own (``run_with_cache(pack=True)``),
which the next run's blocks take over in place: without them the first Run after the clicks grew the heap by
1.6 GiB at 4k tokens on a real shape (0.42 M page faults), its freed holes split by small blocks made since.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator

import ipywidgets as widgets
import torch

from ..analysis._style import LAYER_COLORS
from ..checkpoints.describe import MemoryWarning
from ..core.allocator import reusing_freed_memory
from ..core.formatting import format_bytes
from ..core.layer_types import PATTERN_CHAR
from ..core.token_text import escape
from ..mirror import hf_layout
from ..pairwise import PER_TOKEN
from ..state_norms import FROM_POINTS
from ._base import STYLE, made_parked
from ._static import Page
from .attention import AttentionHeads
from .moe import MoERouting
from .ssm import SSMStateNorms

# What a run caches: what the views show per token, and what the p × p maps are computed from.
POINTS = tuple(
    dict.fromkeys(
        (
            *FROM_POINTS,  # the state norms are computed from these after the forward
            "moe.hook_router_scores",
            "moe.hook_topk_indices",
            "moe.hook_topk_weights",
            *PER_TOKEN["attention"],
            *PER_TOKEN["mamba"],
        )
    )
)
NO_RUN = "the last run failed and the one before it was let go: run a prompt first (explorer.run(text))"
TABS = {"attention": "Attention heads", "ssm": "Mamba state norms", "moe": "MoE routing"}
PROGRESS_AFTER_S, PROGRESS_EVERY_S = 0.5, 0.2  # a forward this long shows its block in the status line
# A sentence said twice: on the tiny checkpoint the attention layer copies the second half (its induction head
# lights up in the attention view), while the Mamba and MoE views show the same tokens through other eyes.
DEFAULT_PROMPT = "The little cat sat on the mat by the door. The little cat sat on the mat by the door."


class Explorer(widgets.VBox):
    """The hybrid layer map (a coloured cell per block, by type), a prompt box, and the attention, Mamba
    and MoE views of the prompt, linked: click a block to see its view.

    ``model``: a ``HookedNemotronH`` (``nemo_explore.load(...)``) with a tokenizer; ``text``: the prompt
    (default: a sentence said twice, which the tiny checkpoint copies).
    ``views`` maps ``'attention'``/``'ssm'``/``'moe'`` to the views of the last run (those in hidden tabs
    draw what a Run or a click changed when their tab is opened); ``cache`` is its cache
    (with every state norm: reading it finishes those still pending). On a Linux CPU, call
    ``nemo_explore.reuse_freed_memory()`` first: a large model's forwards then take about half the time.
    """

    def __init__(self, model, text: str = DEFAULT_PROMPT) -> None:
        super().__init__(layout=widgets.Layout(width="100%"))
        self.add_class("ne-view")
        for need in ("run_with_cache", "layer_types", "to_str_tokens"):
            if not hasattr(model, need):
                raise TypeError(
                    f"Explorer takes a nemo_explore model (nemo_explore.load(...)); {type(model).__name__} "
                    f"has no {need}"
                )
        self.model = model
        self.layer_types: list[str] = list(model.layer_types)
        self._cache = None
        self.views: dict[str, widgets.Widget] = {}
        self.selected: int | None = None
        # the status line: the last run, its state norms, the selected block
        self._ran, self._norms_note, self._selected_note = "", "", "Click a block above to see its view."

        self.cells = []
        for i, kind in enumerate(self.layer_types):
            cell = widgets.Button(
                description=f"{i}",
                tooltip=f"block {i}: {kind}",
                layout=widgets.Layout(width="38px", height="28px", padding="0", margin="1px"),
                style=dict(button_color=LAYER_COLORS[kind], text_color="white", font_weight="bold"),
            )
            cell.add_class("ne-cell")
            cell.add_class(f"ne-cell-{kind}")
            cell.on_click(lambda _, i=i: self.select_layer(i))
            self.cells.append(cell)
        self.layer_map = widgets.HBox(self.cells, layout=widgets.Layout(flex_flow="row wrap"))
        self.legend = widgets.HTML(self._legend_html())
        self.prompt = widgets.Textarea(
            value=text, description="prompt", rows=3, layout=widgets.Layout(width="70%")
        )  # several lines: a prompt's newlines are kept
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.run_button.on_click(lambda _: self.run())
        self.status = widgets.HTML()
        self.tabs = widgets.Tab()
        self.tabs.observe(lambda _: self._park_hidden(), names="selected_index")
        self.children = [
            widgets.HTML(STYLE),
            self.legend,
            self.layer_map,
            widgets.HBox([self.prompt, self.run_button]),
            self.status,
            self.tabs,
        ]
        self.run(text, raise_errors=True)

    # -------------------------------------------------------------- running
    def run(self, text: str | None = None, raise_errors: bool = False) -> None:
        """Run the model on ``text`` (default: the prompt box) and redraw every view."""
        if text is not None:
            self.prompt.value = text
        try:
            self._run(self.prompt.value)
        except KeyboardInterrupt:  # the kernel was interrupted (■)
            if raise_errors:
                raise
            self._say_failed("<b>Interrupted</b>")
        except Exception as err:  # shown in the widget: a button callback has nowhere else to report
            if raise_errors:
                raise
            self._say_failed(f"<b>{type(err).__name__}</b>: {escape(str(err))}")

    def _say_failed(self, what: str) -> None:
        """The status line after a run that failed; if the previous run's points were let go, the views are
        hidden until a run succeeds (a click there would have nothing to compute from)."""
        if self._cache is not None:  # it failed before the forward (e.g. an empty prompt)
            self.status.value = (
                f'<div class="ne-warn">{what}. The views still show the previous prompt.</div>'
            )
            return
        self.tabs.layout.display = "none"
        self.status.value = (
            f'<div class="ne-warn">{what}. The previous prompt\'s points were let go when this run began '
            "(the Explorer holds one run's at a time): press Run to see the views again.</div>"
        )

    def _let_go(self) -> None:
        """Before a new forward: drop this Explorer's and its views' references to the last run's points,
        so that they are freed (unless the caller kept ``cache``) before the new ones are made."""
        if self._cache is None:
            return
        self._cache = None
        for view in self.views.values():
            view._release()

    def _run(self, text: str) -> None:
        if not isinstance(text, str) or not text:
            raise ValueError("Explorer needs a non-empty prompt (a string)")
        t0 = time.perf_counter()
        n = len(self.model.to_str_tokens(text))
        self._let_go()
        with torch.no_grad(), self._progress(n, "running"), warnings.catch_warnings():
            # what the run keeps is said in the status line, with its size, not in a warning
            warnings.simplefilter("ignore", MemoryWarning)
            wanted = [n for n in self.model.hook_names() if n.endswith(POINTS)] or ["hook_embed"]
            _, cache = self.model.run_with_cache(
                text, names_filter=wanted, return_type=None, pack=reusing_freed_memory()
            )
        ran = time.perf_counter() - t0
        wanted = {
            "attention": bool(cache.layers("attention") or cache.layers("mamba")),
            "ssm": bool(cache.layers("mamba")),
            "moe": bool(cache.layers("moe")),
        }
        horizons = self._horizons(cache) if wanted["ssm"] else None
        keys = [key for key in TABS if wanted[key]]
        shown = keys[min(self.tabs.selected_index or 0, len(keys) - 1)]
        views = {}
        for key, make in (("attention", AttentionHeads), ("ssm", SSMStateNorms), ("moe", MoERouting)):
            if not wanted[key]:
                continue
            extra = {"horizons": horizons} if key == "ssm" else {}
            view = self.views.get(key)
            if view is not None and (key != "ssm" or bool(horizons) == bool(view._horizons)):
                view.rebind(cache, **extra)  # in place: the browser gets only the new data
            else:  # a view for a hidden tab draws when its tab is first opened
                with made_parked() if key != shown else contextlib.nullcontext():
                    view = make(cache, **extra)
                if key == "ssm":
                    view.observe(self._on_norms, names="norms_pending")
            views[key] = view
        self._cache, self.views = cache, views
        self.tabs.layout.display = None
        if list(self.tabs.children) != list(views.values()):
            self.tabs.children = list(views.values())
            for k, key in enumerate(views):
                self.tabs.set_title(k, TABS[key])
        self._park_hidden()
        self._ran = f"Ran {n} tokens in {ran:.2f} s, drawn in {time.perf_counter() - t0 - ran:.2f} s"
        if self.selected is not None:
            self.select_layer(self.selected)
        self._on_norms()

    @property
    def cache(self):
        """The last run's cache, every Mamba state norm in it (those still pending are computed now); None
        after a run that failed once the previous run's points were let go."""
        ssm = self.views.get("ssm")
        if ssm is not None and ssm.norms_pending:
            ssm.finish_norms()
        return self._cache

    def _on_norms(self, change=None) -> None:
        """The status line, as the state norms come in; when all are in, x is let go (only the norms were
        made of it), so the cache holds its per-token points compactly."""
        ssm = self.views.get("ssm")
        if self._cache is None or (
            change is not None and (change["owner"] is not ssm or ssm.cache is not self._cache)
        ):
            return  # no run to show, a view of an earlier run, or one being rebound (_run says when)
        pending = ssm.norms_pending if ssm is not None else 0
        xs = [n for n in self._cache if n.endswith(".mamba.hook_x")]
        if ssm is not None and not pending and xs:
            self._cache._discard(xs)
        self._norms_note = ""
        if ssm is not None:
            total = len(ssm._sources)
            self._norms_note = (
                f"State norms: {total - pending} of {total} Mamba layers so far, the rest in the kernel's "
                "idle time."
                if pending
                else f"State norms of {total} Mamba layers computed in {ssm.norms_seconds:.2f} s."
            )
        self._show_status()

    def _show_status(self) -> None:
        """The status line: the last run, its state norms, then what the selected block shows."""
        held = f"{self._ran}; {format_bytes(self._cache.nbytes)} of per-token points held."
        text = " ".join(p for p in (held, self._norms_note, self._selected_note) if p)
        self.status.value = f'<div class="ne-note">{text}</div>'

    @contextlib.contextmanager
    def _progress(self, n: int, what: str) -> Iterator[None]:
        """While the model runs: the status line names the block it has reached (from ``PROGRESS_AFTER_S``
        on, at most every ``PROGRESS_EVERY_S``), and how to stop it."""
        t0 = last = time.perf_counter()
        blocks = len(self.layer_types)

        def tick(_, hook) -> None:
            nonlocal last
            now = time.perf_counter()
            if now - t0 >= PROGRESS_AFTER_S and now - last >= PROGRESS_EVERY_S:
                last = now
                self.status.value = (
                    f'<div class="ne-note">{escape(what)} ({n} tokens): block {hook.layer() + 1} of '
                    f"{blocks}, {now - t0:.1f} s. Interrupt the kernel (■) to stop.</div>"
                )

        with self.model.hooks([(lambda name: name.endswith(".hook_resid_post"), tick)]):
            yield

    def _horizons(self, cache) -> dict[int, torch.Tensor] | None:
        """Each Mamba head's mean memory horizon (tokens), from hook_dt and the layer's A, when available."""
        hf = getattr(self.model, "hf_model", None)
        if hf is None:
            return None
        from ..analysis import mean_memory_horizon

        out = {}
        for i in cache.layers("mamba"):
            name = f"blocks.{i}.mamba.hook_dt"
            if name in cache:
                A = -torch.exp(hf_layout.mamba_A_log(hf_layout.mixer(hf, i)).detach().float().cpu())
                mask = getattr(cache, "attention_mask", None)
                mask = None if mask is None else mask[:1].cpu()
                out[i] = mean_memory_horizon(cache[name][:1].float().cpu(), A, mask)
        return out or None

    def _park_hidden(self) -> None:
        """The view in the open tab draws; those in hidden tabs wait until their tab is opened (a Run or a
        click then draws one view, not three)."""
        shown = self.tabs.selected_index or 0
        for k, view in enumerate(self.views.values()):
            view._park(k != shown)

    # -------------------------------------------------------------- linking
    def select_layer(self, i: int) -> None:
        """Open block ``i``'s view (what clicking its cell on the layer map does)."""
        if not 0 <= i < len(self.layer_types):
            raise IndexError(f"layer {i} does not exist: the model has {len(self.layer_types)} blocks")
        kind = self.layer_types[i]
        if self._cache is None:
            raise RuntimeError(NO_RUN)
        self.selected = i
        for k, cell in enumerate(self.cells):
            cell.layout.border = "3px solid #111" if k == i else "3px solid transparent"
        if kind == "mlp":
            self._selected_note = (
                f"Block {i} is a dense MLP: no view here; its activations are "
                f"<code>blocks.{i}.mlp.hook_pre</code> / <code>hook_post</code>."
            )
            self._show_status()
            return
        self._selected_note = f"Showing block {i} ({kind})."
        self._show_status()
        keys = {"attention": ["attention"], "mamba": ["attention", "ssm"], "moe": ["moe"]}[kind]
        for key in keys:
            if self.views[key].layer != i:
                self.views[key].select(layer=i)
        current = list(self.views)[self.tabs.selected_index or 0]
        target = current if current in keys else keys[0]
        self.tabs.selected_index = list(self.views).index(target)

    def _legend_html(self) -> str:
        counts = {t: self.layer_types.count(t) for t in dict.fromkeys(self.layer_types)}
        items = "".join(
            f'<span class="ne-sw" style="background:{LAYER_COLORS[t]}"></span>{t} ({PATTERN_CHAR[t]}) × {c}'
            for t, c in counts.items()
        )
        return f'<div class="ne-legend"><b>{len(self.layer_types)} blocks:</b>{items}</div>'

    # -------------------------------------------------------------- static
    def to_html(self) -> str:
        """A self-contained HTML page: the layer map, the prompt and every view as it is now."""
        if self._cache is None:
            raise RuntimeError(NO_RUN)
        page = Page("nemo-explore")
        page.html(self.legend.value)
        cells = "".join(
            f'<div style="background:{LAYER_COLORS[t]}" title="block {i}: {t}">{i}</div>'
            for i, t in enumerate(self.layer_types)
        )
        page.html(f'<div class="ne-map">{cells}</div>')
        prompt = escape(self.prompt.value)
        page.html(
            f'<p class="ne-note"><b>Prompt:</b> <code style="white-space: pre-wrap">{prompt}</code></p>'
        )
        for key, view in self.views.items():
            view._catch_up()  # a view in a hidden tab may not have drawn the last run or click
            page.html(f"<h2>{TABS[key]}</h2>")
            view._static(page)
        return page.render()
