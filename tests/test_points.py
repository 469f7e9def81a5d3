"""The one table of hook points (nemo_explore/core/points.py) is true: the README's table is rendered from
it, and a real model fires exactly its points, each in the shape it says, writable exactly where it says."""

import itertools
from pathlib import Path

import pytest
import torch
from models import random_model

import nemo_explore as ne
from nemo_explore.core import hooks, points
from nemo_explore.core.layer_types import HOOK_PREFIX, LAYER_TYPES
from nemo_explore.core.points import BLOCK, MODEL, POINTS

README = Path(__file__).resolve().parents[1] / "README.md"
OPTIONS = {
    "defaults": {},
    "options": dict(
        state_positions=[0, -1], hidden_attn_heads=[3, 1], hidden_attn_window=(2, 6), pattern_window=(1, 5)
    ),
    "ungrouped": dict(ungroup_grouped_query_attention=True),
}


def readme_table() -> str:
    """The table under the README's "## Hook points": the first run of lines there that start with '|'."""
    section = README.read_text(encoding="utf-8").split("\n## Hook points\n", 1)[1].split("\n## ", 1)[0]
    lines = itertools.dropwhile(lambda line: not line.startswith("|"), section.splitlines())
    return "\n".join(itertools.takewhile(lambda line: line.startswith("|"), lines))


def test_readme_hook_table_is_the_rendered_table():
    assert readme_table() == points.markdown_table(), "README.md's table: paste points.markdown_table()"


def expected_names(layer_types: list[str]) -> list[str]:
    """The forward order spelt out for a model: the embedding, then block by block the stream in, the
    norm's scale and output, the mixer's points (the table's order), what the mixer adds and the stream
    out, then the final norm's scale and output."""
    assert {p.name for p in POINTS if p.level == BLOCK} == {
        "hook_resid_pre", "hook_scale", "hook_mixer_in", "hook_mixer_out", "hook_resid_post"
    }  # fmt: skip
    assert [p.name for p in POINTS if p.level == MODEL] == [
        "hook_embed", "ln_final.hook_scale", "ln_final.hook_normalized"
    ]  # fmt: skip
    names = ["hook_embed"]
    for i, kind in enumerate(layer_types):
        mixer = [f"{HOOK_PREFIX[kind]}.{p.name}" for p in POINTS if p.kind == kind]
        before = ["hook_resid_pre", "hook_scale", "hook_mixer_in"]
        names += [f"blocks.{i}.{n}" for n in (*before, *mixer, "hook_mixer_out", "hook_resid_post")]
    return [*names, "ln_final.hook_scale", "ln_final.hook_normalized"]


@pytest.fixture(scope="module")
def model():
    return ne.HookedNemotronH(random_model("M*-EM"))


def tokens(b: int = 2, p: int = 9) -> torch.Tensor:
    return torch.randint(3, 97, (b, p), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_a_real_model_fires_exactly_the_tables_points_in_its_shapes(model, options, monkeypatch):
    asked = set()  # every point a mixer of this model asks whether anyone wants, or fires
    wants, fire = hooks.Fire.wants, hooks.Fire.__call__

    def spy_wants(self, point):
        if self.registry is model._registry:
            asked.add(self.prefix + point)
        return wants(self, point)

    def spy_fire(self, point, value):
        if self.registry is model._registry:
            asked.add(self.prefix + point)
        return fire(self, point, value)

    monkeypatch.setattr(hooks.Fire, "wants", spy_wants)
    monkeypatch.setattr(hooks.Fire, "__call__", spy_fire)
    assert set(model.layer_types) == set(LAYER_TYPES)
    x = tokens()
    _, cache = model.run_with_cache(x, names_filter=None, **options)
    names = expected_names(model.layer_types)
    assert list(cache) == names
    assert asked and asked <= set(names)  # no mixer fires a point the table lacks
    size = points.sizes(model.config, *x.shape, **options)
    assert {n: tuple(t.shape) for n, t in cache.items()} == {n: points.row(n).size(size) for n in names}


def test_exactly_the_read_only_rows_refuse_a_write(model):
    def write(t, hook):
        return t.clone()  # the same values: a write all the same

    writable = [n for n in model.hook_names() if points.row(n).writable]
    model.run_with_hooks(tokens(), fwd_hooks=[(n, write) for n in writable])
    read_only = [n for n in model.hook_names() if not points.row(n).writable]
    assert read_only
    for name in read_only:
        with pytest.raises(ne.ReadOnlyHookError, match="is read-only"):
            model.run_with_hooks(tokens(), fwd_hooks=[(name, write)])


def test_rows_agree_with_themselves():
    s = points.sizes(ne.small_config(pattern="M*-E"), 2, 9)
    for p in POINTS:
        assert len(p.shape.split()) == len(p.size(s)), p.name  # the README's shape has one word per axis
        assert (p.kind is None) == (p.level in (MODEL, BLOCK)), p.name
        assert p.writable or (p.derived and "read-only" in p.what), p.name
    templates = [p.template for p in POINTS]
    assert len(set(templates)) == len(templates)
    assert POINTS[0].joins is None
    shared = ("level", "kind", "shape", "size", "what")
    for above, p in itertools.pairwise(POINTS):  # a row that joins a line shares its shape and description
        assert p.joins is None or all(getattr(p, f) == getattr(above, f) for f in shared), p.name


def test_row_of_a_name():
    assert points.row("blocks.12.attn.hook_pattern").name == "hook_pattern"
    assert points.row("ln_final.hook_normalized").level == MODEL
    assert points.row("blocks.0.hook_resid_post").level == BLOCK
    for wrong in ("blocks.0.hook_embed", "blocks.1.hook_q", "hook_resid_pre", "blocks.x.attn.hook_q"):
        with pytest.raises(KeyError):
            points.row(wrong)
