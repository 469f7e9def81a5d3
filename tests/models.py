"""Random-weight Nemotron-H models of several shapes, built in-process for tests."""

from __future__ import annotations

import torch
from transformers import NemotronHConfig, NemotronHForCausalLM

from nemo_explore.checkpoints.configs import small_config


def tiny_config(pattern: str = "M*-EM", **overrides) -> NemotronHConfig:
    """The package's small test config (Mamba groups > 1, grouped-query attention, a chunk size shorter
    than the test sequences) with the given layer pattern."""
    return small_config(pattern=pattern, **overrides)


def random_model(pattern: str = "M*-EM", seed: int = 0, **overrides) -> NemotronHForCausalLM:
    """A random-weight model in eval mode, float32, with non-trivial Mamba dt / A / D parameters."""
    torch.manual_seed(seed)
    model = NemotronHForCausalLM(tiny_config(pattern, **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("A_log", "D", "dt_bias", "norm.weight", "norm_f.weight")):
                p.add_(0.3 * torch.randn_like(p))
            if name.endswith("e_score_correction_bias"):
                p.normal_(0, 0.05)
        for buf_name, b in model.named_buffers():
            if buf_name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.05)
    return model


def hooked_pair(pattern: str, seed: int, **overrides):
    """A random model and the HookedNemotronH wrapping it (the same object, nothing copied)."""
    import nemo_explore as ne

    hf = random_model(pattern, seed=seed, **overrides)
    return hf, ne.HookedNemotronH(hf)
