"""Peer libraries doing the same jobs, when they are installed (timed by bench_hooks next to nemo-explore).

Each returns ``{variant: fn}`` (empty if the library is missing); ``fn()`` returns the logits when the
library's call gives them, so the bench can say how far they are from HF's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch


def nnsight_residual_cache(hf, ids) -> dict[str, Callable[[], object]]:
    """nnsight: the four residual-stream points of every block (block input, norm output, mixer output,
    block output), saved in one trace."""
    try:
        from nnsight import NNsight
    except ImportError:
        return {}
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

    return {"nnsight: residual stream": run}


def transformerlens_bridge(hf, ids) -> dict[str, Callable[[], object]]:
    """TransformerLens' TransformerBridge, booted on a copy of the model (booting switches the model it is
    given to eager attention; the timed HF model stays on SDPA): its forward with no hooks, and its
    ``run_with_cache`` of every point it names."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoTokenizer
    except ImportError:
        return {}
    from nemo_explore.checkpoints import tiny_path

    twin = copy.deepcopy(hf)
    twin.config.architectures = ["NemotronHForCausalLM"]  # how the bridge picks its adapter
    tokenizer = AutoTokenizer.from_pretrained(tiny_path())  # any tokenizer: the bench feeds token ids
    bridge = TransformerBridge.boot_transformers("nemotron-h-bench", hf_model=twin, tokenizer=tokenizer)
    with torch.inference_mode():
        n_points = len(bridge.run_with_cache(ids)[1])
    return {
        "TransformerLens: no hooks": lambda: bridge(ids),
        f"TransformerLens: cache ({n_points} pts)": lambda: bridge.run_with_cache(ids)[0],
    }
