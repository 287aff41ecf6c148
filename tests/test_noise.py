"""vaelab.noise.BernoulliBits: the chains' Bernoulli draws against their exact probabilities."""

import math

import pytest
import torch

from vaelab.noise import UNIFORM_BITS, BernoulliBits


def test_draw_frequencies_match_the_probabilities():
    """200,000 draws at each of 12 probabilities, from 0 and 1 through 2^-24 steps to 1/2: every
    frequency within 4.5 binomial standard errors, and p = 0 and p = 1 exactly never and always."""
    probs = torch.tensor([0.0, 2.0**-24, 1e-4, 0.01, 0.1, 0.25, 1 / 3, 0.5, 0.9, 0.999, 1 - 2.0**-24, 1.0])
    draws = BernoulliBits(torch.Generator().manual_seed(0)).draw(probs.expand(200_000, -1))
    assert draws.dtype == torch.float32 and draws.shape == (200_000, 12)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    frequency = draws.mean(0)
    assert frequency[0] == 0 and frequency[-1] == 1
    stderr = (probs * (1 - probs) / 200_000).sqrt()
    assert torch.all((frequency - probs).abs() <= 4.5 * stderr + 1e-12), (frequency, probs)


def test_draws_are_independent_across_positions_and_calls():
    """Neighbouring draws (the two halves of one 64-bit word) and successive calls are uncorrelated:
    for p = 1/2 each correlation is within 4.5 / sqrt(n) of 0."""
    bits = BernoulliBits(torch.Generator().manual_seed(1))
    half = torch.full((100_000, 2), 0.5)
    first, second = bits.draw(half), bits.draw(half)
    centred = [values - 0.5 for values in (first[:, 0], first[:, 1], second[:, 0])]
    for a, b in ((centred[0], centred[1]), (centred[0], centred[2])):
        correlation = (a * b).mean() / 0.25
        assert abs(correlation) < 4.5 / math.sqrt(100_000), correlation


def test_the_stream_is_reproducible_from_the_generator_and_differs_between_seeds():
    probs = torch.rand(37, 11, generator=torch.Generator().manual_seed(2))
    draw = lambda seed: BernoulliBits(torch.Generator().manual_seed(seed)).draw(probs)  # noqa: E731
    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


class _KnownWords:
    """A stand-in for PCG64 whose 64-bit words hold chosen 24-bit integers, with high bits set."""

    def __init__(self, integers):
        halves = torch.tensor(integers, dtype=torch.int64) | (0xAB << UNIFORM_BITS)  # junk above bit 24
        self.words = (halves[0::2] | (halves[1::2] << 32)).numpy().view("uint64")

    def random_raw(self, count):
        assert count == len(self.words)
        return self.words.copy()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_each_draw_is_the_24_bit_uniform_below_p(dtype):
    """With known words, draw(p) is u < p for u = k / 2^24, k the low 24 bits of each 32-bit half
    (the junk above them ignored), at and just around every threshold."""
    k = [0, 1, 2**23, 2**24 - 2, 2**24 - 1, 12345]
    u = torch.tensor(k, dtype=torch.float64) / 2**UNIFORM_BITS
    bits = BernoulliBits(torch.Generator().manual_seed(0))
    for p in torch.cat([u, u + 2.0**-30, u - 2.0**-30]).clamp(0, 1).tolist():
        bits.bits = _KnownWords(k)
        probs = torch.full((len(k),), p, dtype=dtype)
        drawn = bits.draw(probs)
        assert drawn.dtype == dtype
        assert torch.equal(drawn, (u < probs.double()).to(dtype)), (p, drawn)  # p as stored in dtype
