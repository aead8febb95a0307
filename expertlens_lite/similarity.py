"""Graded similarity of concepts from their full AP profiles (no selection step).

A concept's profile is its AP over every neuron, ``ap[c]`` ``[n_neurons]``. Jaccard of
expert sets throws away everything below the cut; these keep it:

- ``cosine``: cosine of the profiles;
- ``pearson``: cosine of the profiles centred on their own mean (Pearson r), so the
  concept's base rate, which lifts every AP alike, drops out;
- ``weighted_jaccard``: Σ min(a, b) / Σ max(a, b) (Ruzicka similarity), the graded
  form of Jaccard.
"""

from __future__ import annotations

import numpy as np

from .baselines import cosine_matrix
from .errors import InputError

PROFILE_SIMILARITIES = ("cosine", "pearson", "weighted_jaccard")


def weighted_jaccard_matrix(profiles: np.ndarray) -> np.ndarray:
    """All-pairs Σ min / Σ max of non-negative rows ``[C, N]`` → ``[C, C]`` (0 where both are all zero)."""
    p = np.asarray(profiles, dtype=np.float64)
    c = len(p)
    out = np.zeros((c, c))
    for i in range(c):  # one [C, N] pass per row keeps memory at C·N, not C²·N
        low = np.minimum(p[i], p[i:]).sum(axis=1)
        high = np.maximum(p[i], p[i:]).sum(axis=1)
        out[i, i:] = np.divide(low, high, out=np.zeros_like(low), where=high > 0)
    return np.triu(out) + np.triu(out, 1).T


def profile_similarity(ap: np.ndarray, name: str) -> np.ndarray:
    """Concept-by-concept similarity ``[C, C]`` of AP profiles ``[C, N]``: finite, and for
    ``weighted_jaccard`` non-negative (a NaN came back as NaN similarities, a negative
    row as -1, an audit found)."""
    if np.ndim(ap) != 2:
        raise InputError(f"AP profiles must be a [concepts, neurons] matrix; got {np.ndim(ap)} dimension(s)")
    ap = np.asarray(ap, dtype=np.float64)
    if not np.isfinite(ap).all():
        raise InputError(f"AP profiles must be finite; concept {np.flatnonzero(~np.isfinite(ap).all(axis=1))[0]} is not")
    if name == "weighted_jaccard" and (ap < 0).any():
        raise InputError(f"weighted_jaccard needs non-negative profiles (APs); concept {np.flatnonzero((ap < 0).any(axis=1))[0]} has a negative value")
    if name == "cosine":
        return cosine_matrix(ap)
    if name == "pearson":
        return cosine_matrix(ap - ap.mean(axis=1, keepdims=True))
    if name == "weighted_jaccard":
        return weighted_jaccard_matrix(ap)
    raise InputError(f"unknown profile similarity {name!r}; choose one of {', '.join(PROFILE_SIMILARITIES)}")
