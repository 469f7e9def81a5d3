"""What the cache-based views share: one row of the batch, its tokens, clear errors, and ``to_html``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import ipywidgets as widgets
import numpy as np
import torch

from ..cache import ActivationCache
from ..core.token_text import join_pieces
from ._cores import leave_a_core
from ._static import CSS, Page
from ._tokens import Window

STYLE = f"<style>{CSS}</style>"
_made_parked = False  # see made_parked


@contextlib.contextmanager
def made_parked() -> Iterator[None]:
    """Views made in the block start parked: they draw when first shown (the Explorer's hidden tabs)."""
    global _made_parked
    _made_parked, before = True, _made_parked
    try:
        yield
    finally:
        _made_parked = before


def arrays_cache(
    layers: Mapping[int, object],
    tokens: Sequence[str],
    points: Mapping[str, object],
    kinds: Mapping[int, str],
) -> ActivationCache:
    """An ActivationCache of one row made of plain arrays (numpy or torch), for a view without a model.

    ``layers``: block index -> an array, or a dict of arrays by short name; ``points``: layer kind -> the
    point name a lone array is, or a dict short name -> point name; ``kinds``: block index -> its kind (the
    first kind of ``points`` by default); ``tokens``: the text of each position.
    """
    data, types = {}, {}
    default = next(iter(points))
    for i, arrays in layers.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise TypeError(f"layers maps block indices (ints ≥ 0) to arrays, got the key {i!r}")
        kind = types[i] = kinds.get(i, default)
        if kind not in points:
            raise ValueError(f"block {i}: kind {kind!r}; this view shows {' and '.join(points)} layers")
        names = points[kind]
        given = arrays if isinstance(arrays, Mapping) else {None: arrays}
        if isinstance(names, str):
            names = {None: names}
        unknown = set(given) - set(names)
        if unknown:
            first = sorted(map(str, unknown))[0]
            raise KeyError(f"block {i}: unknown array {first!r}; arrays: {sorted(map(str, names))}")
        for key, array in given.items():
            tensor = torch.as_tensor(np.asarray(array) if not torch.is_tensor(array) else array)
            data[f"blocks.{i}.{names[key]}"] = tensor[None]  # a batch of one
    tokens = [str(t) for t in tokens]
    for name, t in data.items():  # the token axis: keys of a p × p map, else the first
        axis = -1 if name.endswith(("hook_pattern", "hook_hidden_attn")) else 1
        if t.dim() < 2 or t.shape[axis] != len(tokens):
            raise ValueError(f"{name}: shape {tuple(t.shape[1:])} does not fit {len(tokens)} tokens")
    layer_types = [types.get(i, "mlp") for i in range(max(layers, default=-1) + 1)]
    return ActivationCache(data, layer_types=layer_types, str_tokens=[tokens])


class CacheView(widgets.VBox):
    """Base of AttentionHeads, SSMStateNorms and MoERouting: a VBox over one row of an ActivationCache.

    Subclasses set ``title`` and ``ARRAYS`` (what ``from_arrays`` takes), build their controls and figures,
    and implement ``_figures``, ``_draw`` and ``_static(page)``; ``to_html()`` renders what the view shows
    now as a self-contained page.
    """

    title = "view"
    ARRAYS: dict[str, object] = {}  # layer kind -> the point a lone array is (or short name -> point)

    @classmethod
    def from_arrays(
        cls,
        layers: Mapping[int, object],
        tokens: Sequence[str],
        kinds: Mapping[int, str] | None = None,
        **options,
    ):
        """The view over plain arrays (numpy or torch), without a model or a cache: ``layers`` maps block
        indices to arrays (see the subclass), ``tokens`` gives each position's text, ``kinds`` the kind of
        a block where the view shows several; ``options`` are the constructor's."""
        return cls(arrays_cache(layers, tokens, cls.ARRAYS, kinds or {}), **options)

    @property
    def layer(self) -> int:
        """The block shown (each view's ``layer_select`` dropdown holds it)."""
        return self.layer_select.value

    def __init__(self, cache, batch: int = 0) -> None:
        super().__init__(layout=widgets.Layout(width="100%"))
        self.add_class("ne-view")
        self._check_cache(cache)
        self.cache = cache
        self.batch = batch
        self.note = widgets.HTML()
        self._hold = False  # while True, control changes do not redraw (several set at once)
        # parked (in a hidden tab): a redraw waits until the view is shown; stale: one is waiting
        self._parked, self._stale = _made_parked, False

    def _check_cache(self, cache) -> None:
        if not isinstance(cache, Mapping) or not hasattr(cache, "layer_types"):
            raise TypeError(
                f"{type(self).__name__} takes an ActivationCache (from model.run_with_cache), "
                f"not {type(cache).__name__}"
            )

    def _set_layers(self, options: list[tuple[str, int]], layer: int) -> None:
        """New options for the layer menu, and its value, without a redraw (the caller redraws)."""
        self._hold, held = True, self._hold
        try:
            self.layer_select.options = options
            self.layer_select.value = layer
        finally:
            self._hold = held

    # -------------------------------------------------------------- inputs
    def _row(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        """Row ``batch`` of a cached tensor, as float32 on the CPU."""
        if not 0 <= self.batch < tensor.shape[0]:
            raise IndexError(f"batch={self.batch} out of range: {name} holds {tensor.shape[0]} rows")
        return tensor[self.batch].detach().float().cpu()

    def _valid(self, p: int) -> tuple[int, int]:
        """``(offset, n)``: the row's real tokens are positions offset..offset+n-1 (padding excluded)."""
        mask = getattr(self.cache, "attention_mask", None)
        if mask is None:
            return 0, p
        keep = torch.as_tensor(mask)[self.batch].nonzero().flatten()
        return (int(keep[0]), len(keep)) if len(keep) else (0, 0)

    def _tokens(self, p: int) -> tuple[list[str], int]:
        """The row's tokens as strings and the position of the first one (``#id`` when no tokenizer); a
        character split over several tokens shows on each (``join_pieces``). Kept per cache and row: a
        32k-token row takes 0.4 s to read."""
        memo = getattr(self, "_tokens_memo", None)
        if memo is not None and memo[0] is self.cache and memo[1] == (self.batch, p):
            return memo[2]
        found = self._read_tokens(p)
        self._tokens_memo = (self.cache, (self.batch, p), found)
        return found

    def _read_tokens(self, p: int) -> tuple[list[str], int]:
        offset, n = self._valid(p)
        rows = getattr(self.cache, "str_tokens_all", None) or []
        if self.batch < len(rows) and len(rows[self.batch]) == n:
            return join_pieces(rows[self.batch]), offset
        ids = getattr(self.cache, "tokens", None)
        if ids is not None and ids.shape[-1] == p:
            return [f"#{i}" for i in ids[self.batch, offset : offset + n].tolist()], offset
        return [f"#{offset + j}?" for j in range(n)], offset

    def _need(self, name: str, names: str) -> torch.Tensor:
        if name not in self.cache:
            raise ValueError(
                f"{type(self).__name__} needs {name}, which this cache lacks: cache it first, e.g. "
                f"model.run_with_cache(text, names_filter=lambda n: n.endswith({names}))"
            )
        return self.cache[name]

    def _check_layer(self, layer: int, expected: dict[str, str], names: str) -> None:
        """Raise a clear error unless ``layer`` is a block this view can show and the cache holds its data.

        ``expected``: layer kind -> the name this view reads, with ``{i}`` for the block index (or None).
        """
        types = self.cache.layer_types
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise TypeError(f"layer must be a block index (int), not {layer!r}")
        if not 0 <= layer < len(types):
            raise IndexError(
                f"layer {layer} does not exist: the model has {len(types)} blocks (0..{len(types) - 1})"
            )
        kind = types[layer]
        if kind not in expected:
            shown = " and ".join(expected)
            wanted = [i for i, t in enumerate(types) if t in expected]
            raise ValueError(
                f"block {layer} is a {kind} layer; {type(self).__name__} shows {shown} layers: "
                f"{wanted or 'this model has none'}"
            )
        if expected[kind] is not None:  # None: the view checks what it reads itself
            self._need(expected[kind].format(i=layer), names)

    # -------------------------------------------------------------- controls
    def _slider(self) -> widgets.IntSlider:
        s = widgets.IntSlider(
            description="window", continuous_update=False, layout=widgets.Layout(width="420px")
        )
        s.observe(self._on_window, names="value")
        return s

    def _sync_slider(self, slider: widgets.IntSlider, window: Window) -> None:
        self._hold, held = True, self._hold
        slider.min, slider.max = 0, window.max_start  # widen first so the value always fits
        slider.min = window.lo
        slider.step = max(1, window.size // 8)
        slider.value = window.start
        slider.layout.display = None if window.active else "none"
        self._hold = held

    def _set(self, controls: list[tuple[widgets.Widget, object]], window: int | None) -> None:
        """Set several controls (those given a value that is not None) and the window position, then redraw
        once: what ``select(...)`` does."""
        self._hold = True
        try:
            for control, value in controls:
                if value is not None:
                    control.value = value
            if window is not None:
                self._window.move(window)
                self._sync_slider(self.window_slider, self._window)
        finally:
            self._hold = False
        self._redraw()

    def _show_note(self, text: str, maps: str) -> None:
        """The view's explanation (HTML), followed by the window's warning when a long input is cut;
        ``maps`` names what is windowed ('token maps', 'p×p maps')."""
        warn = self._window.note(maps)
        self.note.value = text + (f'<div class="ne-warn">{warn}</div>' if warn else "")

    def _on_window(self, change) -> None:
        if not self._hold:
            self._window.move(change["new"])
            self._redraw()

    def _on_control(self, change) -> None:
        if self._hold:
            return
        if change["owner"] is getattr(self, "layer_select", None):
            self._on_layer(change["new"])
        else:
            self._redraw()

    def _on_layer(self, layer: int) -> None:
        """A new layer was picked in the dropdown; views whose other controls depend on it reload."""
        self._redraw()

    def _redraw(self) -> None:
        """Draw what the controls say: each figure's edits go to the browser in one message as soon as that
        figure is computed (``_figures`` order), so the browser draws one while the kernel computes the
        next. A parked view only notes that it is stale."""
        self._stale = True
        if not self._parked:
            self._catch_up()

    def _catch_up(self) -> None:
        """Draw now if a redraw is waiting (and there is a cache to draw from)."""
        if self._stale and self.cache is not None:
            self._stale = False
            with leave_a_core():
                self._draw()

    def _park(self, parked: bool) -> None:
        """Park the view (its tab is hidden: redraws wait), or show it again, drawing what waited. The
        Explorer parks the views of its hidden tabs, so that a click or a Run draws only the view shown."""
        self._parked = parked
        if not parked:
            self._catch_up()

    def _figures(self) -> tuple:  # pragma: no cover - abstract
        """The view's figures, in the order a redraw sends them."""
        raise NotImplementedError

    def _draw(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _release(self) -> None:
        """Let go of the cache and of what was read from it; the figures stay as drawn. Nothing is drawn
        or selected again until ``rebind`` gives the view a cache (the Explorer does, for a new run)."""
        self.cache, self._tokens_memo = None, None

    # -------------------------------------------------------------- static
    def to_html(self) -> str:
        """A self-contained HTML page of what the view shows now (no network or kernel needed to view)."""
        self._catch_up()
        page = Page(self.title)
        self._static(page)
        return page.render()

    def _static(self, page: Page) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
