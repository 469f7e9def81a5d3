"""One plotly.js per page: a FigureWidget whose front-end code is a small loader.

plotly's own ``FigureWidget`` carries plotly's whole widget bundle (about 5 MB) in every widget's state, so
each figure sends it again and the browser evaluates it again (a 1–2 s freeze per figure). :class:`Figure`
is the same widget in Python, but its ``_esm`` is a small loader, and the bundle travels once, as the binary
state of one :class:`PlotlyBundle` model per kernel that every figure points to; the first figure on a page
imports it, and every figure on the page, of every view and every notebook, uses that one import. Nothing
here needs a lab extension: any front end that runs anywidget (JupyterLab, Notebook 7, VS Code, Colab)
loads it the same way.

2-D numeric arrays (heatmap ``z``, ``customdata``) go to the browser as float32 binary buffers, one per row,
rather than as JSON text of Python floats (17 digits each, NaN not allowed): 4 bytes a value.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
from plotly.serializers import _js_to_py, _py_to_js
from traitlets import Bytes, Dict, Instance, List, default

LOADER = """
const KEY = "__nemo_explore_plotly_bundle__";

// plotly's widget bundle, imported once per page from the one PlotlyBundle model all figures point to.
function bundle(model) {
  let ready = globalThis[KEY];
  if (!ready) {
    ready = (async () => {
      const ref = model.get("_bundle");
      const source = await model.widget_manager.get_model(ref.slice("IPY_MODEL_".length));
      const url = URL.createObjectURL(new Blob([source.get("code")], { type: "text/javascript" }));
      try {
        return await import(url);
      } finally {
        URL.revokeObjectURL(url);
      }
    })();
    ready.catch(() => { if (globalThis[KEY] === ready) delete globalThis[KEY]; });
    globalThis[KEY] = ready;
  }
  return ready;
}

// Edits the kernel sends while the bundle is still loading would reach no listener: keep them, and hand them
// to plotly's model once it listens.
const EDITS = ["addTraces", "deleteTraces", "moveTraces", "restyle", "relayout", "update", "animate",
  "removeLayoutProps", "removeTraceProps"].map((m) => "_py2js_" + m);

export default () => {
  let figure;
  return {
    async initialize(ctx) {
      const model = ctx.model, early = [], keep = {};
      for (const name of EDITS) {
        keep[name] = () => { const v = model.get(name); if (v) early.push([name, v]); };
        model.on("change:" + name, keep[name]);
      }
      const mod = await bundle(model);
      for (const name of EDITS) model.off("change:" + name, keep[name]);
      figure = mod.default();
      const done = figure.initialize(ctx);
      for (const [name, value] of early) {
        model.set(name, value);
        model.set(name, null);
      }
      return done;
    },
    async render(ctx) {
      while (!figure) await new Promise((r) => setTimeout(r, 20));
      return figure.render(ctx);
    },
  };
};
"""


@cache
def _bundle() -> bytes:
    import plotly

    return (Path(plotly.__file__).parent / "package_data" / "widgetbundle.js").read_bytes()


def _rows(a: np.ndarray) -> list:
    """A 2-D numeric array as one float32 binary buffer per row (plotly's front end reads typed arrays)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    return [{"buffer": memoryview(row), "dtype": "float32", "shape": row.shape} for row in a]


def to_js(value, manager=None):
    """plotly's serializer, but 2-D numeric arrays as binary rows (float32; NaN = a gap)."""
    if isinstance(value, dict):
        return {k: to_js(v, manager) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_js(v, manager) for v in value]
    if isinstance(value, np.ndarray) and value.ndim == 2 and value.dtype.kind in "uif" and value.size:
        return _rows(value)
    return _py_to_js(value, manager)


BINARY = dict(to_json=to_js, from_json=_js_to_py)


class PlotlyBundle(widgets.Widget):
    """plotly's widget bundle as a widget model of its own (no view): created once per kernel, its state
    (the bundle, as binary) goes to the page once, and every :class:`Figure` points to it."""

    code = Bytes().tag(sync=True)

    def __init__(self) -> None:
        super().__init__(code=_bundle())


_shared: PlotlyBundle | None = None


def shared_bundle() -> PlotlyBundle:
    """The kernel's one PlotlyBundle (made again if it was closed, e.g. by ``Widget.close_all()``)."""
    global _shared
    if _shared is None or _shared.comm is None:
        _shared = PlotlyBundle()
    return _shared


class Figure(go.FigureWidget):
    """``plotly.graph_objects.FigureWidget`` with plotly.js loaded once per page (see the module doc)."""

    _esm = LOADER
    _bundle = Instance(PlotlyBundle, allow_none=True).tag(sync=True, **widgets.widget_serialization)
    _widget_data = List().tag(sync=True, **BINARY)
    _py2js_addTraces = Dict(allow_none=True).tag(sync=True, **BINARY)
    _py2js_restyle = Dict(allow_none=True).tag(sync=True, **BINARY)
    _py2js_update = Dict(allow_none=True).tag(sync=True, **BINARY)

    @default("_bundle")
    def _shared_bundle(self) -> PlotlyBundle:
        return shared_bundle()
