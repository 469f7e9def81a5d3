"""The mirror guard: patch transformers the way a release might, and nemo_explore must raise a clear error
or stay exact — never return different numbers silently."""

import inspect
import re
import textwrap
import warnings

import pytest
import torch
from models import random_model
from transformers.models.nemotron_h import modeling_nemotron_h as hf_code

import nemo_explore as ne
from nemo_explore import guard
from nemo_explore.layer_types import LAYER_TYPES
from nemo_explore.mixers._call import CACHE_KEYWORDS
from nemo_explore.versions import (
    NEWEST_VERIFIED,
    VERIFIED_CODE,
    MirrorError,
    MirrorWarning,
    cache_keyword,
    code_fingerprints,
    installed,
)

# One line of HF's own forward, changed as a release might change it: kind -> (class, old, new).
MATH_CHANGES = {
    "mamba": ("NemotronHMamba2Mixer", "A = -torch.exp(", "A = -1.5 * torch.exp("),
    "attention": ("NemotronHAttention", "scaling=self.scaling,", "scaling=self.scaling * 1.5,"),
    "moe": ("NemotronHTopkRouter", "topk_weights * self.routed_scaling_factor", "topk_weights * 1.5"),
    "mlp": ("NemotronHMLP", "return self.down_proj(", "return 1.5 * self.down_proj("),
}
POINT = {  # a point of each kind in the 'M*-EM' test model
    "mamba": "blocks.0.mamba.hook_x",
    "attention": "blocks.1.attn.hook_q",
    "mlp": "blocks.2.mlp.hook_pre",
    "moe": "blocks.3.moe.hook_router_scores",
}


@pytest.fixture(autouse=True)
def fresh_guard():
    guard.reset()
    yield
    guard.reset()


def ids(b=2, p=9, seed=0):
    return torch.randint(3, 97, (b, p), generator=torch.Generator().manual_seed(seed))


def patch_forward(monkeypatch, cls_name: str, old: str, new: str) -> None:
    """Replace ``cls.forward`` by HF's own source with one edit, compiled in HF's module."""
    cls = getattr(hf_code, cls_name)
    source = textwrap.dedent(inspect.getsource(cls.forward))
    assert source.count(old) == 1, f"{old!r} not found once in {cls_name}.forward"
    namespace: dict = {}
    exec(compile(source.replace(old, new), hf_code.__file__, "exec"), vars(hf_code), namespace)
    monkeypatch.setattr(cls, "forward", namespace["forward"])


def test_the_installed_transformers_mirrors_exactly():
    with warnings.catch_warnings():
        warnings.simplefilter("error", MirrorWarning)  # the installed release is a verified one
        took = guard.check_all()
    assert set(LAYER_TYPES) <= set(took)


def test_installed_code_is_a_verified_one():
    with open(hf_code.__file__, encoding="utf-8") as f:
        prints = code_fingerprints(f.read())
    assert all(prints[kind] in VERIFIED_CODE[kind] for kind in LAYER_TYPES), (installed(), prints)


@pytest.mark.parametrize("kind", list(MATH_CHANGES))
def test_changed_math_inside_a_mixer_is_an_error(monkeypatch, kind):
    patch_forward(monkeypatch, *MATH_CHANGES[kind])
    hf = random_model("M*-EM", seed=3)
    model = ne.HookedNemotronH(hf)
    drift = rf"(?s){kind} forward no longer reproduces.*{installed()} is installed"
    with pytest.raises(MirrorError, match=drift):
        model.run_with_cache(ids(), names_filter=POINT[kind])
    with pytest.raises(MirrorError, match=rf"{NEWEST_VERIFIED}"):  # the same error, every time
        model.run_with_hooks(ids(), fwd_hooks=[(POINT[kind], lambda t, hook: None)])
    for other in set(MATH_CHANGES) - {kind}:  # other kinds still mirror their own code
        _, cache = model.run_with_cache(ids(), names_filter=POINT[other])
        assert POINT[other] in cache
    # the residual stream mirrors nothing: it keeps working, equal to HF's (patched) model
    logits, cache = model.run_with_cache(ids(), names_filter=lambda n: "resid" in n)
    ref = hf(ids(), output_hidden_states=True)
    assert torch.equal(logits, ref.logits)
    block_1 = hf.model.layers[1](cache["blocks.1.hook_resid_pre"])
    assert torch.equal(cache["blocks.1.hook_resid_post"], block_1)


