"""Explorer: a model and a prompt -> the hybrid layer map and the three views, linked.

It runs ``model.run_with_cache`` itself, caching only what the views read: the per-token points of
every layer at once, and the p × p maps (attention pattern, Mamba hidden attention) one layer at a time,
when a view first shows that layer — an h × p × p map per layer for every layer would not fit in memory
for a large model. Clicking a block on the map opens its view; a new prompt re-runs the model and updates
the same views in place (the browser gets only the new data, never new figures), keeping the chosen layers.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

import ipywidgets as widgets
import torch

from .. import hf_layout
from ..analysis._style import LAYER_COLORS
from ..cache import ActivationCache
from ..layer_types import PATTERN_CHAR
from ..options import RunOptions
from ..token_text import escape
from ._base import STYLE
from ._static import Page
from .attention import AttentionHeads
from .moe import MoERouting
from .ssm import SSMStateNorms

# Above this many tokens the p × p maps (attention patterns, hidden attention) are computed for the last
# LONG_MAP_ROWS query rows only (an h × p × p map of 2,048 tokens and 64 heads would be 1 GiB).
FULL_MAPS_MAX = 1024
LONG_MAP_ROWS = 512
PAIRWISE = ("attn.hook_pattern", "mamba.hook_hidden_attn")  # computed per layer, on demand
KEEP_LAYERS = 4  # pairwise maps of this many layers are kept at a time
POINTS = (
    "mamba.hook_state_norm",
    "mamba.hook_dt",
    "moe.hook_router_scores",
    "moe.hook_topk_indices",
    "moe.hook_topk_weights",
)
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
    ``views`` maps ``'attention'``/``'ssm'``/``'moe'`` to the views of the last run; ``cache`` is its cache.
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
        self.cache = None
        self.views: dict[str, widgets.Widget] = {}
        self.selected: int | None = None
        self._ran = ""  # the last run's status sentence

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
        except KeyboardInterrupt:  # the kernel was interrupted (■): the views keep the previous prompt
            if raise_errors:
                raise
            self.status.value = (
                '<div class="ne-warn"><b>Interrupted</b>: the views still show the previous prompt.</div>'
            )
        except Exception as err:  # shown in the widget: a button callback has nowhere else to report
            if raise_errors:
                raise
            self.status.value = f'<div class="ne-warn"><b>{type(err).__name__}</b>: {escape(str(err))}</div>'

    def _run(self, text: str) -> None:
        if not isinstance(text, str) or not text:
            raise ValueError("Explorer needs a non-empty prompt (a string)")
        t0 = time.perf_counter()
        n = len(self.model.to_str_tokens(text))
        names = self.model.hook_names()
        options = {}
        if n > FULL_MAPS_MAX:  # p×p maps of a long input: only the query rows a view can show
            options["hidden_attn_window"] = options["pattern_window"] = (n - LONG_MAP_ROWS, n)

        def fetch(name: str) -> torch.Tensor:
            with torch.no_grad(), self._progress(n, f"computing {name}"):
                return self.model.run_with_cache(text, names_filter=[name], **options)[1][name]

        with torch.no_grad(), self._progress(n, "running"):
            wanted = [n for n in names if n.endswith(POINTS)] or ["hook_embed"]  # no Mamba / MoE block
            _, cache = self.model.run_with_cache(text, names_filter=wanted)
        cache = OnDemandCache(cache, [n for n in names if n.endswith(PAIRWISE)], fetch, RunOptions(**options))
        seconds = time.perf_counter() - t0
        wanted = {
            "attention": bool(cache.layers("attention") or cache.layers("mamba")),
            "ssm": bool(cache.layers("mamba")),
            "moe": bool(cache.layers("moe")),
        }
        horizons = self._horizons(cache) if wanted["ssm"] else None
        views = {}
        for key, make in (("attention", AttentionHeads), ("ssm", SSMStateNorms), ("moe", MoERouting)):
            if not wanted[key]:
                continue
            extra = {"horizons": horizons} if key == "ssm" else {}
            view = self.views.get(key)
            if view is not None and (key != "ssm" or bool(horizons) == bool(view._horizons)):
                view.rebind(cache, **extra)  # in place: the browser gets only the new data
            else:
                view = make(cache, **extra)
            views[key] = view
        self.cache, self.views = cache, views
        if list(self.tabs.children) != list(views.values()):
            self.tabs.children = list(views.values())
            for k, key in enumerate(views):
                self.tabs.set_title(k, TABS[key])
        long = f" (long input: attention maps for the last {LONG_MAP_ROWS} query rows)" if options else ""
        self._ran = f"Ran {n} tokens in {seconds:.2f} s{long}."
        self.status.value = f'<div class="ne-note">{self._ran} Click a block above to see its view.</div>'
        if self.selected is not None:
            self.select_layer(self.selected)

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

    # -------------------------------------------------------------- linking
    def select_layer(self, i: int) -> None:
        """Open block ``i``'s view (what clicking its cell on the layer map does)."""
        if not 0 <= i < len(self.layer_types):
            raise IndexError(f"layer {i} does not exist: the model has {len(self.layer_types)} blocks")
        kind = self.layer_types[i]
        self.selected = i
        for k, cell in enumerate(self.cells):
            cell.layout.border = "3px solid #111" if k == i else "3px solid transparent"
        if kind == "mlp":
            self.status.value = (
                f'<div class="ne-note">{self._ran} Block {i} is a dense MLP: no view here; its activations '
                f"are <code>blocks.{i}.mlp.hook_pre</code> / <code>hook_post</code>.</div>"
            )
            return
        self.status.value = f'<div class="ne-note">{self._ran} Showing block {i} ({kind}).</div>'
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
            page.html(f"<h2>{TABS[key]}</h2>")
            view._static(page)
        return page.render()


class OnDemandCache(ActivationCache):
    """A run's cache that also offers ``lazy`` names, computed by ``fetch(name)`` when first read.

    Only the last ``KEEP_LAYERS`` computed tensors are kept. ``name in cache`` is true for a lazy name
    before it is computed; iterating gives what is held now.
    """

    def __init__(
        self,
        cache: ActivationCache,
        lazy: list[str],
        fetch: Callable[[str], torch.Tensor],
        options: RunOptions,
    ) -> None:
        super().__init__(
            dict(cache),
            layer_types=cache.layer_types,
            tokens=cache.tokens,
            str_tokens=cache.str_tokens_all,
            attention_mask=cache.attention_mask,
            config=cache.config,
            model=cache.model,
            options=options,  # those ``fetch`` computes the lazy names under
        )
        self._lazy, self._fetch = set(lazy), fetch
        self._recent: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __contains__(self, name: object) -> bool:
        return name in self._lazy or super().__contains__(name)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._lazy:
            return super().__getitem__(name)
        if name not in self._recent:
            self._recent[name] = self._fetch(name)
            while len(self._recent) > KEEP_LAYERS:
                self._recent.popitem(last=False)
        self._recent.move_to_end(name)
        return self._recent[name]

    def __iter__(self) -> Iterator[str]:
        yield from super().__iter__()
        yield from list(self._recent)

    def __len__(self) -> int:
        return super().__len__() + len(self._recent)
