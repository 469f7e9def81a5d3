"""Memory horizons against values worked out by hand and against a token-by-token product of decays."""

import math

import pytest
import torch

from nemo_explore.analysis import effective_horizon, mean_memory_horizon, memory_horizon

LN2 = math.log(2)


def test_constant_dt_gives_ln2_over_dt_abs_A():
    dt = torch.full((2, 7, 3), 0.1)
    A = torch.tensor([-1.0, -2.0, -0.5])
    want = torch.tensor([LN2 / 0.1, LN2 / 0.2, LN2 / 0.05])
    torch.testing.assert_close(memory_horizon(dt, A), want.expand(2, 7, 3))
    torch.testing.assert_close(mean_memory_horizon(dt, A), want)


def test_memory_horizon_per_token_and_zero_rate():
    dt = torch.tensor([[[0.5, 0.0], [2.0, 1.0]]])  # b=1, p=2, h=2
    A = torch.tensor([-LN2, -0.25])
    want = torch.tensor([[[2.0, math.inf], [0.5, 4 * LN2]]])
    torch.testing.assert_close(memory_horizon(dt, A), want)


def test_mean_memory_horizon_uses_the_mean_rate_over_unmasked_tokens():
    # head 0 rates 0.1, 0.3, 0.8 at tokens 0, 1, 2 of sequence 0 and 0.2, 0.2, 0.2 of sequence 1
    dt = torch.tensor([[[0.1], [0.3], [0.8]], [[0.2], [0.2], [0.2]]])
    A = torch.tensor([-1.0])
    torch.testing.assert_close(mean_memory_horizon(dt, A), torch.tensor([LN2 / (1.8 / 6)]))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])  # tokens 0, 1 of sequence 0, token 0 of sequence 1
    torch.testing.assert_close(mean_memory_horizon(dt, A, mask=mask), torch.tensor([LN2 / 0.2]))
    torch.testing.assert_close(mean_memory_horizon(dt, A, mask=mask.bool()), torch.tensor([LN2 / 0.2]))


def test_effective_horizon_of_a_known_decay_sequence():
    # per-token decays a_t; a contribution at token s is multiplied by a_{s+1}, a_{s+2}, ...
    a = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95, 0.3, 0.95, 0.95])
    dt = -a.log()[None, :, None]
    A = torch.tensor([-1.0])
    # s=0: .8, .56, .336 -> 3.  s=1: .7, .42 -> 2.  s=2: .6, .57, .171 -> 3.  s=3: .95, .285 -> 2.
    # s=4: .3 -> 1.  s=5: .95, .9025 -> end.  s=6: .95 -> end.  s=7: nothing after -> end.
    want = torch.tensor([3, 2, 3, 2, 1, math.inf, math.inf, math.inf])
    torch.testing.assert_close(effective_horizon(dt, A)[0, :, 0], want)


def test_effective_horizon_constant_decay_is_the_first_integer_past_the_half_life():
    dt = torch.full((2, 40, 2), 0.1)
    A = torch.tensor([-LN2 / 0.25, -LN2 / 0.6])  # half-lives 2.5 and 6 tokens (a tie: 1/2 after 6)
    got = effective_horizon(dt, A)
    assert (got[:, :37, 0] == 3).all() and (got[:, 37:, 0] == math.inf).all()
    # a^6 = 1/2 up to rounding: either 6 or 7, the same everywhere it fits
    assert got[0, 0, 1].item() in (6.0, 7.0)
    assert (got[:, : 40 - int(got[0, 0, 1]), 1] == got[0, 0, 1]).all()


def test_effective_horizon_matches_a_token_by_token_product():
    gen = torch.Generator().manual_seed(0)
    dt = torch.rand(2, 50, 3, generator=gen) * 0.4
    A = -torch.rand(3, generator=gen) - 0.2
    got = effective_horizon(dt, A)
    decays = torch.exp(dt.double() * A.double())
    for bi in range(2):
        for j in range(3):
            for s in range(50):
                prod, want = 1.0, math.inf
                for t in range(s + 1, 50):
                    prod *= decays[bi, t, j].item()
                    if prod < 0.5:
                        want = t - s
                        break
                assert got[bi, s, j].item() == want, (bi, s, j)
    assert torch.isfinite(got).any() and torch.isinf(got).any()


def test_bad_input_gets_a_clear_error():
    dt = torch.rand(2, 5, 3)
    with pytest.raises(ValueError, match="A must be negative"):
        memory_horizon(dt, torch.tensor([1.0, -1.0, -1.0]))
    with pytest.raises(ValueError, match="A must be"):
        memory_horizon(dt, -torch.ones(4))
    with pytest.raises(ValueError, match="dt must be non-negative"):
        effective_horizon(-dt, -torch.ones(3))
    with pytest.raises(ValueError, match="dt must be"):
        memory_horizon(dt[0], -torch.ones(3))
    with pytest.raises(ValueError, match="mask must be"):
        mean_memory_horizon(dt, -torch.ones(3), mask=torch.ones(5, 2))
    with pytest.raises(ValueError, match="selects no token"):
        mean_memory_horizon(dt, -torch.ones(3), mask=torch.zeros(2, 5))
