"""The mirror guard: patch transformers the way a release might, and nemo_explore must raise a clear error
or stay exact — never return different numbers silently."""

import ast
import inspect
import re
import textwrap
import types
import warnings

import pytest
import torch
from models import random_model
from transformers.models.nemotron_h import modeling_nemotron_h as hf_code

import nemo_explore as ne
from nemo_explore.core.layer_types import LAYER_TYPES
from nemo_explore.mirror import guard
from nemo_explore.mirror.mixers import mamba
from nemo_explore.mirror.mixers._call import CACHE_KEYWORDS
from nemo_explore.mirror.versions import (
    NEWEST_VERIFIED,
    VERIFIED_CODE,
    MirrorError,
    MirrorWarning,
    cache_keyword,
    code_fingerprints,
    installed,
)

# One line of HF's own code, changed as a release might change it: kind -> (class or function, old, new).
# The Mamba scan's A: in the mixer's forward up to 5.24, in mamba2_scan_forward (which both sides call,
# so only the points the mirror derives on the side can tell) from 5.25.
SCAN = "mamba2_scan_forward" if hasattr(hf_code, "mamba2_scan_forward") else "NemotronHMamba2Mixer"
MATH_CHANGES = {
    "mamba": (SCAN, "A = -torch.exp(", "A = -1.5 * torch.exp("),
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


def patch_forward(monkeypatch, name: str, old: str, new: str) -> None:
    """Replace a class's ``forward`` (or a module-level function) by HF's own source with one edit,
    compiled in HF's module."""
    with open(hf_code.__file__, encoding="utf-8") as f:
        text = f.read()
    node = next(n for n in ast.parse(text).body if getattr(n, "name", None) == name)
    if isinstance(node, ast.ClassDef):
        node = next(n for n in node.body if getattr(n, "name", None) == "forward")
    start = min([d.lineno for d in node.decorator_list] + [node.lineno])
    source = textwrap.dedent("\n".join(text.splitlines()[start - 1 : node.end_lineno]))
    assert source.count(old) == 1, f"{old!r} not found once in {name}"
    namespace: dict = {}
    exec(compile(source.replace(old, new), hf_code.__file__, "exec"), vars(hf_code), namespace)
    target = getattr(hf_code, name)
    if isinstance(target, type):
        monkeypatch.setattr(target, "forward", namespace["forward"])
    else:
        monkeypatch.setattr(hf_code, name, namespace[name])


def test_the_installed_transformers_mirrors_exactly():
    with warnings.catch_warnings():
        warnings.simplefilter("error", MirrorWarning)  # the installed release is a verified one
        took = guard.check_all()
    assert " and ".join(LAYER_TYPES) in took  # all kinds in one run of the test model
    assert all(guard._checked[kind] is None for kind in LAYER_TYPES)


def test_installed_code_is_a_verified_one():
    with open(hf_code.__file__, encoding="utf-8") as f:
        prints = code_fingerprints(f.read())
    assert all(prints[kind] in VERIFIED_CODE[kind] for kind in LAYER_TYPES), (installed(), prints)


@pytest.mark.parametrize("kind", list(MATH_CHANGES))
def test_changed_math_inside_a_mixer_is_an_error(monkeypatch, kind):
    patch_forward(monkeypatch, *MATH_CHANGES[kind])
    hf = random_model("M*-EM", seed=3)
    model = ne.HookedNemotronH(hf)
    drift = rf"(?s)The instrumented {kind} forward no longer reproduces.*{installed()} is installed"
    with pytest.raises(MirrorError, match=drift):  # all kinds at once: the one that drifted is named
        model.run_with_cache(ids(), names_filter=list(POINT.values()))
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


@pytest.mark.parametrize("scale", [1 + 1e-6, 1.5])
def test_a_change_in_a_function_both_call(monkeypatch, scale):
    """HF's scan is called through HF's module by both sides: a release (or a kernel) that changes it
    changes both, and the hooks stay exact. The points the mirror derives on the side (states, hidden
    attention) must still describe HF's scan: a rounding-level change passes, a change of the math is
    refused."""
    scan = hf_code.mamba2_chunk_scan

    def changed(*args, **kwargs):
        out = scan(*args, **kwargs)
        return (out[0] * scale, *out[1:]) if isinstance(out, tuple) else out * scale

    monkeypatch.setattr(hf_code, "mamba2_chunk_scan", changed)
    hf = random_model("M*-EM", seed=3)
    model = ne.HookedNemotronH(hf)
    ref = hf.generate(ids(), max_new_tokens=4, do_sample=False, pad_token_id=0)
    observe_all = [(lambda n: ".mamba." in n, lambda t, hook: None)]
    if scale == 1.5:
        with pytest.raises(MirrorError, match="hook_hidden_attn of block 0 at step 0 misses hook_ssm_out"):
            model.run_with_hooks(ids(), fwd_hooks=observe_all)
        return
    with model.hooks(observe_all):
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


def test_a_mirror_that_skips_the_cache_bookkeeping_is_refused(monkeypatch):
    """The Mamba steps written out as transformers <= 5.24 has them, on a release whose conv step also
    counts the cache's tokens and whose scan keeps states for assisted decoding's crop (5.25): every
    logit of a single call is equal, the cache after it is not. Refused, by what differs. On the releases
    whose own code those steps are, they are the mirror and pass."""
    monkeypatch.setattr(mamba, "hf_step", lambda hf, name: None)
    if not hasattr(hf_code, "causal_conv1d_forward"):
        guard.ensure("mamba")
        return
    with pytest.raises(MirrorError, match=r"cache\.get_seq_length\(\) after step 2: .* instead of"):
        guard.ensure("mamba")


def test_the_check_covers_the_whole_cache_and_generation():
    """What the check compares: the cache's bookkeeping after every cached step, two generate calls on one
    cache and, where the release allows assisted decoding, prompt-lookup decoding with its crops."""
    guard.ensure("mlp")
    names = [name for name, _ in guard._reference["results"]]
    assert "cache.get_seq_length() after step 2" in names
    assert any(n.startswith("logits of generate call 2 on one cache") for n in names)
    assisted = not getattr(hf_code.NemotronHForCausalLM, "_is_stateful", False)
    assert any(n.startswith("logits of prompt-lookup generate call 2") for n in names) == assisted
    if hasattr(hf_code, "causal_conv1d_forward"):  # the token count and the state history of 5.25
        assert any(".cumulative_length_linear after step 2" in n for n in names)
        assert any(".recurrent_states_history[0] (length) after prompt-lookup" in n for n in names)


def test_a_kernelized_mixer_is_hooked_under_its_own_kernels():
    """With the ``kernels`` package, HF's mixer forward sends the module functions it calls to the mixer's
    own copies, which ``kernelize`` may swap for hub kernels. A stand-in for such a kernel (the scan, 1%
    larger) changes HF's logits; hooked, the model must compute exactly those logits, not HF's defaults'."""
    from transformers.utils import is_kernels_available

    hf = random_model("M*-EM", seed=3)
    model = ne.HookedNemotronH(hf)
    mixer = hf.model.layers[0].mixer
    own = mixer.__dict__.get("_kernel_funcs")
    if own is None:  # no usable `kernels` package: HF calls the module functions directly, as the mirror does
        assert not is_kernels_available()
        return
    scan = next(f for f in own.values() if f.kernel_layer_name == hf_code.mamba2_chunk_scan.kernel_layer_name)
    default = type(scan).forward

    def kernel(self, *args, **kwargs):
        out = default(self, *args, **kwargs)
        return (out[0] * 1.01, *out[1:]) if isinstance(out, tuple) else out * 1.01

    plain = hf(ids()).logits
    scan.forward = types.MethodType(kernel, scan)
    kernelized = hf(ids()).logits
    assert not torch.equal(kernelized, plain)
    logits = model.run_with_hooks(ids(), fwd_hooks=[(POINT["mamba"], lambda t, hook: None)])
    assert torch.equal(logits, kernelized)
