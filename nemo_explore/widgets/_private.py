"""The widgets' touches of plotly's and anywidget's private code, each checked once at the installed version.

Neither package promises to keep what these touches use, so pyproject.toml bounds both (the widgets
extra), and :func:`check` verifies each touch when the first figure is made (cheap, no browser):

- ``serializers``: plotly's ``plotly.serializers._py_to_js`` / ``_js_to_py``, the leaf serializer of the
  figures' binary rows (``_plotly.to_js``);
- ``figure traits``: the FigureWidget traits that ``_plotly.Figure`` re-declares and its loader listens to;
- ``round trips``: :data:`ROUND_TRIPS`, which patches plotly's minified widget bundle;
- ``start-up guard``: the loader's front-end code wraps anywidget's model method ``_handle_comm_msg``.

A touch that no longer holds warns (:class:`PrivateCodeWarning`: which touch, which installed version,
what degrades) and the widgets go on without it where they can.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

# plotly's private FigureWidget traits the loader listens to (checked below): its edit messages,
# and the whole figure, which plotly re-sends when a figure is displayed
EDITS = tuple(
    "_py2js_" + m
    for m in ("addTraces", "deleteTraces", "moveTraces", "restyle", "relayout", "update", "animate")
    + ("removeLayoutProps", "removeTraceProps")
)
WHOLE = ("_widget_data", "_widget_layout")
FIGURE_TRAITS = EDITS + WHOLE


class PrivateCodeWarning(UserWarning):
    """A touch of plotly's or anywidget's private code no longer holds at the installed version."""


def _same(value, manager=None):
    return value


def serializers() -> tuple[Callable, Callable]:
    """plotly's ``(to_json, from_json)`` for a figure's data: its private pair, else (the ``serializers``
    check warns) the pair its FigureWidget declares for ``_widget_data``, else no conversion at all."""
    try:
        from plotly.serializers import _js_to_py, _py_to_js
    except ImportError:
        trait = go.FigureWidget.class_traits().get("_widget_data")
        tags = trait.metadata if trait is not None else {}
        return tags.get("to_json", _same), tags.get("from_json", _same)
    return _py_to_js, _js_to_py


# After every edit plotly's front end diffs each trace's full data (z included) and the full layout against
# what it was sent, and sends the defaults it filled in back to Python. That costs 30-100 ms of main thread
# per update at 256×256, for values no view reads. The patch makes both methods return at once.
ROUND_TRIPS = re.compile(r"_send(TraceDeltas|LayoutDelta)\(\w+\)\{")
_ROUND_TRIP_METHODS = ["LayoutDelta", "TraceDeltas"]  # each defined once in the bundle


def _bundle_text() -> str:
    """plotly's widget bundle: its FigureWidget's front-end module (``_esm``: a path, or what anywidget
    made of it, whose ``str`` is the code)."""
    esm = go.FigureWidget._esm
    return esm.read_text(encoding="utf-8") if isinstance(esm, Path) else str(esm)


def _round_trips_in(code: str) -> str | None:
    found = sorted(ROUND_TRIPS.findall(code))
    if found != _ROUND_TRIP_METHODS:
        return f"the pattern matches {', '.join(f'_send{m}' for m in found) or 'nothing'} in the bundle"
    return None


def patch_round_trips(code: str) -> str:
    """The bundle with both round-trip methods returning at once; as it is if they are not found as
    expected (no partial patch)."""
    return code if _round_trips_in(code) else ROUND_TRIPS.sub(r"\g<0>return;", code)


@cache
def bundle() -> str:
    """plotly's widget bundle as the page imports it (the checks run first)."""
    check()
    return patch_round_trips(_bundle_text())


def frontend_files() -> list[Path]:
    """anywidget's front end as JupyterLab and Notebook 7 load it: its lab extension's JavaScript, in the
    package or in the environment's share/jupyter."""
    import anywidget

    for root in (
        Path(anywidget.__file__).parent / "labextension",
        Path(sys.prefix, "share", "jupyter", "labextensions", "anywidget"),
    ):
        if files := sorted(root.glob("static/*.js")):
            return files
    return []


