"""Expert selection rules: which neurons count as a concept's experts.

Each rule turns the AP matrix ``[n_concepts, n_neurons]`` into expert sets, stored
as packed bitsets ``uint64 [n_concepts, ceil(n_neurons / 64)]``:

- ``tau``: AP ≥ τ, the paper's absolute threshold.
- ``lift``: AP / base rate ≥ λ, where the base rate P / (P + N) is the AP of a
  random scorer for that concept; concepts with different positive counts become
  comparable (an absolute τ favours concepts with many positives).
- ``topk``: the k neurons of highest AP, per concept.
- ``topfrac``: the top fraction f of all neurons (k = ceil(f · n_neurons)), so one
  setting means the same across model sizes.

The thresholds compare with a margin of :data:`AP_ROUNDING`: an AP is a sum of P
rounded fractions, so one that equals τ exactly can come out a unit in the last
place below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .errors import InputError

RULES = ("tau", "lift", "topk", "topfrac")
OPTIONS = {"tau": "--tau", "lift": "--lift", "topk": "--topk", "topfrac": "--top-frac"}  # what errors call each rule
# Per rule, the values it takes (finite ones only) and how errors say so. A lift of 0
# would make every neuron an expert, a top fraction of 0 none.
_ALLOWED = {
    "tau": (lambda v: 0 <= v <= 1, "within [0, 1]"),
    "lift": (lambda v: v > 0, "a finite number above 0"),
    "topk": (lambda v: v >= 1 and v == int(v), "a whole number of at least 1"),
    "topfrac": (lambda v: 0 < v <= 1, "within (0, 1]"),
}

# How far below its exact value a computed AP may lie: four positives ranked 1, 6, 9
# and 12 of 12 have AP 1/2 exactly, computed as 0.49999999999999994, which AP ≥ 0.5
# left out (seen in an audit: 83 of 167 such APs in a small run). The error is about
# P · 1.1e-16 (1e-13 at 1,000 positives), and an AP that differs from τ by less than
# the margin without equalling it is far rarer than one that equals it.
AP_ROUNDING = 1e-12


@dataclass(frozen=True)
class Selection:
    """One selection rule with its parameter, e.g. ``Selection("topk", 200)``."""

    rule: str
    parameter: float

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise InputError(f"unknown selection rule {self.rule!r}; choose one of {', '.join(RULES)}")
        if isinstance(self.parameter, bool) or not isinstance(self.parameter, (int, float, np.integer, np.floating)):
            raise InputError(f"{OPTIONS[self.rule]} must be a number, got {self.parameter!r}")
        if not math.isfinite(self.parameter) or not _ALLOWED[self.rule][0](self.parameter):
            raise InputError(f"{OPTIONS[self.rule]} must be {_ALLOWED[self.rule][1]}, got {self.parameter:g}")
        # The CLI's number types, whatever a library caller gave (topks=[50.0] was written so to summary.json)
        object.__setattr__(self, "parameter", int(self.parameter) if self.rule == "topk" else float(self.parameter))

    def check_neurons(self, n_neurons: int) -> None:
        """Refuse a top-k that is not below the model's neuron count: every neuron
        would be every concept's expert, and all expert sets alike."""
        if self.rule == "topk" and self.parameter >= n_neurons:
            raise InputError(f"{OPTIONS['topk']} {self.parameter} must be below the model's {n_neurons:,} neurons")

    @property
    def label(self) -> str:
        return f"{self.rule}={self.parameter:g}"


def base_rates(n_positives: np.ndarray, n_negatives: np.ndarray) -> np.ndarray:
    """P / (P + N) per concept: the AP expected of a random scorer."""
    p = np.asarray(n_positives, dtype=np.float64)
    return p / (p + np.asarray(n_negatives, dtype=np.float64))


def select(ap: np.ndarray, selection: Selection, base_rate: np.ndarray | None = None) -> np.ndarray:
    """Expert bitsets ``uint64 [C, W]`` of ``selection`` applied to ``ap`` ``[C, N]``.

    ``base_rate`` ``[C]`` is needed by the ``lift`` rule only.
    """
    # Imported here, not with the module: the rules themselves are read by the run's
    # option checks (:mod:`.config`), which should not wait the 0.5 s Numba takes to load.
    from .kernels import threshold_bitsets, topk_bitsets

    if not isinstance(selection, Selection):  # a bare "tau" was an AttributeError
        raise InputError(f"selection must be a Selection, e.g. Selection('tau', 0.5); got {selection!r}")
    ap = np.asarray(ap, dtype=np.float64)
    if ap.ndim != 2:
        raise InputError(f"ap must be a matrix [n_concepts, n_neurons]; got shape {ap.shape}")
    if selection.rule == "tau":
        return threshold_bitsets(ap + AP_ROUNDING, [selection.parameter])[0]
    if selection.rule == "lift":
        if base_rate is None:
            raise InputError("the lift rule needs the concepts' base rates (selection.base_rates)")
        base_rate = np.asarray(base_rate, dtype=np.float64)
        if base_rate.shape != ap.shape[:1]:  # broadcast, [C] against [1, N] made C expert sets of one concept
            raise InputError(f"base_rate must have one value per concept ({ap.shape[0]}); got shape {base_rate.shape}")
        if not np.all((base_rate > 0) & (base_rate <= 1)):  # 0 divided by zero, a negative one gave empty sets (an audit)
            raise InputError(f"base rates are P / (P + N), within (0, 1]; got {base_rate[~((base_rate > 0) & (base_rate <= 1))][0]}")
        return threshold_bitsets((ap + AP_ROUNDING) / base_rate[:, None], [selection.parameter])[0]
    n_neurons = ap.shape[1]
    selection.check_neurons(n_neurons)
    k = int(selection.parameter) if selection.rule == "topk" else top_count(selection.parameter, n_neurons)
    return topk_bitsets(ap, k)


def top_count(fraction: float, n_neurons: int) -> int:
    """k = ceil(f · n_neurons) of the ``topfrac`` rule, with f the decimal as written
    (its shortest repr): in binary floats 0.07 · 100 is 7.000000000000001, which made k 8
    (an audit)."""
    return math.ceil(Fraction(str(float(fraction))) * n_neurons)
