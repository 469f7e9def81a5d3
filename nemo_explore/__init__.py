"""nemo-explore: look inside NVIDIA Nemotron-H hybrid language models from Jupyter."""

from .cache import ActivationCache
from .hook_names import HookNameError
from .hooks import HookPoint, ReadOnlyHookError
from .layer_types import LAYER_TYPES
from .loading import CheckpointError, load
from .model import HookedNemotronH, NotNemotronHError

__all__ = [
    "LAYER_TYPES",
    "ActivationCache",
    "CheckpointError",
    "HookNameError",
    "HookPoint",
    "HookedNemotronH",
    "NotNemotronHError",
    "ReadOnlyHookError",
    "load",
]
__version__ = "0.1.0"
