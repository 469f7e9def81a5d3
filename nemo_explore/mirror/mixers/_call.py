"""What HF's block hands a mixer, read strictly: an argument the mirror does not know is an error.

transformers 5.21-5.23 hand the cache as ``cache_params=`` (Mamba) or ``past_key_values=`` (attention),
5.24 as ``cache=`` (the old names are deprecated aliases). Swallowing an unknown keyword in ``**kwargs``
once dropped the cache silently; here every keyword is either understood or refused.
"""

from __future__ import annotations

from ...core.hooks import Fire
from ..versions import drift_error

CACHE_KEYWORDS = ("cache", "cache_params", "past_key_values")
# Keywords HF's model forwards to every mixer call and on to its kernels / attention function, which
# change nothing the mirror computes; the mirror passes them on exactly where HF does.
PASSED_ON = frozenset(
    {"position_ids", "use_cache", "output_attentions", "output_hidden_states", "output_router_logits",
     "num_items_in_batch"}
)  # fmt: skip


def take_cache(fire: Fire, cache, kwargs: dict):
    """The cache, whichever name it came under (``kwargs`` loses it). Two of them is an error."""
    given = [name for name in CACHE_KEYWORDS if name in kwargs]
    if given and cache is not None or len(given) > 1:
        raise drift_error(f"{_where(fire)} was handed two caches ({', '.join(given)}).")
    return kwargs.pop(given[0]) if given else cache


def check_keywords(fire: Fire, kwargs: dict, known: frozenset[str] = PASSED_ON) -> None:
    """Raise unless every keyword in ``kwargs`` is one the mirror knows to pass on."""
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise drift_error(
            f"{_where(fire)} was handed keyword argument(s) {', '.join(unknown)}, which nemo_explore's "
            "instrumented forward does not know (packed sequences and non-causal attention are not "
            "supported either)."
        )


def _where(fire: Fire) -> str:
    return f"The {fire.layer_type} mixer of block {fire.layer}"
