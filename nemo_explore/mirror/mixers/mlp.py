"""Dense MLP (relu²): ``down(act(up(x)))`` with ``hook_pre`` (up-projection) and ``hook_post`` (after act)."""

from __future__ import annotations

import torch

from ...core.hooks import Fire
from ._call import check_keywords


def mlp_forward(mlp, fire: Fire, x: torch.Tensor, **kwargs) -> torch.Tensor:
    check_keywords(fire, kwargs, known=frozenset())  # HF's block hands an MLP the hidden states alone
    pre = fire("hook_pre", mlp.up_proj(x))
    post = fire("hook_post", mlp.act_fn(pre))
    return mlp.down_proj(post)
