"""Swapping a mixer's forward for the instrumented one (``mixers/``), and back."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from transformers.integrations.accelerate import force_accelerate_hooks

from ..core.hooks import Fire
from ..core.layer_types import ATTENTION, MAMBA, MLP, MOE
from .mixers import attention_forward, mamba_forward, mlp_forward, moe_forward

MIXER_FORWARD = {ATTENTION: attention_forward, MAMBA: mamba_forward, MLP: mlp_forward, MOE: moe_forward}
# Submodules whose weights an instrumented forward reads without calling them: their accelerate hooks
# (offloaded weights) must fire, as HF's own Mamba forward does for conv1d.
_READ_DIRECTLY = {MAMBA: "conv1d", MOE: "gate"}


def instrument_mixer(mixer, kind: str, fire: Fire) -> Callable[[], None]:
    """Make ``mixer`` (an HF block's mixer of layer type ``kind``) run its instrumented forward, firing
    ``fire``'s hooks; under accelerate's hook, if any. Returns the function that undoes it."""
    forward = MIXER_FORWARD[kind]
    attr = "_old_forward" if hasattr(mixer, "_hf_hook") and hasattr(mixer, "_old_forward") else "forward"
    had = attr in mixer.__dict__
    original = mixer.__dict__.get(attr)

    def instrumented(module, *args, **kwargs):
        return forward(module, fire, *args, **kwargs)

    if kind in _READ_DIRECTLY:
        instrumented = force_accelerate_hooks(_READ_DIRECTLY[kind])(instrumented)
    setattr(mixer, attr, functools.partial(_routed_as_hf(mixer, instrumented), mixer))

    def detach() -> None:
        if had:
            setattr(mixer, attr, original)
        else:
            delattr(mixer, attr)

    return detach


def _routed_as_hf(mixer, forward: Callable) -> Callable:
    """``forward`` under the routing HF's own forward of this mixer runs under, if any.

    With the ``kernels`` package (a dependency of transformers >= 5.25), HF decorates a mixer class with
    ``use_kernelized_func``: its forward sends each HF module function it calls (conv, scan, ...) to this
    mixer's own copy, which ``kernelize`` / ``use_kernels=True`` may have swapped for a hub kernel. The
    instrumented forward replaces ``forward`` on the instance, so it gets the same decorator, over the same
    functions (those named in the mixer's ``_kernel_funcs``); without it, a kernelized model would run
    HF's default functions here and its hub kernels in HF's forward.
    """
    own = mixer.__dict__.get("_kernel_funcs")
    if not own:
        return forward
    from transformers.integrations.hub_kernels import use_kernelized_func  # noqa: PLC0415

    hf = sys.modules[type(mixer).__module__]
    funcs = [f for f in vars(hf).values() if getattr(f, "kernel_layer_name", None) in own]
    return use_kernelized_func(funcs)(type("Routed", (), {"forward": forward})).forward
