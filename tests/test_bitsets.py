"""Expert bitsets against plain Python sets."""

from __future__ import annotations

import numpy as np
import pytest

from expertlens_lite.errors import InputError
from expertlens_lite.kernels import (
    jaccard_matrix,
    pack_masks,
    popcount,
    threshold_bitsets,
    topk_bitsets,
    unpack_masks,
)

SIZES = [0, 1, 63, 64, 65, 130, 1000]


def members(bits: np.ndarray, n_neurons: int) -> set[int]:
    """Neurons in one bitset, read bit by bit (neuron n = bit n % 64 of word n // 64)."""
    return {n for n in range(n_neurons) if (int(bits[n // 64]) >> (n % 64)) & 1}


def random_masks(rng: np.random.Generator, n_sets: int, n_neurons: int) -> np.ndarray:
    density = rng.random((n_sets, 1))
    mask = rng.random((n_sets, n_neurons)) < density
    mask[0] = False  # always one empty set
    return mask


@pytest.mark.parametrize("n_neurons", SIZES)
def test_pack_unpack_and_popcount_match_sets(n_neurons):
    rng = np.random.default_rng(n_neurons)
    mask = random_masks(rng, 7, n_neurons)
    bits = pack_masks(mask)
    assert bits.dtype == np.uint64 and bits.shape == (7, -(-n_neurons // 64))
    for c in range(7):
        assert members(bits[c], 64 * bits.shape[1]) == set(np.flatnonzero(mask[c]).tolist())
    np.testing.assert_array_equal(unpack_masks(bits, n_neurons), mask)
    np.testing.assert_array_equal(popcount(bits), [len(set(np.flatnonzero(m))) for m in mask])


def test_pack_and_popcount_keep_leading_axes():
    rng = np.random.default_rng(0)
    mask = rng.random((2, 3, 100)) < 0.5
    bits = pack_masks(mask)
    assert bits.shape == (2, 3, 2)
    np.testing.assert_array_equal(popcount(bits), mask.sum(axis=-1))
    np.testing.assert_array_equal(unpack_masks(bits, 100), mask)


@pytest.mark.parametrize("n_neurons", [1, 64, 130, 1000])
def test_threshold_bitsets_match_sets(n_neurons):
    rng = np.random.default_rng(n_neurons)
    scores = rng.integers(0, 20, size=(6, n_neurons)) / 20.0  # ties with tau exactly
    taus = [0.0, 0.35, 0.5, 0.95, 1.0]
    bits = threshold_bitsets(scores, taus)
    assert bits.shape == (len(taus), 6, -(-n_neurons // 64))
    for t, tau in enumerate(taus):
        for c in range(6):
            expected = {n for n in range(n_neurons) if scores[c, n] >= tau}
            assert members(bits[t, c], n_neurons) == expected


def test_thresholds_and_counts_that_are_no_numbers_are_named():
    """numpy's ValueError (could not convert string to float) named neither; 130.0 neurons
    was said to be outside [0, 192]."""
    with pytest.raises(InputError, match=r"^taus must be a 1-D sequence of finite numbers; got \['x'\]$"):
        threshold_bitsets(np.zeros((2, 10)), ["x"])
    with pytest.raises(InputError, match=r"^n_neurons must be a whole number in \[0, 192\] for 3 words; got 130.0$"):
        unpack_masks(np.zeros((2, 3), np.uint64), 130.0)


@pytest.mark.parametrize(
    "n_neurons, k", [(1, 0), (1, 1), (70, 5), (130, 64), (1000, 999), (100, 100)]
)
def test_topk_bitsets_break_ties_by_lower_index(n_neurons, k):
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 4, size=(5, n_neurons)).astype(float)  # heavy ties
    bits = topk_bitsets(scores, k)
    for c in range(5):
        ranked = sorted(range(n_neurons), key=lambda n: (-scores[c, n], n))
        assert members(bits[c], n_neurons) == set(ranked[:k])


@pytest.mark.parametrize("n_neurons", SIZES)
def test_jaccard_matrix_matches_sets(n_neurons):
    rng = np.random.default_rng(n_neurons + 1)
    mask = random_masks(rng, 21, n_neurons)
    mask[1] = False  # two empty sets: 0/0 is defined as 0.0
    mask[2] = mask[3]
    sets = [set(np.flatnonzero(m).tolist()) for m in mask]
    got = jaccard_matrix(pack_masks(mask))
    expected = [
        [len(a & b) / len(a | b) if a | b else 0.0 for b in sets] for a in sets
    ]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
    assert got[0, 1] == 0.0 and got[0, 0] == 0.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: pack_masks(np.zeros((2, 3), int)),
        lambda: pack_masks(np.bool_(True)),
        lambda: unpack_masks(np.zeros((2, 1), np.uint64), 65),
        lambda: popcount(np.zeros((2, 1), np.int64)),
        lambda: jaccard_matrix(np.zeros((2, 2, 1), np.uint64)),
        lambda: threshold_bitsets(np.array([[0.1, np.nan]]), [0.5]),
        lambda: threshold_bitsets(np.zeros((2, 3)), [np.inf]),
        lambda: threshold_bitsets(np.zeros((2, 3)), ["0.5"]),
        lambda: threshold_bitsets(np.zeros((2, 3)), [[0.5], [0.2, 0.1]]),
        lambda: unpack_masks(np.zeros((2, 1), np.uint64), True),
        lambda: threshold_bitsets(np.zeros(3), [0.5]),
        lambda: topk_bitsets(np.zeros((2, 3)), 4),
        lambda: topk_bitsets(np.zeros((2, 3)), -1),
        lambda: topk_bitsets(np.zeros((2, 3)), 1.5),
    ],
)
def test_bad_input_raises(call):
    with pytest.raises(InputError):
        call()


def test_a_score_not_finite_is_named():
    """It said only "scores contain NaN or inf", in a matrix of thousands (an audit)."""
    scores = np.zeros((3, 70))
    scores[2, 65] = -np.inf
    for call in (lambda: threshold_bitsets(scores, [0.5]), lambda: topk_bitsets(scores, 2)):
        with pytest.raises(InputError, match=r"^scores hold -inf \(concept row 2, neuron 65\); scores must be finite$"):
            call()
