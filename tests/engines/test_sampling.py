"""The batched sampler: hand-computed top-k/top-p cases, counter-based noise, and properties."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from miles_sdk.engines._sampling import RowParams, gumbel_noise, sample_rows, top_k_top_p_filter

NEG = float("-inf")


def test_top_k_then_top_p_hand_computed() -> None:
    # probs of row 0: softmax(log([0.5, 0.3, 0.15, 0.05])) = the same numbers.
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]]))
    out = top_k_top_p_filter(logits, torch.tensor([-1, 2, 3]), torch.tensor([0.8, 1.0, 0.5]))
    # Row 0, top-p 0.8: mass before tokens = 0, .5, .8, .95 -> keep the first two.
    assert torch.isinf(out[0, 2:]).all() and torch.isfinite(out[0, :2]).all()
    # Row 1, top-k 2 only.
    assert torch.isinf(out[1, 2:]).all() and torch.equal(out[1, :2], logits[1, :2])
    # Row 2: top-k 3 drops 0.1; renormalised .2/.9,.3/.9,.4/.9 -> mass before .4 is 0, before .3 is .444
    # (< .5, kept), before .2 is .777 (dropped).
    assert out[2, 0] == NEG and out[2, 1] == NEG and torch.isfinite(out[2, 2:]).all()


def test_noise_depends_only_on_seed_and_step() -> None:
    a = gumbel_noise(torch.tensor([1, 2, 1]), torch.tensor([0, 0, 0]), 50)
    assert torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])
    b = gumbel_noise(torch.tensor([1]), torch.tensor([1]), 50)
    assert not torch.equal(a[0], b[0])
    # Seeds beyond 32 bits matter too.
    c = gumbel_noise(torch.tensor([1 + (1 << 40)]), torch.tensor([0]), 50)
    assert not torch.equal(a[0], c[0])


def test_noise_is_standard_gumbel() -> None:
    g = gumbel_noise(torch.arange(64), torch.zeros(64, dtype=torch.long), 4096).double()
    # Gumbel(0, 1): mean = Euler-Mascheroni, variance = pi^2 / 6.
    assert abs(g.mean().item() - 0.5772) < 0.01
    assert abs(g.var().item() - math.pi**2 / 6) < 0.03


def test_sampling_frequencies_follow_softmax_of_scaled_logits() -> None:
    logits = torch.tensor([0.0, 1.0, 2.0]).repeat(4000, 1)
    params = [RowParams(temperature=2.0, top_p=1.0, top_k=-1, seed=s) for s in range(4000)]
    tokens, logps = sample_rows(logits, params, [0] * 4000)
    freq = torch.bincount(tokens, minlength=3).double() / 4000
    expected = torch.softmax(torch.tensor([0.0, 1.0, 2.0]) / 2.0, -1).double()
    assert torch.allclose(freq, expected, atol=0.03)
    torch.testing.assert_close(logps, torch.log(expected.float())[tokens])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=40),
    st.integers(-1, 45),
    st.floats(0.01, 1.0),
)
def test_filter_properties(values: list[float], k: int, p: float) -> None:
    logits = torch.tensor([values])
    out = top_k_top_p_filter(logits, torch.tensor([k]), torch.tensor([p]))[0]
    kept = torch.isfinite(out)
    # A best token always survives (with ties, any of them), kept values are unchanged, and at
    # most k survive.
    assert bool(kept.any()) and float(out[kept].max()) == float(logits[0].max())
    assert torch.equal(out[kept], logits[0][kept])
    if k > 0:
        assert int(kept.sum()) <= k
    # Whatever is kept is a top set: nothing dropped beats anything kept.
    if (~kept).any():
        assert logits[0][~kept].max() <= logits[0][kept].min()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**62), st.integers(0, 5000), st.floats(0.1, 3.0))
def test_sampled_token_is_always_allowed(seed: int, step: int, temp: float) -> None:
    gen = torch.Generator().manual_seed(seed % 1000)
    logits = torch.randn(2, 30, generator=gen) * 3
    params = [RowParams(temp, 1.0, 4, seed), RowParams(0.0, 1.0, -1, seed)]
    tokens, logps = sample_rows(logits, params, [step, step])
    assert int(tokens[0]) in logits[0].topk(4).indices.tolist()
    assert int(tokens[1]) == int(logits[1].argmax())
    assert torch.isclose(logps[0], torch.log_softmax(logits[0] / temp, -1)[tokens[0]])
    assert torch.isclose(logps[1], torch.log_softmax(logits[1], -1)[tokens[1]])


# Seed 4473 at step 0 hashes token 3 to 32 bits whose top 24 are all ones: with a 24-bit uniform
# that rounded to exactly 1.0 in float32 and gave the token +inf noise, so it was sampled whatever
# its logit (about 0.9% of all samples at a 152k vocabulary).
ALL_ONES_SEED, ALL_ONES_TOKEN = 4473, 3


def test_the_largest_hash_gives_finite_noise_and_an_unlikely_token_stays_unlikely() -> None:
    from miles_sdk.engines._sampling import _mix32, row_keys, uniform_from_bits

    seeds, steps = torch.tensor([ALL_ONES_SEED]), torch.zeros(1, dtype=torch.long)
    bits = _mix32((_mix32(torch.tensor([ALL_ONES_TOKEN])) + row_keys(seeds, steps)) & 0xFFFFFFFF)
    assert int(bits) >> 8 == (1 << 24) - 1  # the case itself
    extremes = uniform_from_bits(torch.tensor([0, 0xFFFFFFFF]))
    assert extremes.tolist() == [2.0**-24, 1.0 - 2.0**-24]
    noise = gumbel_noise(seeds, steps, 16)
    assert torch.isfinite(noise).all() and float(noise.max()) < 17.0
    logits = torch.zeros(1, 16)
    logits[0, ALL_ONES_TOKEN] = -1e4
    tokens, _ = sample_rows(logits, [RowParams(1.0, 1.0, -1, ALL_ONES_SEED)], [0])
    assert int(tokens[0]) != ALL_ONES_TOKEN
