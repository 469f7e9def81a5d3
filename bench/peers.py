"""The same residual-stream caching done by peer libraries, when they are installed (timed by bench_hooks)."""

from __future__ import annotations

from collections.abc import Callable


def nnsight_residual_cache(hf, ids) -> Callable[[], list] | None:
    """nnsight: the four residual-stream points of every block (block input, norm output, mixer output,
    block output), saved in one trace. None if nnsight is not installed."""
    try:
        from nnsight import NNsight
    except ImportError:
        return None
    traced = NNsight(hf)

    def run() -> list:
        saved: list = []
        with traced.trace(ids):
            for layer in traced.model.layers:
                saved.append(layer.input.save())
                saved.append(layer.norm.output.save())
                saved.append(layer.mixer.output.save())
                saved.append(layer.output.save())
        return saved

    return run
