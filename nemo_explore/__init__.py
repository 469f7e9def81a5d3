"""nemo-explore: look inside NVIDIA Nemotron-H hybrid language models from Jupyter."""

from . import corpus
from .cache import ActivationCache
from .checkpoints import registry
from .checkpoints.configs import build_config, recommended_defaults, shortened, small_config
from .checkpoints.describe import ModelDescription, describe
from .checkpoints.loading import MemoryWarning, load
from .checkpoints.sources import CheckpointError, NotNemotronHError
from .core.allocator import reuse_freed_memory
from .core.hook_names import HookNameError
from .core.hooks import HookPoint, ReadOnlyHookError
from .core.layer_types import LAYER_TYPES
from .core.options import RunOptions
from .model import HookedNemotronH
from .tl import (  # TransformerLens': `from transformer_lens import evals, patching, utils`
    evals,
    patching,
    utils,
)
from .tl.factored import FactoredMatrix

__all__ = [
    "MemoryWarning",
    "ModelDescription",
    "build_config",
    "corpus",
    "describe",
    "recommended_defaults",
    "reuse_freed_memory",
    "registry",
    "shortened",
    "small_config",
    "evals",
    "patching",
    "utils",
    "LAYER_TYPES",
    "ActivationCache",
    "FactoredMatrix",
    "CheckpointError",
    "HookNameError",
    "HookPoint",
    "HookedNemotronH",
    "NotNemotronHError",
    "ReadOnlyHookError",
    "RunOptions",
    "load",
]
__version__ = "0.1.0"
