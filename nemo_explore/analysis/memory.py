"""Memory horizons of Mamba-2 heads: how many tokens a contribution to the state survives.

At token t head j multiplies its state by a_t = exp(dt_t A_j) < 1; a contribution halves after about
ln 2 / (-dt_t A_j) tokens at that rate. Shapes: ``dt`` (b, p, h) the step size actually used (hook_dt),
``A`` (h,) negative (-exp(A_log)).
"""

from __future__ import annotations

import math

import torch

__all__ = ["effective_horizon", "mean_memory_horizon", "memory_horizon"]

LN2 = math.log(2.0)


def memory_horizon(dt: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Half-life in tokens at each token's own decay rate: ln 2 / (-dt A), (b, p, h); inf where dt A = 0."""
    return LN2 / _rate(dt, A)  # inf where the rate is 0


def mean_memory_horizon(dt: torch.Tensor, A: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Half-life in tokens under each head's average decay rate: ln 2 / mean_tokens(-dt A), (h,).

    This is the half-life of a constant decay equal to the geometric mean of the per-token decays, not
    the mean of the per-token half-lives (which a few near-zero dt would send to infinity). ``mask``
    (b, p), true or 1 for the tokens to average over (e.g. the attention mask), defaults to all tokens.
    """
    rate = _rate(dt, A)
    if mask is None:
        return LN2 / rate.mean(dim=(0, 1))
    if mask.shape != rate.shape[:2]:
        want = tuple(rate.shape[:2])
        raise ValueError(f"mask must be (batch, positions) = {want}, got {tuple(mask.shape)}")
    keep = mask.to(torch.bool)
    if not keep.any():
        raise ValueError("mask selects no token; a mean memory horizon needs at least one")
    return LN2 / rate[keep].mean(dim=0)


def effective_horizon(dt: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Tokens until a contribution made at token s has decayed below half: (b, p, h), float32.

    The smallest k ≥ 1 with a_{s+1} ⋯ a_{s+k} < 1/2, counting only the decays actually met in this
    sequence; inf where the product is still ≥ 1/2 at the sequence end.
    """
    rate = _rate(dt, A).double().transpose(1, 2)  # b h p, ≥ 0
    lost = rate.cumsum(-1).contiguous()  # non-decreasing: -log of the decay from the start through t
    # first t > s with lost[t] - lost[s] > ln 2  ⇔  lost[t] > lost[s] + ln 2
    first = torch.searchsorted(lost, lost + LN2, right=True)
    s = torch.arange(lost.shape[-1], device=lost.device)
    k = (first - s).double()
    k[first == lost.shape[-1]] = math.inf
    return k.transpose(1, 2).float()


def _rate(dt: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """-dt A, the per-token log decay rate (b, p, h), after checking the shapes and signs."""
    if dt.dim() != 3:
        raise ValueError(f"dt must be (batch, positions, heads), got shape {tuple(dt.shape)}")
    if A.shape != dt.shape[-1:]:
        raise ValueError(f"A must be (heads,) = ({dt.shape[-1]},), got {tuple(A.shape)}")
    if (A > 0).any():
        raise ValueError("A must be negative (A = -exp(A_log)); pass -torch.exp(mixer.A_log), not A_log")
    if (dt < 0).any():
        raise ValueError("dt must be non-negative: pass the step size after softplus (hook_dt), not raw dt")
    return (dt.float() * A.float()).abs()  # = -dt A, without the -0.0 that would turn inf into -inf
