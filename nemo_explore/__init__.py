"""nemo-explore: look inside NVIDIA Nemotron-H hybrid language models from Jupyter."""

from . import corpus, registry
from .cache import ActivationCache
from .configs import build_config, recommended_defaults, shortened, small_config
from .describe import ModelDescription, describe
from .factored import FactoredMatrix
from .hook_names import HookNameError
from .hooks import HookPoint, ReadOnlyHookError
from .layer_types import LAYER_TYPES
from .loading import MemoryWarning, load
from .model import HookedNemotronH
from .options import RunOptions
from .sources import CheckpointError, NotNemotronHError

__all__ = [
    "MemoryWarning",
    "ModelDescription",
    "build_config",
    "corpus",
    "describe",
    "recommended_defaults",
    "registry",
    "shortened",
    "small_config",
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
