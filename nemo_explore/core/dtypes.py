"""Dtype names as users write them: ``torch.bfloat16``, ``"bfloat16"``, ``"bf16"``, ``"torch.float16"``...
(no package imports)."""

from __future__ import annotations

import torch

__all__ = ["as_dtype"]

# short names torch does not have as attributes (``torch.float`` / ``torch.half`` it has)
_ALIASES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A dtype, or the name of a floating-point one in any case, with or without ``torch.`` (``"bfloat16"``,
    ``"bf16"``, ``"fp32"``, ``"half"``, ``"float64"``...) -> the ``torch.dtype``; any other name is a
    ``ValueError``. (A ``torch.dtype`` passes as it is.)"""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).removeprefix("torch.").lower()
    value = _ALIASES.get(key, getattr(torch, key, None) if key.isidentifier() else None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(
            f"unknown dtype {dtype!r}: use torch.float32 / torch.bfloat16 / torch.float16 or a name "
            "('float32', 'bfloat16', 'bf16', 'fp16'...)"
        )
    return value
