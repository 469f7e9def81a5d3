"""Sparse MoE: sigmoid top-k router (with correction bias and group-limited choice) + shared expert.

The router's steps are reproduced op for op so that each intermediate can be hooked; the experts are
always HF's own module: its grouped matmul rounds differently from a loop over the experts, so a hand
loop would not be bit-exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...core.hooks import Fire
from ._call import check_keywords


def choose_experts(router, scores: torch.Tensor) -> torch.Tensor:
    """``scores`` (t, E) sigmoid -> top-k expert indices (t, k), unsorted, exactly as HF's router picks."""
    n_group, per_group = router.num_group, router.num_experts // router.num_group
    for_choice = scores + router.e_score_correction_bias
    group_scores = for_choice.view(-1, n_group, per_group).topk(2, dim=-1)[0].sum(dim=-1)
    group_idx = torch.topk(group_scores, k=router.topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores)
    group_mask.scatter_(1, group_idx, 1)
    score_mask = group_mask.unsqueeze(-1).expand(-1, n_group, per_group).reshape(-1, router.num_experts)
    for_choice = for_choice.masked_fill(~score_mask.bool(), float("-inf"))
    return torch.topk(for_choice, k=router.top_k, dim=-1, sorted=False)[1]


def routing_weights(router, scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The weights of the chosen experts: sigmoid scores there, normalised and scaled as HF does (t, k)."""
    weights = scores.gather(1, indices)
    if router.norm_topk_prob:
        weights /= weights.sum(dim=-1, keepdim=True) + 1e-20
    return weights * router.routed_scaling_factor


def check_expert_ids(indices: torch.Tensor, n_experts: int) -> None:
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_experts):
        raise ValueError(
            f"hook_topk_indices must hold expert ids in [0, {n_experts}); "
            f"got {int(indices.min())}..{int(indices.max())}"
        )


def moe_forward(moe, fire: Fire, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
    check_keywords(fire, kwargs, known=frozenset())  # HF's block hands an MoE the hidden states alone
    router = moe.gate
    shape = hidden_states.shape  # b p d
    per_token = (*shape[:-1], -1)

    flat = hidden_states.view(-1, router.hidden_dim)
    logits = F.linear(flat.type(torch.float32), router.weight.type(torch.float32))
    logits = fire("hook_router_logits", logits.view(per_token)).reshape(flat.shape[0], -1)
    scores = fire("hook_router_scores", logits.sigmoid().view(per_token)).reshape(flat.shape[0], -1)
    indices = choose_experts(router, scores)
    chosen = indices.view(per_token)
    forced = fire("hook_topk_indices", chosen)
    if forced is not chosen:
        check_expert_ids(forced, router.num_experts)
    indices = forced.reshape(flat.shape[0], -1)
    weights = routing_weights(router, scores, indices)
    weights = fire("hook_topk_weights", weights.view(per_token)).reshape(flat.shape[0], -1)

    routed = moe.fc2_latent_proj(moe.experts(moe.fc1_latent_proj(flat), indices, weights))
    routed = fire("hook_routed_out", routed.view(*shape))
    shared = fire("hook_shared_out", moe.shared_experts(hidden_states))
    return routed + shared