def test_a_renamed_cache_keyword_is_an_error(monkeypatch):
    """A release in which the block hands its mixers the cache as ``state=``: HF itself works (its mixers
    take the new name), the instrumented forwards refuse it, by name."""
    for cls in (hf_code.NemotronHMamba2Mixer, hf_code.NemotronHAttention):
        original = cls.forward
        name = next(n for n in CACHE_KEYWORDS if n in inspect.signature(original).parameters)

        def forward(self, *args, state=None, _original=original, _name=name, **kwargs):
            return _original(self, *args, **{_name: state}, **kwargs)

        monkeypatch.setattr(cls, "forward", forward)
    source = textwrap.dedent(inspect.getsource(hf_code.NemotronHBlock.forward))
    handed = r"\b(?:cache|cache_params|past_key_values)=(cache|past_key_values)\b"
    source, renamed = re.subn(handed, r"state=\1", source)
    assert renamed == 2  # the Mamba call and the attention call
    namespace: dict = {}
    exec(compile(source, hf_code.__file__, "exec"), vars(hf_code), namespace)
    monkeypatch.setattr(hf_code.NemotronHBlock, "forward", namespace["forward"])

    hf = random_model("M*-EM", seed=3)
    model = ne.HookedNemotronH(hf)
    hf.generate(ids(), max_new_tokens=3, do_sample=False, pad_token_id=0)  # HF itself runs
    refused = r"{} mixer of block \d was handed keyword argument\(s\) state"
    with pytest.raises(MirrorError, match=refused.format("mamba")):
        model.generate(ids(), max_new_tokens=3, fwd_hooks=[(POINT["mamba"], lambda t, hook: None)])
    with pytest.raises(MirrorError, match=refused.format("attention")):
        model.generate(ids(), max_new_tokens=3, fwd_hooks=[(POINT["attention"], lambda t, hook: None)])


def test_a_change_in_a_function_both_call_stays_exact(monkeypatch):
    """HF's scan is called through HF's module by both sides: a release that changes it changes both."""
    scan = hf_code.mamba2_chunk_scan

    def changed(*args, **kwargs):
        out = scan(*args, **kwargs)
        return (out[0] * 1.5, *out[1:]) if isinstance(out, tuple) else out * 1.5

    monkeypatch.setattr(hf_code, "mamba2_chunk_scan", changed)
    hf = random_model("M*-EM", seed=3)
    model = ne.HookedNemotronH(hf)
    ref = hf.generate(ids(), max_new_tokens=4, do_sample=False, pad_token_id=0)
    with model.hooks([(lambda n: ".mamba." in n, lambda t, hook: None)]):
        assert torch.equal(model.generate(ids(), max_new_tokens=4), ref)
        assert torch.equal(model(ids()), hf(ids()).logits)


def test_unknown_keywords_are_refused_by_name():
    hf = random_model("M*-EM", seed=3)
    model = ne.HookedNemotronH(hf)
    h = torch.randn(1, 4, hf.config.hidden_size)
    with model.hooks([(POINT["mamba"], lambda t, hook: None), (POINT["mlp"], lambda t, hook: None)]):
        with pytest.raises(MirrorError, match="mamba mixer of block 0 was handed keyword argument.*seq_idx"):
            hf.model.layers[0].mixer(h, seq_idx=torch.zeros(1, 4, dtype=torch.int32))
        with pytest.raises(MirrorError, match="mlp mixer of block 2 was handed keyword argument.*use_cache"):
            hf.model.layers[2].mixer(h, use_cache=True)
        with pytest.raises(MirrorError, match="two caches"):
            hf.model.layers[0].mixer(h, cache=None, cache_params=None, past_key_values=None)


def test_new_code_that_passes_the_check_warns(monkeypatch):
    monkeypatch.setitem(VERIFIED_CODE, "mlp", {})
    with pytest.warns(MirrorWarning, match=r"ships Nemotron-H mlp code that differs"):
        guard.ensure("mlp")


@pytest.mark.parametrize("how", ["env", "call"])
def test_accepting_the_risk_skips_the_check(monkeypatch, how):
    patch_forward(monkeypatch, *MATH_CHANGES["mlp"])
    if how == "env":
        monkeypatch.setenv(guard.ACCEPT_ENV, "1")
    else:
        guard.accept_risk()
    model = ne.HookedNemotronH(random_model("M*-EM", seed=3))
    with pytest.warns(UserWarning, match="mirror check is off"):
        model.run_with_cache(ids(), names_filter=POINT["mlp"])


def test_the_check_leaves_the_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    guard.check_all()
    assert torch.equal(torch.rand(3), expected)


def test_cache_keyword_follows_the_release():
    """5.24 renamed the keyword the model's forward takes its cache under (it was ``past_key_values``)."""
    from packaging.version import Version

    hf = random_model("M*-E")
    expected = "cache" if Version(installed()) >= Version("5.24.0") else "past_key_values"
    assert cache_keyword(hf) == expected
