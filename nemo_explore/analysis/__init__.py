"""Analyses over a model's runs: the hybrid question (what do the few attention layers do?) in a few lines.

Each tool returns a dataclass of CPU tensors with documented shapes and a ``.figure()`` (plotly), with the
layer type of every block visible.
"""

from ._style import LAYER_COLORS
from .ablation import AblationResult, ablate_layers
from .attribution import AttributionResult, direct_logit_attribution
from .induction import InductionResult, induction_scores, repeated_tokens
from .logit_lens import LogitLensResult, apply_lens, logit_lens
from .memory import effective_horizon, mean_memory_horizon, memory_horizon
from .patching import PatchResult, logit_diff, patch

__all__ = [
    "LAYER_COLORS",
    "AblationResult",
    "AttributionResult",
    "InductionResult",
    "LogitLensResult",
    "PatchResult",
    "ablate_layers",
    "apply_lens",
    "direct_logit_attribution",
    "effective_horizon",
    "induction_scores",
    "logit_diff",
    "logit_lens",
    "mean_memory_horizon",
    "memory_horizon",
    "patch",
    "repeated_tokens",
]
