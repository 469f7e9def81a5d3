"""The check that the instrumented forwards still mirror the installed transformers.

Before the first instrumented forward of a layer kind runs in a process, ``ensure(kind)`` builds a small
random Nemotron-H from the installed classes (all four layer types, two Mamba chunks) and runs it as HF
does: a left-padded prefill on a fresh cache, a three-token continuation on that cache (chunked prefill),
two decoding steps and a forward without a cache. Then it runs the same steps with every point of that
kind observed. Logits and the cache's contents must be equal bit for bit, and the attention pattern read
on the side times v must give HF's attention output. A renamed keyword, a changed cache API or changed
math inside a mixer's forward shows up as a ``MirrorError`` naming the installed and the verified
releases, before any user number is computed. Each kind is checked once per process.

The check runs what the small model exercises. Branches it does not reach (other hardware kernels,
training) are covered by a second, static signal: a fingerprint of the HF code each kind mirrors
(``versions.MIRRORED``), compared with that of the releases the test suite ran on. Code that is new
but passes the check gives a ``MirrorWarning``, once.

Residual-stream points (``hook_embed``, ``blocks.{i}.hook_resid_pre`` / ``hook_mixer_in`` /
``hook_mixer_out`` / ``hook_resid_post``, ``ln_final.hook_normalized``) are plain torch hooks on HF's
modules: they mirror nothing and need no check.
"""

from __future__ import annotations

import inspect
import os
import time
import warnings

import torch

from .configs import small_config
from .hook_names import MIXER_POINTS
from .hooks import Fire, HookRegistry
from .instrument import instrument_mixer
from .layer_types import ATTENTION, HOOK_PREFIX, LAYER_TYPES, parse_pattern
from .mixers.attention import pattern_times_v
from .versions import (
    NEWEST_VERIFIED,
    OLDEST_VERIFIED,
    VERIFIED_CODE,
    MirrorError,
    MirrorWarning,
    cache_keyword,
    code_fingerprints,
    drift_error,
    installed,
)

ACCEPT_ENV = "NEMO_EXPLORE_ACCEPT_DRIFT"
_checked: dict[str, MirrorError | None] = {}  # kind -> None (mirrors) or the error it raised
_reference: dict | None = None  # the test model and HF's own results on it
_accepted = False
_fingerprints: dict[str, str] | None = None  # of the installed modeling code, read once
timings: dict[str, float] = {}  # kind (and "reference") -> seconds the check took in this process


def accept_risk() -> None:
    """Skip the check from now on in this process (also: environment ``NEMO_EXPLORE_ACCEPT_DRIFT=1``):
    hook points inside mixers then run unverified on the installed transformers."""
    global _accepted
    _accepted = True


def reset() -> None:
    """Forget every result, so that the next instrumented forward checks again (after patching HF)."""
    global _reference, _accepted
    _checked.clear()
    timings.clear()
    _reference, _accepted = None, False


def ensure(kind: str) -> None:
    """Raise ``MirrorError`` unless the instrumented forward of ``kind`` mirrors the installed HF code."""
    if kind not in _checked:
        if _accepted or os.environ.get(ACCEPT_ENV, "") not in ("", "0"):
            warnings.warn(
                f"nemo_explore: the mirror check is off; {kind} hook points run unverified on "
                f"transformers {installed()}",
                stacklevel=2,
            )
            _checked[kind] = None
            return
        _checked[kind] = _check(kind)
        if _checked[kind] is None and _installed_fingerprints()[kind] not in VERIFIED_CODE[kind]:
            warnings.warn(
                f"transformers {installed()} ships Nemotron-H {kind} code that differs from every release "
                f"nemo_explore was verified on ({OLDEST_VERIFIED} to {NEWEST_VERIFIED}). A bit-for-bit "
                "self-check on a small model passed, so the hook points are exact on the paths it covers; "
                f"install transformers=={NEWEST_VERIFIED} for paths it may not (other kernels, training).",
                MirrorWarning,
                stacklevel=3,
            )
    if _checked[kind] is not None:
        raise _checked[kind].with_traceback(None)  # the same error each time, not a growing traceback


def _installed_fingerprints() -> dict[str, str]:
    global _fingerprints
    if _fingerprints is None:
        from transformers.models.nemotron_h import modeling_nemotron_h

        with open(inspect.getsourcefile(modeling_nemotron_h), encoding="utf-8") as f:
            _fingerprints = code_fingerprints(f.read())
    return _fingerprints


def check_all() -> dict[str, float]:
    """Check every kind now (``ensure`` does it lazily); returns the seconds each took."""
    for kind in LAYER_TYPES:
        ensure(kind)
    return dict(timings)


# ---------------------------------------------------------------------------------------------- the check
def _check(kind: str) -> MirrorError | None:
    start, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs fastest on one thread, and never waits for a busy one
    try:
        ref = _hf_reference()
        registry, seen = _observe_everything(ref["layer_types"], kind)
        model = ref["model"]
        detach = [
            instrument_mixer(block.mixer, kind, Fire(registry, i, kind, f"blocks.{i}.{HOOK_PREFIX[kind]}."))
            for i, block in enumerate(model.model.layers)
            if ref["layer_types"][i] == kind
        ]
        try:
            ours = _run_steps(model, ref["steps"], seen)
        finally:
            for undo in detach:
                undo()
        problem = _compare(ref["results"], ours) or (_pattern_problem(seen) if kind == ATTENTION else None)
    except MirrorError as err:
        return err
    except Exception as err:  # a changed cache API or signature: the mirror no longer fits
        error = drift_error(f"The instrumented {kind} forward failed on a small test model: {err!r}")
        error.__cause__ = err
        return error
    finally:
        torch.set_num_threads(threads)
        timings[kind] = time.perf_counter() - start
    if problem:
        return drift_error(f"The instrumented {kind} forward no longer reproduces HF's: {problem}")
    return None


