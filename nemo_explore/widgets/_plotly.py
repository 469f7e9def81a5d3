"""One plotly.js per page: a FigureWidget whose front-end code is a small loader.

plotly's own ``FigureWidget`` carries plotly's whole widget bundle (about 5 MB) in every widget's state, so
each figure sends it again and the browser evaluates it again (a 1–2 s freeze per figure). :class:`Figure`
is the same widget in Python, but its ``_esm`` is a small loader, and the bundle travels once, as the text
state of one :class:`PlotlyBundle` model per kernel that every figure points to. In a kernel that model is
made at ``import nemo_explore.widgets`` and its front end imports the bundle as soon as it reaches the page
(a figure that comes first imports it itself); every figure on the page, of every view and every
notebook, uses that one import. Nothing
here needs a lab extension: any front end that runs anywidget (JupyterLab, Notebook 7, VS Code, Colab)
loads it the same way.

2-D numeric arrays (heatmap ``z``, ``customdata``) go to the browser as float32 binary buffers, one per row,
rather than as JSON text of Python floats (17 digits each, NaN not allowed): 4 bytes a value.

What this relies on of plotly's and anywidget's private code is listed, and checked once, in _private.py.
"""

from __future__ import annotations

import json
import uuid

import anywidget
import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
from traitlets import Dict, Instance, List, Unicode, default

from ._private import EDITS, WHOLE, bundle, serializers

_py_to_js, _js_to_py = serializers()


# plotly's widget bundle, imported once per page: a promise kept on the page's global object.
IMPORT = """
const KEY = "__nemo_explore_plotly_bundle__";

function importOnce(code) {
  let ready = globalThis[KEY];
  if (!ready) {
    ready = (async () => {
      const url = URL.createObjectURL(new Blob([await code()], { type: "text/javascript" }));
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

// anywidget applies a model's messages only once the model's front-end code has started, and drops them all,
// for good, when that took over 2 s (as on a page busy drawing): a figure would miss its traces and every
// later edit. The messages of this package's models (those with a "_ne_uid") wait for their own start
// instead, however long it takes: the model class's message handler is wrapped, once per page, by the first
// of these models to start. A model made before that keeps anywidget's handler until it starts itself.
const STARTS = (globalThis.__nemo_explore_starts__ ??= new WeakMap());  // model -> its start

function start(model) {  // a promise that the model's code has started, and its resolve
  let s = STARTS.get(model);
  if (!s) {
    let done;
    s = { started: new Promise((resolve) => { done = resolve; }), done };
    STARTS.set(model, s);
  }
  return s;
}

async function guardMessages(model) {
  // anywidget hands initialize a view of the model; the model itself is the widget manager's
  const own = await model.widget_manager.get_model(model.get("_ne_uid"));
  start(own).done();
  const cls = Object.getPrototypeOf(own);
  if (!cls.__nemo_explore_guarded__) {
    const anywidget = cls._handle_comm_msg, widgets = Object.getPrototypeOf(cls)._handle_comm_msg;
    // anywidget's own handler over ipywidgets' (checked in nemo_explore/widgets/_private.py): without
    // either, the guard stays off and anywidget handles the messages as it does for any widget
    if (!Object.hasOwn(cls, "_handle_comm_msg") || typeof widgets !== "function") return;
    cls._handle_comm_msg = function (...msg) {
      return this.get("_ne_uid") ? start(this).started.then(() => widgets.apply(this, msg))
        : anywidget.apply(this, msg);
    };
    cls.__nemo_explore_guarded__ = true;
  }
  // This model's own handler was bound when it was made, perhaps before the wrap: from now on, the wrapped
  // one. Messages still waiting on anywidget's start go first (microtasks, before any new one arrives).
  own.comm?.on_msg((msg) => own._handle_comm_msg(msg));
}
"""

# The bundle's own model starts the import as soon as it reaches the page (it is made when
# nemo_explore.widgets is imported in a kernel), so the first figure rarely waits for it.
PRELOAD = IMPORT + """
export default {
  initialize({ model }) {
    importOnce(async () => model.get("code"));
    guardMessages(model);
  },
};
"""

