"""Swapping a mixer's forward for the instrumented one (``mixers/``), and back."""

from __future__ import annotations

import functools
from collections.abc import Callable

from transformers.integrations.accelerate import force_accelerate_hooks

from .hooks import Fire
from .layer_types import ATTENTION, MAMBA, MLP, MOE
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
    setattr(mixer, attr, functools.partial(instrumented, mixer))

    def detach() -> None:
        if had:
            setattr(mixer, attr, original)
        else:
            delattr(mixer, attr)

    return detach