def _hf_reference() -> dict:
    """The test model and its inputs, and HF's own results on them (built once per process)."""
    global _reference
    if _reference is None:
        start = time.perf_counter()
        model = _test_model()
        steps = _steps(model.config.vocab_size)
        _reference = dict(
            model=model,
            steps=steps,
            layer_types=parse_pattern(model.config.layers_block_type),
            results=_run_steps(model, steps, {}),
        )
        timings["reference"] = time.perf_counter() - start
    return _reference


def _test_model():
    """All four layer types, 2 Mamba groups, grouped-query attention, chunk 4 (the prefill spans two
    chunks), group-limited routing through a latent projection; parameters moved off HF's init values so
    that dt, A, D, the norms and the router's bias all matter."""
    from transformers import NemotronHForCausalLM

    # leave the user's random state alone, and build on the CPU in float32 whatever their defaults are
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(0)
        config = small_config("all", chunk_size=4, n_group=2, topk_group=1, moe_latent_size=16)
        model = NemotronHForCausalLM(config).float().eval()
        with torch.no_grad():
            for name, p in [*model.named_parameters(), *model.named_buffers()]:
                if name.endswith(("A_log", "D", "dt_bias", "norm.weight", "norm_f.weight")):
                    p.add_(0.3 * torch.randn_like(p))
                elif name.endswith("e_score_correction_bias"):
                    p.normal_(0, 0.05)
    return model


def _steps(vocab: int) -> list[dict]:
    """Prefill (row 1 left-padded by two), a 3-token continuation, two decoding steps; then no cache."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    cuts = [(0, 7), (7, 10), (10, 11), (11, 12)]
    steps = [dict(ids=ids[:, a:b], mask=mask[:, :b], cache=True) for a, b in cuts]
    return [*steps, dict(ids=ids[:, :9], mask=mask[:, :9], cache=False)]


def _run_steps(model, steps: list[dict], seen: dict) -> list[tuple[str, torch.Tensor]]:
    """Run ``steps`` on ``model``; returns the logits of each and, at the end, every cache tensor."""
    from transformers import DynamicCache

    cache, out = DynamicCache(config=model.config), []
    with torch.no_grad():
        for n, step in enumerate(steps):
            seen["step"], seen["cached"] = n, step["cache"]
            kw = dict(use_cache=True, **{cache_keyword(model): cache}) if step["cache"] else {}
            logits = model(input_ids=step["ids"], attention_mask=step["mask"], **kw).logits
            out.append((f"logits of step {n} ({_describe(step)})", logits))
    for i, layer in enumerate(cache.layers):
        for attr in ("keys", "values", "conv_states", "recurrent_states"):
            value = getattr(layer, attr, None)
            for j, t in enumerate(value if isinstance(value, (list, tuple)) else [value]):
                if isinstance(t, torch.Tensor):
                    out.append((f"cache {attr}[{j}] of block {i} after the last cached step", t.clone()))
    return out


def _describe(step: dict) -> str:
    if not step["cache"]:
        return "forward without a cache"
    return f"{step['ids'].shape[1]} tokens on the cache"


def _observe_everything(layer_types: list[str], kind: str) -> tuple[HookRegistry, dict]:
    """A registry observing every mixer point of ``kind``'s blocks; attention values land in ``seen``."""
    registry, seen = HookRegistry(), {"attention": []}

    def observe(tensor, hook):
        if hook.layer_type == ATTENTION:
            if hook.short == "hook_q":  # the first point of an attention call
                record = {"step": seen["step"], "cached": seen["cached"], "layer": hook.layer}
                seen["attention"].append(record)
            seen["attention"][-1][hook.short] = tensor.detach().clone()

    for i, t in enumerate(layer_types):
        if t == kind:
            for point in MIXER_POINTS[kind]:
                registry.add(f"blocks.{i}.{HOOK_PREFIX[kind]}.{point}", observe)
    return registry, seen


def _compare(expected: list, got: list) -> str | None:
    if [name for name, _ in expected] != [name for name, _ in got]:
        return "the cache holds different tensors"
    for (name, want), (_, have) in zip(expected, got, strict=True):
        if want.shape != have.shape:
            return f"{name}: shape {tuple(have.shape)} instead of {tuple(want.shape)}"
        if not torch.equal(want, have):
            return f"{name}: off by up to {(want - have).abs().max().item():.3g}"
    return None


def _pattern_problem(seen: dict) -> str | None:
    """Each step's pattern times all values so far must give HF's attention output (z)."""
    cached_v: dict[int, torch.Tensor] = {}  # layer -> the values its cache holds so far (b p h_kv d)
    for record in seen["attention"]:
        step, layer, v = record["step"], record["layer"], record["hook_v"]
        if record["cached"]:
            v = cached_v[layer] = torch.cat([cached_v[layer], v], dim=1) if layer in cached_v else v
        z = pattern_times_v(record["hook_pattern"], v.transpose(1, 2))
        err = (z - record["hook_z"]).abs().max().item()
        if err > 1e-5:
            return (
                f"hook_pattern of block {layer} at step {step} does not reproduce the attention output "
                f"(off by {err:.3g}): the mask no longer means what the mirror assumes"
            )
    return None
