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
    """Concept-by-concept similarity ``[C, C]`` of AP profiles ``[C, N]``."""
    if np.ndim(ap) != 2:
        raise InputError(f"AP profiles must be a [concepts, neurons] matrix; got {np.ndim(ap)} dimension(s)")
    if name == "cosine":
        return cosine_matrix(ap)
    if name == "pearson":
        ap = np.asarray(ap, dtype=np.float64)
        return cosine_matrix(ap - ap.mean(axis=1, keepdims=True))
    if name == "weighted_jaccard":
        return weighted_jaccard_matrix(ap)
    raise InputError(f"unknown profile similarity {name!r}; choose one of {', '.join(PROFILE_SIMILARITIES)}")
