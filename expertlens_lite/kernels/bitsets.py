"""Expert sets as bitsets: selection by threshold or top-k, sizes, all-pairs Jaccard.

A set of neurons out of ``n_neurons`` is stored as ``W = ceil(n_neurons / 64)``
uint64 words: neuron ``n`` is bit ``n % 64`` of word ``n // 64``. Bits past
``n_neurons`` in the last word are always 0, so set sizes and intersections can
be counted word by word with a hardware popcount.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from expertlens_lite.errors import InputError, whole_number
from expertlens_lite.kernels.threads import ready_threads

__all__ = [
    "jaccard_matrix",
    "pack_masks",
    "popcount",
    "threshold_bitsets",
    "topk_bitsets",
    "unpack_masks",
]

# Concept rows compared against each other row per task in jaccard_matrix.
_TILE = 8
# Elements of the [concepts, neurons] scores handled at once by topk_bitsets.
_TOPK_CHUNK = 1 << 22


@intrinsic
def _ctpop(typingctx, x):  # pragma: no cover - numba
    """Population count of an integer (LLVM ``ctpop``; ``popcnt`` on x86-64)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return x(x), codegen


@njit(parallel=True, cache=True)
def _row_popcounts(bits):  # pragma: no cover - numba
    n_rows, n_words = bits.shape
    out = np.empty(n_rows, np.int64)
    for i in prange(n_rows):
        total = 0
        for w in range(n_words):
            total += np.int64(_ctpop(bits[i, w]))
        out[i] = total
    return out


@njit(parallel=True, cache=True)
def _intersections(bits):  # pragma: no cover - numba
    """[C, C] int64 |A_i & A_j| for the rows of a [C, W] bitset matrix."""
    n_sets, n_words = bits.shape
    inter = np.empty((n_sets, n_sets), np.int64)
    n_tiles = (n_sets + _TILE - 1) // _TILE
    for q in prange(n_tiles):
        # Tile t pairs with every row j >= its first row, so early tiles have more
        # work; interleave first and last tiles so each thread gets a fair share.
        t = q // 2 if q % 2 == 0 else n_tiles - 1 - q // 2
        i0 = t * _TILE
        i1 = min(n_sets, i0 + _TILE)
        for j in range(i0, n_sets):
            for i in range(i0, min(i1, j + 1)):
                total = 0
                for w in range(n_words):
                    total += np.int64(_ctpop(bits[i, w] & bits[j, w]))
                inter[i, j] = total
                inter[j, i] = total
    return inter


