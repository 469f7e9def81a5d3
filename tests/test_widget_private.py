"""The widgets' touches of plotly's and anywidget's private code (nemo_explore/widgets/_private.py): each
holds at the pinned versions, and each failure warns, naming the touch, the version and what degrades."""

from __future__ import annotations

import re
import warnings
from importlib.metadata import version
from pathlib import Path

import plotly.graph_objects as go
import plotly.serializers
import pytest
import tomllib
from packaging.requirements import Requirement
from traitlets import TraitType

from nemo_explore.widgets import _plotly, _private
from nemo_explore.widgets._private import PrivateCodeWarning

ROOT = Path(__file__).resolve().parents[1]


def only_warning(touch: str) -> str:
    """Run the checks; exactly ``touch`` fails, with one warning: its text."""
    with pytest.warns(PrivateCodeWarning) as caught:
        failed = _private.run()
    assert failed == {touch}
    (warning,) = caught.list
    text = str(warning.message)
    package = next(t.package for t in _private.TOUCHES if t.name == touch)
    assert f"{touch} ({package} {version(package)})" in text
    return text


def test_every_touch_holds_at_the_installed_versions():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _private.run() == frozenset()
    code = _private.bundle()
    assert [code[m.end() : m.end() + 7] for m in _private.ROUND_TRIPS.finditer(code)] == ["return;"] * 2


@pytest.mark.parametrize("pins", ["newest", "oldest"])
def test_the_widgets_extra_admits_the_pinned_versions_and_bounds_them(pins):
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    spec = {Requirement(r).name: Requirement(r).specifier for r in extra["widgets"]}
    text = (ROOT / "constraints" / f"{pins}.txt").read_text()
    for name in ("plotly", "anywidget"):
        pinned = re.search(rf"^{name}==(\S+)", text, flags=re.M).group(1)
        assert spec[name].contains(pinned), (name, pinned, spec[name])
        assert any(s.operator == "<" for s in spec[name]), f"{name} has no upper bound"


def test_the_figures_traits_are_the_ones_checked():
    own = {n for n, t in vars(_plotly.Figure).items() if isinstance(t, TraitType) and n.startswith("_py2js_")}
    assert own | {"_widget_data"} <= set(_private.FIGURE_TRAITS)
    assert all(f'"{name}"' in _plotly.LOADER for name in _private.FIGURE_TRAITS)  # the loader's lists


@pytest.mark.parametrize(
    "code",
    ["export default {}", "_sendTraceDeltas(a){_sendTraceDeltas(b){_sendLayoutDelta(c){"],
    ids=["no match", "a method twice"],
)
def test_round_trips_not_found_leave_the_bundle_unpatched(monkeypatch, code):
    monkeypatch.setattr(_private, "_bundle_text", lambda: code)
    text = only_warning("round trips")
    assert "goes unpatched" in text and "back to the kernel" in text
    assert _private.patch_round_trips(code) == code  # all or nothing


def test_round_trips_warn_on_first_use(monkeypatch):
    """The checks run once, when the first figure's bundle is made: warned, and the bundle unpatched."""
    monkeypatch.setattr(_private, "_bundle_text", lambda: "export default {}")
    _private.check.cache_clear()
    _private.bundle.cache_clear()
    try:
        with pytest.warns(PrivateCodeWarning, match="round trips"):
            assert _plotly.PlotlyBundle().code == "export default {}"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _private.check()  # once per process
    finally:
        _private.check.cache_clear()
        _private.bundle.cache_clear()


def test_a_missing_serializer_warns_and_falls_back(monkeypatch):
    monkeypatch.delattr(plotly.serializers, "_py_to_js")
    text = only_warning("serializers")
    assert "ImportError" in text and "_py_to_js" in text and "FigureWidget declares" in text
    declared = go.FigureWidget.class_traits()["_widget_data"].metadata
    assert _private.serializers() == (declared["to_json"], declared["from_json"])


def test_a_serializer_that_changed_warns(monkeypatch):
    monkeypatch.setattr(plotly.serializers, "_js_to_py", lambda value, manager: value)
    assert "_js_to_py gave" in only_warning("serializers")


def test_a_missing_figure_trait_warns(monkeypatch):
    monkeypatch.setattr(_private, "FIGURE_TRAITS", (*_private.FIGURE_TRAITS, "_py2js_gone"))
    text = only_warning("figure traits")
    assert "syncs no _py2js_gone" in text and "may be lost" in text


@pytest.mark.parametrize("files", [["other.js"], []], ids=["no handler", "no front end"])
def test_anywidget_without_the_handler_turns_the_guard_off(monkeypatch, tmp_path, files):
    for name in files:
        (tmp_path / name).write_text("export class AnyModel { _handle_msg() {} }")
    monkeypatch.setattr(_private, "frontend_files", lambda: [tmp_path / n for n in files])
    text = only_warning("start-up guard")
    assert "start-up guard is off" in text
    assert ("no _handle_comm_msg in" if files else "was not found") in text


def test_a_check_that_raises_still_warns(monkeypatch):
    monkeypatch.setattr(_private, "frontend_files", lambda: 1 / 0)
    assert "ZeroDivisionError" in only_warning("start-up guard")


def test_the_guard_stays_off_without_anywidgets_handler():
    """In the page, the loader wraps only a handler anywidget's model defines itself (the degraded mode
    of the start-up guard check)."""
    assert 'Object.hasOwn(cls, "_handle_comm_msg")' in _plotly.LOADER
