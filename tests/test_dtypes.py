"""Dtype names: one parser (``nemo_explore.core.dtypes.as_dtype``) for ``load`` and ``describe``."""

from __future__ import annotations

import pytest
import torch

import nemo_explore as ne
from nemo_explore.core.dtypes import as_dtype

NAMES = {
    torch.float32: ("float32", "fp32", "float", "torch.float32", "FLOAT32", torch.float32),
    torch.bfloat16: ("bfloat16", "bf16", "BF16", "torch.bfloat16", torch.bfloat16),
    torch.float16: ("float16", "fp16", "half", "torch.float16", torch.float16),
    torch.float64: ("float64", "double", "torch.float64"),
}


@pytest.mark.parametrize("dtype", list(NAMES))
def test_every_spelling_names_its_dtype(dtype):
    assert {as_dtype(name) for name in NAMES[dtype]} == {dtype}


@pytest.mark.parametrize("bad", ["int4", "int8", "bool", "bf-16", "torch.Tensor", "", "cuda", "float32 "])
def test_unknown_names_are_refused(bad):
    with pytest.raises(ValueError, match="unknown dtype"):
        as_dtype(bad)


def test_load_takes_short_names():
    model = ne.load("tiny", dtype="bf16")
    assert {p.dtype for p in model.hf_model.parameters()} >= {torch.bfloat16}
    assert model.cfg.dtype == torch.bfloat16
    hf = model.hf_model
    assert ne.load(hf, dtype="fp32").cfg.dtype == torch.float32  # an HF model in memory: converted
    with pytest.raises(ValueError, match="unknown dtype 'int4'"):
        ne.load("tiny", dtype="int4")
