"""Instrumented forwards, one per kind of mixer.

Each mirrors HF's own forward op for op (calling HF's module functions at call time: kernel decorators
swap them) and fires the block's hook points between the ops. A value that no hook replaces flows on
untouched, so with observers only the output is bit-identical to HF's. Derived values (attention pattern,
state norms, hidden attention, states) are computed on the side and only when hooked; only a *write* to
one of them switches the layer to an explicit computation.
"""

from .attention import attention_forward
from .mamba import mamba_forward
from .mlp import mlp_forward
from .moe import moe_forward

__all__ = ["attention_forward", "mamba_forward", "mlp_forward", "moe_forward"]