LOADER = IMPORT + """
// From the one PlotlyBundle model all figures point to, if it has not started already.
function bundle(model) {
  return importOnce(async () => {
    const ref = model.get("_bundle");
    return (await model.widget_manager.get_model(ref.slice("IPY_MODEL_".length))).get("code");
  });
}

// Edits the kernel sends while the bundle is still loading would reach no listener: keep them, and hand them
// to plotly's model once it listens. A whole figure sent after them (plotly re-sends its data and layout
// when a figure is displayed) already holds them: those kept before it are dropped, or a trace added early
// would be added twice.
const EDITS = $EDITS;
const WHOLE = $WHOLE;

export default () => {
  let ready;
  return {
    // Returns at once: anywidget gives initialize 2 s, and importing plotly.js can take longer on a busy
    // machine. plotly's model is set up when the bundle is there; render waits for it.
    // The model holds the figure's data and layout from its first message (see Figure.open).
    initialize(ctx) {
      const model = ctx.model, early = [], keep = {};
      for (const name of EDITS) {
        keep[name] = () => { const v = model.get(name); if (v) early.push([name, v]); };
        model.on("change:" + name, keep[name]);
      }
      for (const name of WHOLE) {
        keep[name] = () => { early.length = 0; };
        model.on("change:" + name, keep[name]);
      }
      guardMessages(model);  // from here on, listening: messages may be applied
      ready = bundle(model).then(async (mod) => {
        for (const name of [...EDITS, ...WHOLE]) model.off("change:" + name, keep[name]);
        const figure = mod.default();
        const cleanup = await figure.initialize(ctx);
        for (const [name, value] of early) {
          model.set(name, value);
          model.set(name, null);
        }
        return { figure, cleanup };
      });
      return () => ready.then(({ cleanup }) => typeof cleanup === "function" && cleanup());
    },
    async render(ctx) {
      const { figure } = await ready;
      return figure.render(ctx);
    },
  };
};
""".replace("$EDITS", json.dumps(EDITS)).replace("$WHOLE", json.dumps(WHOLE))


_KEPT = {"int8", "uint8", "int16", "uint16", "int32", "uint32", "float32"}


def _rows(a: np.ndarray) -> list:
    """A 2-D numeric array as one binary buffer per row (plotly's front end reads typed arrays): small
    integer types as they are (e.g. int8 head indices), anything else as float32."""
    a = np.ascontiguousarray(a, dtype=a.dtype if a.dtype.name in _KEPT else np.float32)
    return [{"buffer": memoryview(row), "dtype": a.dtype.name, "shape": row.shape} for row in a]


def to_js(value, manager=None):
    """plotly's serializer, but 2-D numeric arrays as binary rows (float32 or a small integer type; NaN =
    a gap)."""
    if isinstance(value, dict):
        return {k: to_js(v, manager) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_js(v, manager) for v in value]
    if isinstance(value, np.ndarray) and value.ndim == 2 and value.dtype.kind in "uif" and value.size:
        return _rows(value)
    return _py_to_js(value, manager)


BINARY = dict(to_json=to_js, from_json=_js_to_py)


class PlotlyBundle(anywidget.AnyWidget):
    """plotly's widget bundle as a widget model of its own (never displayed): created once per kernel, its
    state (the bundle, as text: JupyterLab saves text state with a notebook, where binary state would be
    lost) goes to the page once, its front end starts importing it at once, and every :class:`Figure`
    points to it."""

    _esm = PRELOAD
    code = Unicode().tag(sync=True)
    _ne_uid = Unicode().tag(sync=True)  # = its model id: the front end finds the model by it

    def __init__(self) -> None:
        uid = uuid.uuid4().hex
        super().__init__(code=bundle(), model_id=uid, _ne_uid=uid)


_shared: PlotlyBundle | None = None


def shared_bundle() -> PlotlyBundle:
    """The kernel's one PlotlyBundle (made again if it was closed, e.g. by ``Widget.close_all()``)."""
    global _shared
    if _shared is None or _shared.comm is None:
        _shared = PlotlyBundle()
    return _shared


def preload() -> None:
    """In a kernel, make the PlotlyBundle now (at ``import nemo_explore.widgets``): the page then imports
    plotly.js while the next cells run, rather than when the first figure draws."""
    from IPython import get_ipython

    if getattr(get_ipython(), "kernel", None) is not None:
        shared_bundle()


class Figure(go.FigureWidget):
    """``plotly.graph_objects.FigureWidget`` with plotly.js loaded once per page (see the module doc)."""

    _esm = LOADER
    _bundle = Instance(PlotlyBundle, allow_none=True).tag(sync=True, **widgets.widget_serialization)
    _widget_data = List().tag(sync=True, **BINARY)
    _py2js_addTraces = Dict(allow_none=True).tag(sync=True, **BINARY)
    _py2js_restyle = Dict(allow_none=True).tag(sync=True, **BINARY)
    _py2js_update = Dict(allow_none=True).tag(sync=True, **BINARY)
    _ne_uid = Unicode().tag(sync=True)  # = its model id (see LOADER's guardMessages)

    def __init__(self, *args, **kwargs) -> None:
        self._open_later = True
        try:
            super().__init__(*args, **kwargs)
        finally:
            self._open_later = False
        self._model_id = self._ne_uid = uuid.uuid4().hex
        self.open()

    def open(self) -> None:
        """Opens the comm once plotly has set the figure's data and layout, so they travel in its first
        message. plotly's view draws the layout its model holds when it renders and never redraws for a
        later one; sent in a later update, the layout could reach a busy page after the figure drew."""
        if not getattr(self, "_open_later", False):
            super().open()

    def send_state(self, key=None) -> None:
        if self.comm is not None:  # before the comm opens there is no one to send to
            super().send_state(key)

    @default("_bundle")
    def _shared_bundle(self) -> PlotlyBundle:
        return shared_bundle()
