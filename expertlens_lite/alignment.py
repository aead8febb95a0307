"""Alignment of a concept-similarity matrix with human ratings (Spearman ρ).

The confidence interval is a percentile bootstrap over rated pairs (or over
concepts, :class:`Bootstrap`'s ``unit``). All measures of one run share the same
resamples, which makes the paired test of a difference between two measures a
matter of comparing their per-resample ρ.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from .config import BOOTSTRAP_UNITS
from .errors import InputError, whole_number
from .human import HumanPairs


@dataclass(frozen=True)
class Alignment:
    """Spearman ρ with the human scores, its p-value and bootstrapped 95% CI."""

    spearman: float
    p_value: float
    ci_low: float
    ci_high: float
    n_pairs: int

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready: NaN (undefined ρ, e.g. a constant similarity) becomes None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def pair_values(matrix: np.ndarray, concepts: tuple[str, ...] | list[str], human: HumanPairs) -> np.ndarray:
    """``matrix[a, b]`` for each rated pair ``(a, b)`` of ``human`` (whose words must be concepts)."""
    position = {c: i for i, c in enumerate(concepts)}
    if missing := sorted(human.words - position.keys()):
        raise InputError(f"the rated pairs name words that are not concepts: {', '.join(missing[:5])}; restrict them first (HumanPairs.restricted_to)")
    rows = np.array([position[a] for a, _ in human.pairs], dtype=np.int64)
    cols = np.array([position[b] for _, b in human.pairs], dtype=np.int64)
    matrix = np.asarray(matrix)
    if matrix.shape != (len(concepts), len(concepts)):  # an IndexError, or values of other concepts (an audit)
        raise InputError(f"the similarity matrix must be [concepts, concepts] ({len(concepts)} x {len(concepts)}); got shape {matrix.shape}")
    return matrix[rows, cols]


def _weighted_ranks(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per row of ``weights`` ``[B, n]``, the average rank that each of ``x``'s ``n``
    values takes in the multiset holding value ``i`` ``weights[b, i]`` times: a tie group
    of total weight ``g`` after ``c`` smaller copies ranks ``c + (g + 1) / 2``.

    A bootstrap resample is such a multiset (a pair drawn twice counts twice), so ranking
    it this way equals ranking the resampled values themselves, with one sort of ``x``
    for all resamples instead of one per resample."""
    order = np.argsort(x, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(x[order]) != 0])  # where each tie group begins
    group_weight = np.add.reduceat(weights[:, order], starts, axis=1).astype(np.float64)
    group_rank = np.cumsum(group_weight, axis=1) - group_weight + (group_weight + 1) / 2
    ranks = np.empty(weights.shape, dtype=np.float64)
    ranks[:, order] = group_rank[:, np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(x)]))]
    return ranks


