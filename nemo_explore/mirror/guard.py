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

from ..checkpoints.configs import small_config
from ..core.hook_names import MIXER_POINTS
from ..core.hooks import Fire, HookRegistry
from ..core.layer_types import ATTENTION, HOOK_PREFIX, LAYER_TYPES, MAMBA, parse_pattern
from .instrument import instrument_mixer
from .mixers.attention import pattern_times_v
from .versions import (
    NEWEST_VERIFIED,
    OLDEST_VERIFIED,
    REFUSED,
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


def ensure(*kinds: str) -> None:
    """Raise ``MirrorError`` unless the instrumented forwards of ``kinds`` mirror the installed HF code.

    Kinds not checked yet in this process are checked in one run of the test model with all of them
    instrumented; only if that run fails is each checked alone, to say which one drifted."""
    new = [kind for kind in dict.fromkeys(kinds) if kind not in _checked]
    if new and (_accepted or os.environ.get(ACCEPT_ENV, "") not in ("", "0")):
        warnings.warn(
            f"nemo_explore: the mirror check is off; {', '.join(new)} hook points run unverified on "
            f"transformers {installed()}",
            stacklevel=2,
        )
        _checked.update(dict.fromkeys(new))
    elif new:
        refused = _refused()
        if refused is not None or len(new) == 1 or _check(tuple(new)) is not None:
            _checked.update({kind: refused or _check((kind,)) for kind in new})
        else:
            _checked.update(dict.fromkeys(new))
        for kind in new:
            if _checked[kind] is None and _installed_fingerprints()[kind] not in VERIFIED_CODE[kind]:
                warnings.warn(
                    f"transformers {installed()} ships Nemotron-H {kind} code that differs from every "
                    f"release nemo_explore was verified on ({OLDEST_VERIFIED} to {NEWEST_VERIFIED}). A "
                    "bit-for-bit self-check on a small model passed, so the hook points are exact on the "
                    f"paths it covers; install transformers=={NEWEST_VERIFIED} for paths it may not (other "
                    "kernels, training).",
                    MirrorWarning,
                    stacklevel=3,
                )
    for kind in kinds:
        if _checked[kind] is not None:
            raise _checked[kind].with_traceback(None)  # the same error each time, not a growing traceback


def _refused() -> MirrorError | None:
    """The error for a release whose whole test suite failed (``versions.REFUSED``), else None."""
    reason = REFUSED.get(installed())
    if reason is None:
        return None
    return drift_error(f"transformers {installed()} was tested and refused ({reason}).")


def _installed_fingerprints() -> dict[str, str]:
    global _fingerprints
    if _fingerprints is None:
        from transformers.models.nemotron_h import modeling_nemotron_h

        with open(inspect.getsourcefile(modeling_nemotron_h), encoding="utf-8") as f:
            _fingerprints = code_fingerprints(f.read())
    return _fingerprints


def check_all() -> dict[str, float]:
    """Check every kind now (``ensure`` does it lazily); returns the seconds each check took."""
    ensure(*LAYER_TYPES)
    return dict(timings)


# ---------------------------------------------------------------------------------------------- the check
def _check(kinds: tuple[str, ...]) -> MirrorError | None:
    """Run the test model as HF does, then with every point of ``kinds`` observed; the error if the runs
    differ anywhere (or the mirror fails), else None."""
    what = " and ".join(kinds)
    start, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs fastest on one thread, and never waits for a busy one
    try:
        ref = _hf_reference()
        layer_types, model = ref["layer_types"], ref["model"]
        registry, seen = _observe_everything(layer_types, kinds)
        seen["D"] = {
            i: block.mixer.D.detach()
            for i, block in enumerate(model.model.layers)
            if hasattr(block.mixer, "D")
        }
        detach = [
            instrument_mixer(block.mixer, kind, Fire(registry, i, kind, f"blocks.{i}.{HOOK_PREFIX[kind]}."))
            for i, (block, kind) in enumerate(zip(model.model.layers, layer_types, strict=True))
            if kind in kinds
        ]
        try:
            ours = _run_steps(model, ref["steps"], seen)
        finally:
            for undo in detach:
                undo()
        expected = dict(ref["results"])
        problem = _compare(ref["results"], ours) or next(
            (p for kind in kinds if (p := _derived_problem(kind, seen, expected))), None
        )
    except MirrorError as err:
        return err
    except Exception as err:  # a changed cache API or signature: the mirror no longer fits
        error = drift_error(f"The instrumented {what} forward failed on a small test model: {err!r}")
        error.__cause__ = err
        return error
    finally:
        torch.set_num_threads(threads)
        timings[what] = time.perf_counter() - start
    if problem:
        return drift_error(f"The instrumented {what} forward no longer reproduces HF's: {problem}")
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


def _run_steps(model, steps: list[dict], seen: dict) -> list[tuple[str, object]]:
    """Run ``steps`` on ``model``, then the generation rounds; returns every logit, token and the whole
    observable state of each cache (``_cache_state``), named for the error message."""
    from transformers import DynamicCache

    cache, out = DynamicCache(config=model.config), []
    with torch.no_grad():
        for n, step in enumerate(steps):
            seen["step"], seen["cached"] = n, step["cache"]
            kw = dict(use_cache=True, **{cache_keyword(model): cache}) if step["cache"] else {}
            logits = model(input_ids=step["ids"], attention_mask=step["mask"], **kw).logits
            out.append((f"logits of step {n} ({_describe(step)})", logits))
            if step["cache"]:
                out += _cache_state(cache, f"after step {n}")
    seen["cached"] = None  # generation crops and re-runs: no pattern check from here on
    return out + _generation_rounds(model, steps[0]["ids"])


def _generation_rounds(model, ids: torch.Tensor) -> list[tuple[str, object]]:
    """Greedy ``generate`` twice on one cache (the second continues where the first stopped) and, where
    the installed release allows it, prompt-lookup decoding (drafts verified in one call, then cropped).
    Returns the logits of every step, the tokens and each cache's state."""
    from transformers import DynamicCache

    out = []
    settings = dict(do_sample=False, return_dict_in_generate=True, output_logits=True, pad_token_id=0)
    rounds = [("generate", ids[:1, :5], ids[:1, 5:7], {})]
    if not getattr(model, "_is_stateful", False):  # transformers >= 5.25 allows assisted decoding
        repeated = torch.cat([ids[:1, :6], ids[:1, :3]], dim=1)  # ends on a 3-gram seen before: drafts
        rounds.append(("prompt-lookup generate", repeated, ids[:1, 7:8], dict(prompt_lookup_num_tokens=3)))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # generation's advice to set a config is not for the user
        for what, prompt, more, extra in rounds:
            cache = DynamicCache(config=model.config)
            kw = {**settings, **extra, cache_keyword(model): cache}
            try:
                first = model.generate(prompt, max_new_tokens=4, **kw)
                again = model.generate(torch.cat([first.sequences, more], dim=1), max_new_tokens=3, **kw)
            except Exception as err:  # noqa: BLE001 (what HF's own run did not do is the finding)
                out.append((f"{what} twice on one cache", f"raised {err!r}"))
                continue
            out.append((f"{what} twice on one cache", "ran"))
            for n, result in enumerate((first, again)):
                name = f"{what} call {n + 1} on one cache"
                out.append((f"tokens of {name}", result.sequences))
                out += [(f"logits of {name}, token {k}", t) for k, t in enumerate(result.logits)]
            out += _cache_state(cache, f"after {what} twice on one cache")
    return out


def _cache_state(cache, when: str) -> list[tuple[str, object]]:
    """Everything a cache holds: ``get_seq_length()`` and each layer's attributes (tensors, lists and
    dicts of them, counters, flags), so that bookkeeping a mirror skipped shows up, not just the states."""
    out = [(f"cache.get_seq_length() {when}", _plain(cache.get_seq_length()))]
    for i, layer in enumerate(cache.layers):
        for attr, value in sorted(vars(layer).items()):
            out += [(f"cache.layers[{i}].{attr}{key} {when}", v) for key, v in _leaves(value)]
    return out


def _leaves(value, key: str = ""):
    """(key path, value) of every tensor or plain value inside nested lists, tuples and dicts."""
    if isinstance(value, (list, tuple)):
        yield f"{key} (length)", len(value)
        for j, item in enumerate(value):
            yield from _leaves(item, f"{key}[{j}]")
    elif isinstance(value, dict):
        for k in sorted(value, key=repr):
            yield from _leaves(value[k], f"{key}[{k!r}]")
    else:
        yield key, _plain(value)


def _plain(value):
    """A copy of a tensor (later steps edit caches in place); any other value as it is, or its repr."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return value if isinstance(value, (bool, int, float, str, type(None))) else repr(value)


def _describe(step: dict) -> str:
    if not step["cache"]:
        return "forward without a cache"
    return f"{step['ids'].shape[1]} tokens on the cache"


def _observe_everything(layer_types: list[str], kinds: tuple[str, ...]) -> tuple[HookRegistry, dict]:
    """A registry observing every mixer point of the blocks of ``kinds``. During the steps (not generation),
    each mixer call's values land in ``seen["calls"]``: one dict per call, with its step and block."""
    registry, seen = HookRegistry(), {"calls": []}

    def observe(tensor, hook):
        if seen["cached"] is None:
            return
        calls = seen["calls"]
        if not calls or (calls[-1]["step"], calls[-1]["layer"]) != (seen["step"], hook.layer):
            calls.append(
                {"step": seen["step"], "cached": seen["cached"], "layer": hook.layer, "kind": hook.layer_type}
            )
        calls[-1][hook.short] = tensor.detach().clone()

    for i, kind in enumerate(layer_types):
        if kind in kinds:
            for point in MIXER_POINTS[kind]:
                registry.add(f"blocks.{i}.{HOOK_PREFIX[kind]}.{point}", observe)
    return registry, seen


def _compare(expected: list, got: list) -> str | None:
    """The first of HF's results (in the order they were made) that the mirror's run does not reproduce."""
    for (name, want), (got_name, have) in zip(expected, got, strict=False):  # lengths: below
        if got_name != name:
            return f"HF's run gave {name}, the mirror's {got_name}"
        if not isinstance(want, torch.Tensor) or not isinstance(have, torch.Tensor):
            if want != have:
                return f"{name}: {have!r} instead of {want!r}"
        elif want.shape != have.shape:
            return f"{name}: shape {tuple(have.shape)} instead of {tuple(want.shape)}"
        elif not torch.equal(want, have):
            if not want.is_floating_point():
                return f"{name}: {have.tolist()} instead of {want.tolist()}"
            return f"{name}: off by up to {(want.double() - have.double()).abs().max().item():.3g}"
    if len(expected) != len(got):
        return f"HF's run gave {len(expected)} results, the mirror's {len(got)}"
    return None


def _pattern_problem(seen: dict) -> str | None:
    """Each step's pattern times all values so far must give HF's attention output (z)."""
    cached_v: dict[int, torch.Tensor] = {}  # layer -> the values its cache holds so far (b p h_kv d)
    for record in (call for call in seen["calls"] if call["kind"] == ATTENTION):
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


def _derived_problem(kind: str, seen: dict, expected: dict) -> str | None:
    """The values the mirror computes on the side (not HF) checked against HF's results."""
    if kind == ATTENTION:
        return _pattern_problem(seen)
    if kind == MAMBA:
        return _state_problem(seen, expected)
    return None


def _state_problem(seen: dict, expected: dict) -> str | None:
    """Mamba's derived points against HF: after each cached step, ``hook_state`` and ``hook_state_norm`` at
    the last position must be the state HF leaves in its cache; where a call starts from a zero state,
    ``hook_hidden_attn`` times ``hook_x`` plus D x must rebuild ``hook_ssm_out``. To float rounding (1e-4 of
    the largest value): the mirror computes these by another algorithm than HF's scan."""

    def off(got: torch.Tensor, want: torch.Tensor) -> str | None:
        scale = want.abs().max().item()  # the test model's values are small: tolerance relative to them
        err = (got - want).abs().max().item()
        return None if err <= 1e-4 * scale else f"off by {err:.3g} on values up to {scale:.3g}"

    for call in (call for call in seen["calls"] if call["kind"] == MAMBA):
        step, layer = call["step"], call["layer"]
        if call["cached"]:
            state = expected[f"cache.layers[{layer}].recurrent_states[0] after step {step}"]
            for name, got, want in (
                ("hook_state", call["hook_state"][:, -1], state),
                ("hook_state_norm", call["hook_state_norm"][:, -1], state.float().flatten(2).norm(dim=-1)),
            ):
                if problem := off(got, want):
                    return f"{name} of block {layer} after step {step} is not the state HF caches ({problem})"
        if step == 0 or not call["cached"]:  # a call that starts from a zero state
            x, ssm_out, D = call["hook_x"], call["hook_ssm_out"], seen["D"][layer]
            rebuilt = torch.einsum("bhqk,bkhd->bqhd", call["hook_hidden_attn"], x) + D[:, None] * x
            if problem := off(rebuilt, ssm_out):
                return f"hook_hidden_attn of block {layer} at step {step} misses hook_ssm_out ({problem})"
    return None