def _check_serializers() -> str | None:
    from plotly.basedatatypes import Undefined
    from plotly.serializers import _js_to_py, _py_to_js

    row = np.array([1.0, 2.5], dtype=np.float32)
    sent = _py_to_js({"x": row, "t": ("a", 1), "u": Undefined}, None)
    if isinstance(x := sent.get("x"), dict) and "buffer" in x:  # a memoryview: compared as bytes
        sent = {**sent, "x": {**x, "buffer": bytes(x["buffer"]), "shape": tuple(x.get("shape", ()))}}
    binary = {"buffer": row.tobytes(), "dtype": "float32", "shape": (2,)}
    if sent != {"x": binary, "t": ["a", 1], "u": "_undefined_"}:
        return f"_py_to_js gave {sent!r} for a float32 array, a tuple and Undefined"
    back = _js_to_py({"u": "_undefined_", "l": [1]}, None)
    if back != {"u": Undefined, "l": [1]}:
        return f"_js_to_py gave {back!r} for '_undefined_' and a list"
    return None


def _check_round_trips() -> str | None:
    return _round_trips_in(_bundle_text())


def _check_traits() -> str | None:
    missing = sorted(set(FIGURE_TRAITS) - set(go.FigureWidget.class_trait_names(sync=True)))
    return f"FigureWidget syncs no {', '.join(missing)}" if missing else None


def _check_guard() -> str | None:
    files = frontend_files()
    if not files:
        return "its lab extension's JavaScript was not found"
    if not any("_handle_comm_msg" in f.read_text(encoding="utf-8", errors="replace") for f in files):
        return f"no _handle_comm_msg in {files[0].parent}"
    return None


def _installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "(version unknown)"


@dataclass(frozen=True)
class Touch:
    """One touch of private code: what the widgets assume, and what degrades when it no longer holds."""

    name: str
    package: str
    assumes: str
    degrades: str
    problem: Callable[[], str | None]  # None while the touch holds, else what was found

    def warning(self, found: str) -> str:
        return (
            f"nemo_explore.widgets: {self.name} ({self.package} {_installed(self.package)}): {self.assumes}, "
            f"but {found}. {self.degrades}. pyproject.toml's widgets extra lists the supported versions."
        )


TOUCHES = (
    Touch(
        "serializers",
        "plotly",
        "plotly.serializers._py_to_js / _js_to_py serialize arrays and Undefined as plotly 6 and 7 do",
        "Figures use it as it now is or, if it is gone, the serializer plotly's FigureWidget declares; a "
        "figure may then draw without its data, or fail to send",
        _check_serializers,
    ),
    Touch(
        "figure traits",
        "plotly",
        "FigureWidget syncs the traits Figure re-declares and its loader listens to",
        "Figures may send their 2-D arrays as plotly does (JSON, not float32 rows), and edits sent while "
        "plotly.js loads may be lost",
        _check_traits,
    ),
    Touch(
        "round trips",
        "plotly",
        "ROUND_TRIPS finds _sendTraceDeltas and _sendLayoutDelta once each in plotly's widget bundle",
        "The bundle goes unpatched: figures still draw, but after every edit the page sends the defaults "
        "plotly.js filled in back to the kernel (30-100 ms of the page's time per update at 256×256)",
        _check_round_trips,
    ),
    Touch(
        "start-up guard",
        "anywidget",
        "anywidget's front end defines the model method _handle_comm_msg, which the figures' loader wraps",
        "The start-up guard is off: on a busy page a figure whose code takes over 2 s to start can miss "
        "its traces and every later edit (anywidget drops them)",
        _check_guard,
    ),
)


def run() -> frozenset[str]:
    """Check every touch; warn for each that no longer holds. The names of those that failed."""
    failed = []
    for touch in TOUCHES:
        try:
            found = touch.problem()
        except Exception as err:  # a missing name, a changed signature: the touch no longer holds
            found = f"{type(err).__name__}: {err}"
        if found:
            failed.append(touch.name)
            warnings.warn(touch.warning(found), PrivateCodeWarning, stacklevel=2)
    return frozenset(failed)


check = cache(run)  # once per process, when the first figure's bundle is made