def _weighted_spearman(rx: np.ndarray, ry: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Spearman ρ per resample from :func:`_weighted_ranks` of both sides; 0 for a
    resample in which either side is constant (or that drew no rated pair, which the
    concept unit can on a handful of pairs).

    A resample can draw only pairs on which a sparse similarity is equal (the paper's
    τ-Jaccard is 0 on all but a handful of pairs), and a constant has no rank
    association: 0, where ρ is undefined. Leaving those resamples out instead (as NaN)
    made the CI and the paired p-values describe only the resamples that drew one of the
    handful, which put the CI's lower bound on the point estimate."""
    total = weights.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = rx - (weights * rx).sum(axis=1, keepdims=True) / total
        dy = ry - (weights * ry).sum(axis=1, keepdims=True) / total
        denom = np.sqrt((weights * dx * dx).sum(axis=1) * (weights * dy * dy).sum(axis=1))
        return np.where(denom > 0, (weights * dx * dy).sum(axis=1) / denom, 0.0)


# Peak memory of a Bootstrap scoring a measure and a paired test, in n_resamples ×
# n_pairs float64 arrays: 5.5 for either unit, with pairs that share words (800) or none
# (6000 words), measured with tracemalloc (3000 pairs, 5000 resamples): the int32
# resample weights, the rankings of both sides and the weighted products; 7 for margin.
_BOOTSTRAP_ARRAYS = 7


def bootstrap_bytes(n_resamples: int, n_pairs: int) -> int:
    """About the memory a :class:`Bootstrap` needs at its peak, in bytes."""
    return _BOOTSTRAP_ARRAYS * 8 * n_resamples * n_pairs


def _draw_counts(rng: np.random.Generator, n_resamples: int, n_items: int, block: int = 256) -> np.ndarray:
    """``[n_resamples, n_items]`` int32: how often each item is drawn in each resample of
    ``n_items`` draws with replacement. Drawn a block of resamples at a time, the same
    numbers as all at once: the int64 draws of every resample were the peak of memory."""
    counts = np.zeros((n_resamples, n_items), dtype=np.int32)
    for start in range(0, n_resamples, block):
        rows = counts[start:start + block]
        np.add.at(rows, (np.arange(len(rows))[:, None], rng.integers(0, n_items, size=rows.shape)), 1)
    return counts


class Bootstrap:
    """Shared resamples for the CIs and paired comparisons of one run.

    Args:
        human: the rated pairs every measure is scored against.
        n_resamples: bootstrap resamples (percentile method).
        rng: source of randomness (seeded by the caller), or a seed.
        unit: what is resampled. ``"pairs"`` (the paper's): the rated pairs, with
            replacement. ``"concepts"``: the concepts, with replacement, each drawn pair
            of concepts bringing its rated pair as many times as both were drawn
            (``w_a · w_b``). Pairs that share a concept are not independent, which the
            pair bootstrap ignores; the concept bootstrap keeps that dependence, and its
            CIs are wider (1.3–2.3× on MiniLM's default run, README).
    """

    def __init__(self, human: HumanPairs, n_resamples: int, rng: np.random.Generator | int, unit: str = "pairs") -> None:
        if not isinstance(human, HumanPairs):  # a list of pairs was an AttributeError (an audit)
            raise InputError(f"human must be HumanPairs (human.read_human_pairs); got {type(human).__name__}")
        if whole_number(n_resamples) is None or n_resamples < 1:
            raise InputError(f"n_resamples must be a positive whole number; got {n_resamples!r}")
        if not isinstance(rng, np.random.Generator) and (whole_number(rng) is None or rng < 0):
            raise InputError(f"rng must be a numpy Generator or a non-negative whole number (a seed); got {rng!r}")
        if unit not in BOOTSTRAP_UNITS:
            raise InputError(f"unit must be one of {', '.join(BOOTSTRAP_UNITS)}; got {unit!r}")
        self.human = np.asarray(human.scores, dtype=np.float64)
        n = len(self.human)
        if len(human.pairs) < 2:
            raise InputError(f"a bootstrap of ρ needs at least 2 rated pairs; got {len(human.pairs)}")
        rng = np.random.default_rng(rng)
        if unit == "pairs":
            self.weights = _draw_counts(rng, n_resamples, n)
        else:
            words = sorted(human.words)
            position = {word: i for i, word in enumerate(words)}
            a = np.array([position[x] for x, _ in human.pairs], dtype=np.int64)
            b = np.array([position[y] for _, y in human.pairs], dtype=np.int64)
            counts = _draw_counts(rng, n_resamples, len(words))
            self.weights = counts[:, a] * counts[:, b]
        self._human_ranks = _weighted_ranks(self.human, self.weights)

    def _checked(self, values: np.ndarray) -> np.ndarray:
        """``values`` as float64, refused unless one per rated pair."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != self.human.shape:
            raise InputError(f"values must have one number per rated pair ({len(self.human)}); got shape {values.shape}")
        return values

    def resampled_rho(self, values: np.ndarray) -> np.ndarray:
        """ρ on each resample ``[n_resamples]``; NaN throughout where a value is not
        finite (ranks of NaN or infinities would be made up)."""
        values = self._checked(values)
        if not np.all(np.isfinite(values)):
            return np.full(len(self.weights), np.nan)
        return _weighted_spearman(_weighted_ranks(values, self.weights), self._human_ranks, self.weights)

    def align(self, values: np.ndarray) -> Alignment:
        """Spearman ρ of ``values`` (one per rated pair) with the human scores; all NaN
        where ρ is undefined (constant values, or a NaN among them)."""
        values = self._checked(values)
        if not _defined(values):
            return Alignment(math.nan, math.nan, math.nan, math.nan, len(values))
        result = stats.spearmanr(values, self.human)
        low, high = np.percentile(self.resampled_rho(values), [2.5, 97.5])
        return Alignment(float(result.statistic), float(result.pvalue), float(low), float(high), len(values))

    def paired_p_value(self, values: np.ndarray, reference: np.ndarray) -> float:
        """Two-sided paired bootstrap p-value that ρ(values) and ρ(reference) differ.

        With k the number of resamples on which the difference has the other sign (the
        fewer of ≤ 0 and ≥ 0), ``2 (k + 1) / (B + 1)``, capped at 1: a p-value estimated
        from B resamples cannot be below about 1/B, and the share ``k / B`` alone said
        0.000. NaN where a value is not finite.

        A side that is constant on the whole sample (the paper's τ-Jaccard where no two
        rated concepts share an expert) counts as ρ = 0 on every resample, as a resample
        on which it is constant does (:func:`_weighted_spearman`): it ranks no pair above
        another. Otherwise the test was defined when one rated pair shared an expert and
        undefined when none did, though the two say the same.
        """
        diff = self.resampled_rho(values) - self.resampled_rho(reference)
        if np.isnan(diff).any():  # a value that is not finite (resampled_rho's NaN)
            return math.nan
        k = min(int((diff <= 0).sum()), int((diff >= 0).sum()))
        return float(min(1.0, 2 * (k + 1) / (len(diff) + 1)))


def _defined(values: np.ndarray) -> bool:
    """Whether ρ of ``values`` is defined: finite, and not all equal."""
    return bool(np.all(np.isfinite(values)) and np.ptp(values) > 0)