def pack_masks(mask: np.ndarray) -> np.ndarray:
    """Pack boolean membership masks into bitsets.

    Args:
        mask: bool [..., n_neurons]; ``mask[..., n]`` True puts neuron n in the set.

    Returns:
        uint64 [..., ceil(n_neurons / 64)]; neuron n is bit ``n % 64`` of word
        ``n // 64``, unused high bits of the last word are 0.
    """
    m = np.asarray(mask)
    if m.dtype != np.bool_ or m.ndim < 1:
        raise InputError(
            f"mask must be a boolean array [..., n_neurons]; got dtype {m.dtype}, "
            f"shape {m.shape}"
        )
    n_words = -(-m.shape[-1] // 64)
    packed = np.zeros(m.shape[:-1] + (n_words * 8,), np.uint8)
    packed[..., : -(-m.shape[-1] // 8)] = np.packbits(m, axis=-1, bitorder="little")
    return packed.view("<u8").astype(np.uint64, copy=False)


def unpack_masks(bits: np.ndarray, n_neurons: int) -> np.ndarray:
    """Inverse of :func:`pack_masks`: uint64 [..., W] -> bool [..., n_neurons]."""
    b = _check_bits(bits)
    if isinstance(n_neurons, bool) or not isinstance(n_neurons, (int, np.integer)) or not 0 <= n_neurons <= 64 * b.shape[-1]:
        raise InputError(
            f"n_neurons must be a whole number in [0, {64 * b.shape[-1]}] for {b.shape[-1]} words; "
            f"got {n_neurons}"
        )
    as_bytes = np.ascontiguousarray(b).astype("<u8", copy=False).view(np.uint8)
    return np.unpackbits(as_bytes, axis=-1, count=n_neurons, bitorder="little").astype(bool)


def threshold_bitsets(scores: np.ndarray, taus: Sequence[float]) -> np.ndarray:
    """Expert sets ``{m : scores[c, m] >= tau}`` for several thresholds at once.

    Args:
        scores: [n_concepts, n_neurons] finite scores (APs).
        taus: T finite thresholds; the comparison is ``>=``, so a neuron whose
            score equals tau is an expert. Exactly: an AP computed in floating
            point can lie an ulp below its exact value (1/2 as 0.49999999999999994),
            so compare ``ap + selection.AP_ROUNDING`` for the paper's AP ≥ τ, as
            :func:`expertlens_lite.selection.select` does.

    Returns:
        uint64 [T, n_concepts, ceil(n_neurons / 64)].
    """
    s = _check_scores(scores)
    wrong = InputError(f"taus must be a 1-D sequence of finite numbers; got {taus!r}")
    try:
        t = np.asarray(taus)
    except (TypeError, ValueError):  # ragged: numpy's own error named neither
        raise wrong from None
    if t.dtype.kind not in "iuf" or t.ndim != 1 or not np.all(np.isfinite(t)):  # "0.5" became 0.5 (an audit)
        raise wrong
    t = t.astype(np.float64)
    out = np.empty((t.size, s.shape[0], -(-s.shape[1] // 64)), np.uint64)
    for i, tau in enumerate(t):
        out[i] = pack_masks(s >= tau)
    return out


def topk_bitsets(scores: np.ndarray, k: int) -> np.ndarray:
    """The k highest-scoring neurons of each concept.

    Exactly ``k`` neurons are chosen per concept: all neurons scoring above the
    k-th highest score, then, among those tied at the k-th score, the ones with
    the lowest neuron index. The result is therefore deterministic and does not
    depend on sort stability.

    Args:
        scores: [n_concepts, n_neurons] finite scores.
        k: 0 <= k <= n_neurons.

    Returns:
        uint64 [n_concepts, ceil(n_neurons / 64)].
    """
    s = _check_scores(scores)
    n_concepts, n_neurons = s.shape
    whole = whole_number(k, from_float=True)
    if whole is None or not 0 <= whole <= n_neurons:
        raise InputError(f"k must be an integer in [0, {n_neurons}]; got {k!r}")
    k = whole
    out = np.zeros((n_concepts, -(-n_neurons // 64)), np.uint64)
    if k == 0:
        return out
    step = max(1, _TOPK_CHUNK // max(n_neurons, 1))
    for c0 in range(0, n_concepts, step):
        block = s[c0 : c0 + step]
        kth = -np.partition(-block, k - 1, axis=1)[:, k - 1 : k]
        above = block > kth
        tied = block == kth
        room = k - above.sum(axis=1, keepdims=True)
        out[c0 : c0 + step] = pack_masks(above | (tied & (np.cumsum(tied, axis=1) <= room)))
    return out


def popcount(bits: np.ndarray) -> np.ndarray:
    """Set sizes: number of 1 bits along the last axis, uint64 [..., W] -> int64 [...]."""
    b = _check_bits(bits)
    flat = np.ascontiguousarray(b.reshape(int(np.prod(b.shape[:-1])), b.shape[-1]))
    ready_threads()
    return _row_popcounts(flat).reshape(b.shape[:-1])


def jaccard_matrix(bits: np.ndarray) -> np.ndarray:
    """All-pairs Jaccard index ``|A & B| / |A | B|`` of C bitsets.

    Two empty sets have Jaccard 0.0 (not 1.0, and not NaN): an empty expert set
    carries no evidence of similarity, and the result must stay finite for rank
    statistics. So the diagonal is 1.0 for non-empty sets and 0.0 for empty ones.

    Args:
        bits: uint64 [C, W] as made by :func:`pack_masks`.

    Returns:
        float64 [C, C], symmetric.
    """
    b = _check_bits(bits)
    if b.ndim != 2:
        raise InputError(f"bits must be 2-D [n_sets, n_words]; got shape {b.shape}")
    b = np.ascontiguousarray(b)
    ready_threads()
    inter = _intersections(b)
    sizes = _row_popcounts(b)
    union = sizes[:, None] + sizes[None, :] - inter
    return np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)


def _check_bits(bits: np.ndarray) -> np.ndarray:
    b = np.asarray(bits)
    if b.dtype != np.uint64 or b.ndim < 1:
        raise InputError(
            f"bitsets must be a uint64 array [..., n_words]; got dtype {b.dtype}, "
            f"shape {b.shape}"
        )
    return b


def _check_scores(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores)
    if s.ndim != 2 or s.dtype.kind not in "biuf":
        raise InputError(
            f"scores must be a real [n_concepts, n_neurons] array; got dtype {s.dtype}, "
            f"shape {s.shape}"
        )
    s = s.astype(np.float64, copy=False)
    if not np.all(np.isfinite(s)):
        concept, neuron = np.argwhere(~np.isfinite(s))[0]
        raise InputError(f"scores hold {s[concept, neuron]} (concept row {concept}, neuron {neuron}); scores must be finite")
    return s
