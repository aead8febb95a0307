"""Average precision of every neuron for many concepts at once, exactly as sklearn.

Expertise of neuron ``m`` for concept ``c`` is the average precision (AP) of the
responses ``responses[:, m]`` used as classifier scores, with the concept's positive
sentences labelled 1 and its negatives labelled 0. It is the value
``sklearn.metrics.average_precision_score`` returns, not an interpolation:

    AP = sum_k (R_k - R_{k-1}) * P_k

over the distinct score values ``v_1 > v_2 > ...``, where at threshold ``v_k`` the
recall ``R_k = TP_k / n_pos``, the precision ``P_k = TP_k / (TP_k + FP_k)`` and
``TP_k`` / ``FP_k`` count positives / negatives scoring ``>= v_k`` (``R_0 = 0``).
Tied scores form one threshold, so a tie between a positive and a negative costs
that positive precision, as in sklearn. Only thresholds at a positive's score add
to the sum, so with ``TP(v)`` and ``FP(v)`` the counts at a positive score ``v``:

    AP = (1 / n_pos) * sum over positives p of TP(v_p) / (TP(v_p) + FP(v_p))

which is what the kernel accumulates, in float64.

How it is computed. Every concept's negatives come from one shared pool of
sentences, minus a few pool rows per concept ("excluded": sentences that contain
the concept). For each neuron the responses of all rows in use (pool and every
positive) are sorted once, with an LSD radix sort on the bit patterns of the
floats (exact, no rounding); one walk down that order keeps per concept its
positives seen (TP), and the pool rows seen minus its excluded rows seen (FP),
and adds a concept's terms when its positives are met. Cost per neuron:
O(rows in use + total positives + total excluded + concepts), not one sort per
concept as a per-(concept, neuron) sklearn call needs.

Why one shared sort rather than sorting the pool once and binary-searching each
concept's positives into it: the rows sorted are the same (pool plus all
positives), but per concept the positives must still be ordered among
themselves, and those small sorts and the searches cost more than the one sort
they replace (a numba version was 7x slower per value on 1,000 pool rows + 40
concepts x 100 positives; 2.3x even with its searches left out).

Ties decide the walk. Float16 has only 1,024 values per octave, so at thousands
of rows many responses tie (in the benchmark's 5,000-row responses cast to
float16, 31% of neighbours in sorted order are equal), and a walk that branches
on "is this row tied?" cannot predict it: for float16, tie groups are numbered
instead and each concept's positives wait until the counts at the end of their
group are known, with no branch on ties (4.1 instead of 6.0 ns per row on one
core, measured). Wider floats rarely tie except in a few large groups (ReLU
zeros), where the branch is predictable and the plain walk is cheaper (3.2
instead of 4.1 ns per row for float32). Both walks add the same terms in the
same order, so a float16 matrix and its float32 copy give bit-identical APs.

Neurons run in parallel (``numba.prange``) and are streamed a block of columns
at a time, so a ``np.memmap`` larger than memory is processed with bounded
resident memory.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Callable, Sequence

import numba
import numpy as np
from numba import njit, prange

from expertlens_lite.errors import InputError, whole_number
from expertlens_lite.kernels.threads import ready_threads

__all__ = ["average_precision", "average_precision_many"]

log = logging.getLogger(__name__)

# Radix digit width per float size. float16's 16-bit keys take two 8-bit passes,
# whose 256 counters and write positions stay in L1 (an 11 + 5-bit split took
# 1.3-1.4x as long, measured). Wider keys use 11 bits: for float32, four 8-bit
# passes took 1.3x as long as three 11-bit ones.
_DIGIT_BITS = {2: 8, 4: 11, 8: 11}
# From this many rows in use, float16 and float32 keys are sorted with 16-bit
# digits (one pass, two passes). Their 65,536-bucket prefix sums per neuron cost
# more than the extra pass at fewer rows. Measured sort time per value: float16
# one pass vs two 8-bit, 5.4 vs 2.4 ns at 5,000 rows, 2.4 vs 2.6 at 21,000, 1.85
# vs 2.7 at 101,000; float32 two passes vs three 11-bit, 11 vs 4.1 ns at 5,000
# rows, 4.9 vs 4.3 at 21,000, 3.9 vs 4.3 at 36,000, 3.6 vs 4.5 at 101,000.
_WIDE_DIGIT_ROWS = 1 << 15
# Bytes of the transposed block ("panel") when block_size is not given.
_PANEL_BYTES = 64 * 2**20
# Columns copied per pass over a task's rows when filling a panel.
_STRIPE = 256
# Row code of a row in several roles is _GENERAL - row (see _Plan).
_GENERAL = -1
_BITS_DTYPE = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_EXPONENT_BITS = {2: 5, 4: 8, 8: 11}


@njit(parallel=True, cache=True)
def _gather_panel(x, rows, col0, panel, n_chunks):  # pragma: no cover - numba
    """Copy ``x[rows, col0 : col0 + B]`` transposed into ``panel`` [B, R].

    Each task takes a range of rows and reads them a stripe of columns at a time,
    eight rows side by side: each column then gives eight adjacent panel values
    (one write burst instead of eight scattered ones; 1.6-2.2x faster than a
    row at a time, measured), and the eight rows' cache lines being read and the
    panel's being written stay in L1 while the stripe is crossed.
    """
    n_cols, n_rows = panel.shape
    for chunk in prange(n_chunks):
        lo = chunk * n_rows // n_chunks
        hi = (chunk + 1) * n_rows // n_chunks
        for c in range(0, n_cols, _STRIPE):
            c_end = min(n_cols, c + _STRIPE)
            i = lo
            while i + 8 <= hi:
                r0, r1, r2, r3 = rows[i], rows[i + 1], rows[i + 2], rows[i + 3]
                r4, r5, r6, r7 = rows[i + 4], rows[i + 5], rows[i + 6], rows[i + 7]
                for g in range(c, c_end):
                    col = col0 + g
                    panel[g, i] = x[r0, col]
                    panel[g, i + 1] = x[r1, col]
                    panel[g, i + 2] = x[r2, col]
                    panel[g, i + 3] = x[r3, col]
                    panel[g, i + 4] = x[r4, col]
                    panel[g, i + 5] = x[r5, col]
                    panel[g, i + 6] = x[r6, col]
                    panel[g, i + 7] = x[r7, col]
                i += 8
            for j in range(i, hi):
                r = rows[j]
                for g in range(c, c_end):
                    panel[g, j] = x[r, col0 + g]


@njit(cache=True)
def _column_keys(bits, codes, sign, exponent, key_shift, keys):  # pragma: no cover - numba
    """Sort keys of one neuron's responses ``bits`` [R]; False if one is NaN/inf.

    The key of a float is an unsigned integer that sorts like the float and is
    equal exactly when the floats are equal (-0.0 is mapped to +0.0, which
    compares equal to it). With ``key_shift`` 32 (floats of 32 bits or fewer)
    the key goes to the high half of ``keys[i]`` and the row's code to the low
    half, so one word carries both through the sort; with 0 (float64) the key
    fills the word.
    """
    all_ones = sign | (sign - np.uint64(1))
    bad = False
    for i in range(bits.shape[0]):
        b = np.uint64(bits[i])
        bad |= b & exponent == exponent
        if b == sign:
            b = np.uint64(0)
        k = b ^ all_ones if b & sign else b | sign
        if key_shift:
            k = (k << key_shift) | np.uint64(np.uint32(codes[i]))
        keys[i] = k
    return not bad


@njit(cache=True)
def _radix_sort(keys, codes, tmp_keys, tmp_codes, hist, n_passes, digit_bits, key_shift):
    # pragma: no cover - numba
    """Sort ``keys`` ascending by their bits from ``key_shift`` up (LSD radix).

    Digits are ``digit_bits`` wide, ``n_passes`` of them. ``hist`` is [3 *
    ceil(n_passes / 3), 2 ** digit_bits] uint32 scratch: the digit histograms
    are counted up to three per read of the keys, which keeps increments of a
    busy bucket from waiting on each other. A pass in which all keys share the
    digit is skipped. With ``key_shift`` 0, ``codes`` are moved along with the
    keys; otherwise they are already in the low bits of the keys and ``codes`` is
    not touched. Returns the (keys, codes) buffers that hold the result: the
    inputs or the temporaries.
    """
    n = keys.shape[0]
    n_buckets = hist.shape[1]
    digit_mask = np.uint64(n_buckets - 1)
    one = np.uint32(1)
    carry = key_shift == 0
    hist[:n_passes] = 0
    for p in range(0, n_passes, 3):
        # Only digits that are passes: counting an unused one would increment
        # its bucket 0 for every key, one long chain of dependent updates.
        h0 = hist[p]
        h1 = hist[p + 1]
        h2 = hist[p + 2]
        shift = key_shift + digit_bits * np.uint64(p)
        if n_passes - p >= 3:
            for i in range(n):
                k = keys[i] >> shift
                h0[k & digit_mask] += one
                h1[(k >> digit_bits) & digit_mask] += one
                h2[(k >> (digit_bits + digit_bits)) & digit_mask] += one
        elif n_passes - p == 2:
            for i in range(n):
                k = keys[i] >> shift
                h0[k & digit_mask] += one
                h1[(k >> digit_bits) & digit_mask] += one
        else:
            for i in range(n):
                h0[(keys[i] >> shift) & digit_mask] += one
    src_k, src_c, dst_k, dst_c = keys, codes, tmp_keys, tmp_codes
    for p in range(n_passes):
        shift = key_shift + digit_bits * np.uint64(p)
        h = hist[p]
        if h[(src_k[0] >> shift) & digit_mask] == n:
            continue
        total = np.uint32(0)
        for b in range(n_buckets):
            count = h[b]
            h[b] = total
            total += count
        for i in range(n):
            k = src_k[i]
            d = (k >> shift) & digit_mask
            at = h[d]
            h[d] = at + one
            dst_k[np.uint64(at)] = k
            if carry:
                dst_c[np.uint64(at)] = src_c[i]
        src_k, dst_k = dst_k, src_k
        src_c, dst_c = dst_c, src_c
    return src_k, src_c


@njit(cache=True)
def _code(s_keys, s_codes, key_shift, i):  # pragma: no cover - numba
    """Code (see ``_Plan``) of the row at sorted position i."""
    if key_shift:
        return np.int64(np.int32(s_keys[i]))
    return np.int64(s_codes[i])


@njit(cache=True)
def _walk(
    s_keys, s_codes, key_shift, is_pool, pos_ptr, pos_concepts, exc_ptr, exc_concepts,
    n_pos, tp, ex, k, acc, out,
):  # pragma: no cover - numba
    """AP of every concept from one neuron's rows sorted ascending (few ties).

    Row codes (see ``_Plan``) are the low 32 bits of ``s_keys`` when ``key_shift``
    is 32, else ``s_codes``. Walks down the order a tie group at a time, keeping
    per concept its positives seen (``tp``) and excluded pool rows seen (``ex``);
    the pool rows seen (``neg``) minus ``ex`` are its false positives. A pool
    row's code is the dummy concept C, so ``tp``, ``ex``, ``k`` (a tie group's
    positives per concept), ``acc`` have C + 1 entries and plain rows need no
    branch on their kind. Writes ``out[c]``.
    """
    n_concepts = n_pos.shape[0]
    tp[:] = 0
    ex[:] = 0
    k[:] = 0
    acc[:] = 0.0
    neg = 0
    i = s_keys.shape[0] - 1
    while i >= 0:
        top = s_keys[i] >> key_shift
        code = _code(s_keys, s_codes, key_shift, i)
        if code >= 0 and (i == 0 or s_keys[i - 1] >> key_shift != top):
            # Untied row that is a plain positive or plain pool row.
            neg += code == n_concepts
            t = tp[code] + 1
            tp[code] = t
            acc[code] += t / (t + neg - ex[code])
            i -= 1
            continue
        # Tie group [j + 1 .. i], or a row in several roles: count everything
        # first, so that each positive sees the precision at its threshold.
        j = i - 1
        while j >= 0 and s_keys[j] >> key_shift == top:
            j -= 1
        for t in range(j + 1, i + 1):
            code = _code(s_keys, s_codes, key_shift, t)
            if code >= 0:
                neg += code == n_concepts
                tp[code] += 1
                k[code] += 1
            else:
                r = _GENERAL - code
                neg += is_pool[r]
                for e in range(exc_ptr[r], exc_ptr[r + 1]):
                    ex[exc_concepts[e]] += 1
                for e in range(pos_ptr[r], pos_ptr[r + 1]):
                    tp[pos_concepts[e]] += 1
                    k[pos_concepts[e]] += 1
        # Each concept's k positives of the group: one term k * precision, as
        # _walk_grouped adds it (so both walks give bit-identical sums).
        for t in range(j + 1, i + 1):
            code = _code(s_keys, s_codes, key_shift, t)
            if code >= 0:
                acc[code] += k[code] * (tp[code] / (tp[code] + neg - ex[code]))
                k[code] = 0
            else:
                r = _GENERAL - code
                for e in range(pos_ptr[r], pos_ptr[r + 1]):
                    c = pos_concepts[e]
                    acc[c] += k[c] * (tp[c] / (tp[c] + neg - ex[c]))
                    k[c] = 0
        i = j
    for c in range(n_concepts):
        out[c] = acc[c] / n_pos[c]


@njit(cache=True)
def _next_group(c, group, tp, ex, k, last, neg_at, acc):  # pragma: no cover - numba
    """Concept c is met in tie group ``group``, later than its last one: add its
    ``k[c]`` pending positives, all at the threshold of its last group
    ``last[c]``, at whose end c had ``tp[c]`` positives and ``neg_at[last[c]] -
    ex[c]`` negatives, and start pending anew. (The max(., 1) only matters when
    ``k[c]`` is 0, where the term is 0 anyway.) Callers test ``last[c] !=
    group`` themselves: with the test inside, the walk ran 2x slower (measured).
    """
    t = tp[c]
    acc[c] += k[c] * (t / max(t + neg_at[last[c]] - ex[c], 1))
    k[c] = 0
    last[c] = group


@njit(cache=True)
def _walk_grouped(
    s_keys, s_codes, key_shift, is_pool, pos_ptr, pos_concepts, exc_ptr, exc_concepts,
    n_pos, tp, ex, k, last, neg_at, acc, out,
):  # pragma: no cover - numba
    """As ``_walk``, for orders with many small tie groups (float16).

    There ``_walk``'s branch on whether a row is tied cannot be predicted (see
    the module docstring). Here no branch depends on it: tie groups are numbered on the
    way down and the pool rows seen by the end of each are recorded
    (``neg_at``). A positive's precision needs the counts at the end of its
    group, not known when it is met, so each concept keeps its positives of its
    last group pending (``k``, ``last``) and adds them (``_next_group``) when it
    is next met in a later group, or at the end. ``k`` and ``last`` have C + 1
    entries like ``tp``; ``neg_at`` R + 1.
    """
    n_concepts = n_pos.shape[0]
    tp[:] = 0
    ex[:] = 0
    k[:] = 0
    last[:] = 0
    acc[:] = 0.0
    neg_at[0] = 0
    neg = 0
    group = 0
    n = s_keys.shape[0]
    previous = ~(s_keys[n - 1] >> key_shift)
    for i in range(n - 1, -1, -1):
        key = s_keys[i] >> key_shift
        group += key != previous
        previous = key
        code = _code(s_keys, s_codes, key_shift, i)
        if code >= 0:
            neg += code == n_concepts
            if last[code] != group:
                _next_group(code, group, tp, ex, k, last, neg_at, acc)
            k[code] += 1
            tp[code] += 1
        else:
            r = _GENERAL - code
            neg += is_pool[r]
            for e in range(exc_ptr[r], exc_ptr[r + 1]):
                c = exc_concepts[e]
                if last[c] != group:
                    _next_group(c, group, tp, ex, k, last, neg_at, acc)
                ex[c] += 1
            for e in range(pos_ptr[r], pos_ptr[r + 1]):
                c = pos_concepts[e]
                if last[c] != group:
                    _next_group(c, group, tp, ex, k, last, neg_at, acc)
                k[c] += 1
                tp[c] += 1
        neg_at[group] = neg
    for c in range(n_concepts):
        _next_group(c, group + 1, tp, ex, k, last, neg_at, acc)  # past the last group
        out[c] = acc[c] / n_pos[c]


@njit(parallel=True, cache=True)
def _ap_panel(
    panel, codes, is_pool, pos_ptr, pos_concepts, exc_ptr, exc_concepts, n_pos,
    sign, exponent, key_shift, n_passes, digit_bits, grouped, n_chunks, out, bad,
):  # pragma: no cover - numba
    """AP of every concept for each neuron of ``panel``.

    panel: [B, R] unsigned-int view of IEEE floats (16, 32 or 64 bit), one row per
    neuron, one column per sentence row in use ("local rows"). codes [R] (see
    ``_Plan``), is_pool [R] 1 for pool rows, pos_ptr/pos_concepts (CSR: local
    row -> concepts it is a positive of) and exc_ptr/exc_concepts (CSR: local row
    -> concepts whose negatives exclude it) describe the rows. n_pos: [C] float64
    positives per concept. sign/exponent: bit masks of the float format;
    key_shift/n_passes/digit_bits: see ``_column_keys`` and ``_radix_sort``;
    grouped: walk with ``_walk_grouped`` (float16) rather than ``_walk``. Neurons
    are split into ``n_chunks`` parallel tasks, each with its own scratch. out:
    [B, C] float64. bad: [B] set to 1 where a row holds NaN or +-inf (that
    neuron's out is then undefined).
    """
    n_cols, n_rows = panel.shape
    n_concepts = n_pos.shape[0]
    for chunk in prange(n_chunks):
        keys = np.empty(n_rows, np.uint64)
        tmp_keys = np.empty(n_rows, np.uint64)
        s_codes = np.empty(n_rows, np.int32)
        tmp_codes = np.empty(n_rows, np.int32)
        hist = np.empty((3 * -(-n_passes // 3), 1 << digit_bits), np.uint32)
        tp = np.empty(n_concepts + 1, np.int64)
        ex = np.empty(n_concepts + 1, np.int64)
        k = np.empty(n_concepts + 1, np.int64)
        last = np.empty(n_concepts + 1, np.int64)
        acc = np.empty(n_concepts + 1, np.float64)
        neg_at = np.empty(n_rows + 1, np.int64)
        for m in range(chunk * n_cols // n_chunks, (chunk + 1) * n_cols // n_chunks):
            if not _column_keys(panel[m], codes, sign, exponent, key_shift, keys):
                bad[m] = 1
                continue
            if not key_shift:
                s_codes[:] = codes
            s_keys, s_c = _radix_sort(
                keys, s_codes, tmp_keys, tmp_codes, hist, n_passes, np.uint64(digit_bits),
                key_shift,
            )
            if grouped:
                _walk_grouped(
                    s_keys, s_c, key_shift, is_pool, pos_ptr, pos_concepts, exc_ptr,
                    exc_concepts, n_pos, tp, ex, k, last, neg_at, acc, out[m],
                )
            else:
                _walk(
                    s_keys, s_c, key_shift, is_pool, pos_ptr, pos_concepts, exc_ptr,
                    exc_concepts, n_pos, tp, ex, k, acc, out[m],
                )


def average_precision(responses: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Average precision of each neuron's responses against binary labels.

    The same number as ``sklearn.metrics.average_precision_score(labels,
    responses[:, m])`` for every column ``m`` (to 1e-9, in practice to rounding):
    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct response values in
    descending order, where tied responses form one threshold (so a positive tied
    with negatives gets the precision of the whole tie group). A constant column
    therefore scores ``n_pos / n_sentences``. This is not the interpolated AP.

    Args:
        responses: [n_sentences, n_neurons] real scores (float16/32/64 are read
            in place, without rounding; other real dtypes are converted to
            float64, and refused where a value has no float64 equal). May be a
            ``np.memmap``.
        labels: [n_sentences] 0/1 (or bool); 1 marks a positive sentence. Both
            classes must be present.

    Returns:
        float64 [n_neurons], one AP per neuron.

    Raises:
        InputError: wrong shapes, labels other than 0/1, a missing class, or a
            NaN/inf response (the message names the neuron's column).

    Example:
        >>> import numpy as np
        >>> scores = np.array([[0.1], [0.4], [0.35], [0.8]])
        >>> average_precision(scores, np.array([0, 0, 1, 1])).round(4)
        array([0.8333])
    """
    x = _as_responses(responses)
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise InputError(
            f"labels must be 1-D with one entry per sentence ({x.shape[0]}); "
            f"got shape {y.shape}"
        )
    if y.dtype.kind not in "biuf" or not np.all((y == 0) | (y == 1)):
        raise InputError("labels must be 0/1 (or bool); found other values")
    positives = np.flatnonzero(y == 1)
    negatives = np.flatnonzero(y == 0)
    if positives.size == 0 or negatives.size == 0:
        raise InputError(
            "labels must contain both classes (1 = positive, 0 = negative); "
            f"got {positives.size} positives and {negatives.size} negatives"
        )
    return average_precision_many(x, [positives], negatives)[0]


def average_precision_many(
    responses: np.ndarray,
    positives: Sequence[np.ndarray],
    pool: np.ndarray,
    excluded: Sequence[np.ndarray] | None = None,
    *,
    block_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """AP of every neuron for many concepts that share one pool of negatives.

    For concept ``c`` the labelled set is: its positive rows (label 1) and the
    rows of ``pool`` that are neither in ``excluded[c]`` nor in ``positives[c]``
    (label 0). ``out[c, m]`` equals ``sklearn.metrics.average_precision_score``
    on that set's responses in column ``m`` (ties grouped, see
    :func:`average_precision`). A row that is both a positive of ``c`` and in the
    pool counts as a positive only (it is excluded from c's negatives
    automatically). A concept with no negatives left gets AP 1.0 for every
    neuron, as sklearn returns when all labels are positive (a warning is logged).

    Memory: the responses are processed ``block_size`` neurons at a time; each
    block's responses on the rows in use (pool and positives; other rows are
    never read) are copied, transposed, into a buffer of ``block_size x rows in
    use`` values (the largest allocation besides the result). An array
    memory-mapped from a file (``np.memmap``, ``np.load(..., mmap_mode="r")``)
    with contiguous rows (C order, columns not strided, rows not reversed) and
    not copy-on-write (``mode="c"``) is read with positioned reads of at least
    4 KiB per row in use instead of through the mapping, so resident memory stays
    near ``rows in use x (4 KiB + 2 x block_size x itemsize)`` however large the
    file. Other memory maps are read through the mapping: a block's pages stay
    resident until it is done (shared maps; clean pages, which the OS can
    reclaim) or for good (``mode="c"``). NaN/inf is
    looked for in the rows in use only; the first one found stops the run.

    Args:
        responses: [n_sentences, n_neurons] real scores, any real dtype (float16/
            32/64 read exactly in place; others converted to float64 per block, and
            refused where a value has no float64 equal).
        positives: C integer arrays of row indices; each non-empty, no repeats.
        pool: integer array of the shared negative rows; no repeats (may be empty).
        excluded: None, or C integer arrays: rows dropped from concept c's
            negatives (typically the pool sentences containing the concept).
            Rows that are not in ``pool`` are ignored.
        block_size: neurons per block; default: a multiple of 64 that makes the
            transposed block about 64 MiB.
        progress: called as ``progress(n_done, n_neurons)`` after each block.

    Returns:
        float64 [C, n_neurons].

    Raises:
        InputError: bad shapes or indices (out of range, repeated, non-integer),
            a concept without positives, or a NaN/inf response (the message
            names the neuron's column).
    """
    if progress is not None and not callable(progress):  # found now, not after the first block
        raise InputError(f"progress must be a function (n_done, n_neurons) or None; got {type(progress).__name__}")
    x = _as_responses(responses)
    n_sentences, n_neurons = x.shape
    plan = _Plan(positives, pool, excluded, n_sentences)
    n_rows = plan.rows.size
    source = _Source(x, plan.rows)
    itemsize = source.itemsize
    if block_size is None:
        block_size = max(64, _PANEL_BYTES // (n_rows * itemsize) // 64 * 64)
    elif (whole := whole_number(block_size, from_float=True)) is None or whole < 1:
        raise InputError(f"block_size must be a positive integer; got {block_size!r}")
    else:
        block_size = whole
    block_size = min(block_size, max(n_neurons, 1))

    mantissa = 8 * itemsize - 1 - _EXPONENT_BITS[itemsize]
    sign = np.uint64(1 << (8 * itemsize - 1))
    exponent = np.uint64(((1 << _EXPONENT_BITS[itemsize]) - 1) << mantissa)
    key_shift = np.uint64(32 if itemsize <= 4 else 0)
    digit_bits = 16 if itemsize <= 4 and n_rows >= _WIDE_DIGIT_ROWS else _DIGIT_BITS[itemsize]
    n_passes = -(-8 * itemsize // digit_bits)
    ready_threads()  # before get_num_threads, which starts numba's threads
    threads = numba.get_num_threads()

    out = np.empty((plan.n_concepts, n_neurons), np.float64)
    panel_buffer = np.empty((block_size, n_rows), _BITS_DTYPE[itemsize])
    read_size = source.read_size(block_size)
    try:
        for read0 in range(0, n_neurons, read_size):
            bits, bits_col0, rows = source.read(read0, min(read_size, n_neurons - read0))
            if read0 + read_size < n_neurons:
                source.prefetch(read0 + read_size, min(read_size, n_neurons - read0 - read_size))
            for col0 in range(read0, min(read0 + read_size, n_neurons), block_size):
                n_cols = min(block_size, n_neurons - col0)
                panel = panel_buffer[:n_cols]
                _gather_panel(
                    bits, rows, bits_col0 + col0 - read0, panel, min(n_rows, 4 * threads)
                )
                block_out = np.empty((n_cols, plan.n_concepts), np.float64)
                bad = np.zeros(n_cols, np.uint8)
                _ap_panel(
                    panel, plan.codes, plan.is_pool, plan.pos_ptr, plan.pos_concepts,
                    plan.exc_ptr, plan.exc_concepts, plan.n_pos, sign, exponent,
                    key_shift, n_passes, digit_bits, itemsize == 2, min(n_cols, 4 * threads),
                    block_out, bad,
                )
                if bad.any():
                    col = col0 + int(np.argmax(bad))
                    raise InputError(
                        f"responses of neuron {col} (column {col}) contain NaN or inf; "
                        "recompute or clean the response matrix"
                    )
                out[:, col0 : col0 + n_cols] = block_out.T
                if progress is not None:
                    progress(col0 + n_cols, n_neurons)
            source.release()
    finally:
        source.close()
    return out


def _as_responses(responses: np.ndarray) -> np.ndarray:
    x = responses if isinstance(responses, np.ndarray) else np.asarray(responses)
    if x.ndim != 2:
        raise InputError(
            f"responses must be 2-D [n_sentences, n_neurons]; got shape {x.shape}"
        )
    if x.dtype.kind not in "biuf":
        raise InputError(f"responses must be real numbers; got dtype {x.dtype}")
    return x


def _index_array(values: np.ndarray, what: str, n_sentences: int) -> np.ndarray:
    """Validate row indices: 1-D integers in [0, n_sentences); as int64."""
    a = np.asarray(values)
    if a.size == 0:
        return np.zeros(0, np.int64)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise InputError(
            f"{what} must be a 1-D array of integer row indices; "
            f"got dtype {a.dtype}, shape {a.shape}"
        )
    a = a.astype(np.int64, copy=False)
    if a.min() < 0 or a.max() >= n_sentences:
        raise InputError(
            f"{what} has row indices outside [0, {n_sentences}) "
            f"(min {a.min()}, max {a.max()})"
        )
    return a


class _Plan:
    """The rows in use and who uses them, as the kernel's CSR arrays."""

    def __init__(
        self,
        positives: Sequence[np.ndarray],
        pool: np.ndarray,
        excluded: Sequence[np.ndarray] | None,
        n_sentences: int,
    ) -> None:
        if isinstance(positives, (dict, set, str)) or (
            isinstance(positives, np.ndarray) and positives.ndim == 1 and positives.dtype.kind in "iu"
        ):  # a dict would be iterated by its keys, a flat array as one-row concepts
            raise InputError("positives must be a sequence of index arrays, one per concept")
        pos = [_index_array(p, f"positives[{c}]", n_sentences) for c, p in enumerate(positives)]
        if not pos:
            raise InputError("positives must hold at least one concept")
        for c, p in enumerate(pos):
            if p.size == 0:
                raise InputError(f"concept {c} has no positive rows; AP is undefined")
            if np.unique(p).size != p.size:
                raise InputError(f"positives[{c}] repeats a row index")
        pool_rows = _index_array(pool, "pool", n_sentences)
        if np.unique(pool_rows).size != pool_rows.size:
            raise InputError("pool repeats a row index")
        if excluded is None:
            exc = [np.zeros(0, np.int64)] * len(pos)
        else:
            exc = [_index_array(e, f"excluded[{c}]", n_sentences) for c, e in enumerate(excluded)]
            if len(exc) != len(pos):
                raise InputError(
                    f"excluded must have one array per concept ({len(pos)}); got {len(exc)}"
                )

        self.n_concepts = len(pos)
        self.rows = np.unique(np.concatenate(pos + [pool_rows]))
        n_rows = self.rows.size
        self.is_pool = np.zeros(n_rows, np.uint8)
        self.is_pool[np.searchsorted(self.rows, pool_rows)] = 1
        in_pool = np.zeros(n_sentences, bool)
        in_pool[pool_rows] = True

        pos_local = [np.searchsorted(self.rows, p) for p in pos]
        exc_local = []
        for c, (p, e) in enumerate(zip(pos, exc)):
            dropped = np.union1d(e, p)
            dropped = dropped[in_pool[dropped]]
            exc_local.append(np.searchsorted(self.rows, dropped))
            if dropped.size == pool_rows.size:
                log.warning(
                    "concept %d has no negatives left after exclusions; its AP is 1.0 "
                    "for every neuron (as sklearn gives for all-positive labels)", c
                )
        self.pos_ptr, self.pos_concepts = _csr(pos_local, n_rows)
        self.exc_ptr, self.exc_concepts = _csr(exc_local, n_rows)
        self.n_pos = np.array([p.size for p in pos], np.float64)
        # What the kernel carries through the sort for each local row: concept c
        # when the row is a positive of c only (and not in the pool); C (a dummy
        # concept) for a pool row that no concept excludes; else _GENERAL - row,
        # and the kernel looks the row up in the CSR arrays.
        n_pos_of = np.diff(self.pos_ptr)
        n_exc_of = np.diff(self.exc_ptr)
        self.codes = _GENERAL - np.arange(n_rows, dtype=np.int32)
        only_pos = (n_pos_of == 1) & (n_exc_of == 0) & (self.is_pool == 0)
        self.codes[only_pos] = self.pos_concepts[self.pos_ptr[:-1][only_pos]]
        only_pool = (n_pos_of == 0) & (n_exc_of == 0) & (self.is_pool == 1)
        self.codes[only_pool] = self.n_concepts


def _csr(lists: list[np.ndarray], n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Invert concept -> local rows into CSR local row -> concepts."""
    rows = np.concatenate(lists) if lists else np.zeros(0, np.int64)
    concepts = np.repeat(np.arange(len(lists), dtype=np.int32), [a.size for a in lists])
    order = np.argsort(rows, kind="stable")
    ptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=ptr[1:])
    return ptr, concepts[order]


class _Source:
    """Reads column blocks of the responses, as unsigned-int views of IEEE floats.

    One of three ways, picked once:

    - file: an array memory-mapped from a file (``np.memmap``, ``np.load(...,
      mmap_mode="r")``) whose rows are contiguous is read with ``os.preadv``,
      one call per row in use, at least 4 KiB of each row per block, and the
      next block is announced to the OS (``POSIX_FADV_WILLNEED``) so that disk
      reads overlap the work. Nothing is mapped into this process, so resident
      memory stays bounded by the read buffer whatever the file size; reading
      through the mapping instead would keep each touched page resident, and
      Linux maps up to 64 KiB around each one.
    - in place: any other native-order float16/32/64 array (any strides) is
      handed to the kernel as it is; the kernel copies the block's columns of
      the rows in use. If it is a shared memory map, its mapped pages are
      dropped after each block (they stay in the page cache).
    - converted: other dtypes and byte orders are copied one block at a time,
      rows in use only, to the float of the same size or, for integers and
      bools, to float64; a value that float64 cannot hold exactly (a 64-bit
      integer past 2**53, a long double) is refused, naming its neuron.
    """

    def __init__(self, x: np.ndarray, rows: np.ndarray) -> None:
        self._x = x
        self._rows = rows
        self._compact_rows = np.arange(rows.size, dtype=np.int64)
        if x.dtype.kind == "f" and x.dtype.itemsize in _BITS_DTYPE:
            self._work = x.dtype.newbyteorder("=")
        else:
            self._work = np.dtype(np.float64)
        self.itemsize = self._work.itemsize
        self._in_place = x.dtype == self._work
        # 64-bit integers past 2**53 and long doubles may have no float64 equal: rounded,
        # two scores could tie, or swap places with a third, and AP would not be sklearn's.
        self._may_round = x.dtype.itemsize > 8 or x.dtype.kind in "iu" and x.dtype.itemsize == 8
        mapping, root = _mapping_of(x)
        if root is not None and isinstance(root.offset, int) and x.size:  # np.memmap views of other arrays have none
            _check_mapped_whole(x, mapping, root)
        self._file = _open_rows(x, mapping, root) if mapping is not None else None
        self._mapping = mapping if self._file is None and _droppable(root) else None

    def read_size(self, block_size: int) -> int:
        """Columns per read: a multiple of block_size, >= 4 KiB per row for files."""
        if self._file is None:
            return block_size
        per_page = -(-mmap.PAGESIZE // self._x.dtype.itemsize)
        return block_size * -(-per_page // block_size)

    def read(self, col0: int, n_cols: int) -> tuple[np.ndarray, int, np.ndarray]:
        """(bits, column of ``col0`` in bits, rows of bits to use) for a block."""
        if self._file is None and self._in_place:
            return self._x.view(_BITS_DTYPE[self.itemsize]), col0, self._rows
        if self._file is not None:
            given = self._file.read(self._rows, col0, n_cols)
        else:
            given = self._x[self._rows, col0 : col0 + n_cols]
        block = np.ascontiguousarray(given, dtype=self._work)
        # NaN is unequal to itself: left to the kernels' NaN/inf error.
        if self._may_round and (rounded := np.argwhere((block.astype(given.dtype) != given) & ~np.isnan(given))).size:
            row, col = rounded[0]
            raise InputError(
                f"responses of neuron {col0 + col} hold {given[row, col]!s} ({given.dtype}), which float64, "
                "what the kernels compare in, cannot hold exactly; give float16/32/64 responses"
            )
        return block.view(_BITS_DTYPE[self.itemsize]), 0, self._compact_rows

    def prefetch(self, col0: int, n_cols: int) -> None:
        """Hint that the block at ``col0`` comes next, so its disk reads overlap work."""
        if self._file is not None:
            self._file.prefetch(self._rows, col0, n_cols)

    def release(self) -> None:
        """Drop this process's mapped pages of the last block (file stays cached)."""
        if self._mapping is not None:
            self._mapping.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self.release()
        if self._file is not None:
            self._file.close()


class _RowFile:
    """Positioned reads of row segments of a row-major array stored in a file."""

    def __init__(self, path: str, first: int, row_stride: int, dtype: np.dtype) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._first = first
        self._row_stride = row_stride
        self._dtype = dtype
        self._buffer: np.ndarray | None = None

    def read(self, rows: np.ndarray, col0: int, n_cols: int) -> np.ndarray:
        """[len(rows), n_cols] array of the file's values, valid until the next read."""
        if self._buffer is None or self._buffer.shape[0] != rows.size or (
            self._buffer.shape[1] < n_cols
        ):
            self._buffer = np.empty((rows.size, n_cols), self._dtype)
        out = self._buffer[:, :n_cols]
        start = self._first + col0 * self._dtype.itemsize
        for i, r in enumerate(rows.tolist()):
            self.read_into(out[i], start + r * self._row_stride)
        return out

    def prefetch(self, rows: np.ndarray, col0: int, n_cols: int) -> None:
        """Ask the OS to start reading a later block now (no-op where unsupported)."""
        if not hasattr(os, "posix_fadvise"):
            return
        start = self._first + col0 * self._dtype.itemsize
        length = n_cols * self._dtype.itemsize
        for r in rows.tolist():
            os.posix_fadvise(self._fd, start + r * self._row_stride, length,
                             os.POSIX_FADV_WILLNEED)

    def size(self) -> int:
        """Bytes in the file."""
        return os.fstat(self._fd).st_size

    def holds(self, x: np.ndarray, row: int) -> bool:
        """Whether the file's ``row`` is ``x``'s (the mapped array's)."""
        probe = np.empty(x.shape[1], x.dtype)
        try:
            self.read_into(probe, self._first + row * self._row_stride)
        except (InputError, OSError):
            return False
        return probe.tobytes() == x[row].tobytes()

    def read_into(self, buffer: np.ndarray, offset: int) -> None:
        if os.preadv(self._fd, [buffer], offset) != buffer.nbytes:
            raise InputError(
                f"response file ended early (offset {offset}); it is truncated or "
                "was rewritten while in use"
            )

    def close(self) -> None:
        os.close(self._fd)


def _mapping_of(x: np.ndarray) -> tuple[mmap.mmap | None, np.memmap | None]:
    """The mmap behind ``x`` and the outermost ``np.memmap`` on it, if any."""
    root = None
    base = x
    while base is not None:
        if isinstance(base, np.memmap):
            root = base
        if isinstance(base, mmap.mmap):
            return base, root
        base = getattr(base, "base", None)
    return None, None


def _droppable(root: np.memmap | None) -> bool:
    """Whether mapped pages can be dropped without losing data.

    Shared mappings (modes "r", "r+", "w+") are backed by the file, so dropping
    their pages only means reading them again; copy-on-write ("c") pages are not.
    Where ``madvise`` is missing (Windows), nothing is dropped.
    """
    return root is not None and root.mode != "c" and hasattr(mmap, "MADV_DONTNEED")


def _file_offset(address: int, mapping: mmap.mmap, root: np.memmap) -> int:
    """Where in ``root``'s file the byte at ``address`` (inside ``mapping``) lies:
    np.memmap maps the file from its offset rounded down to the allocation granularity."""
    mapped_at = np.frombuffer(mapping, np.uint8).ctypes.data
    return root.offset - root.offset % mmap.ALLOCATIONGRANULARITY + address - mapped_at


def _check_mapped_whole(x: np.ndarray, mapping: mmap.mmap, root: np.memmap) -> None:
    """Refuse a memory map whose file was cut short after it was mapped: read through
    the mapping, the missing part killed the process with SIGBUS, and no error to show
    (an audit). ``mmap.size()`` is the size of the file the mapping keeps open."""
    last = x.ctypes.data + sum((n - 1) * stride for n, stride in zip(x.shape, x.strides) if stride > 0)
    end = _file_offset(last, mapping, root) + x.itemsize
    if end > mapping.size():
        raise InputError(
            f"response file ended early: the array reaches byte {end:,} of it, but it has {mapping.size():,}; "
            "it is truncated or was rewritten while in use"
        )


def _open_rows(x: np.ndarray, mapping: mmap.mmap, root: np.memmap | None) -> _RowFile | None:
    """A reader of ``x``'s rows straight from its file, or None if that is unsafe.

    Needs ``os.preadv`` (not every platform's Python has it), a shared mapping made
    by ``np.memmap`` of a named file, contiguous rows, and the file under that name
    still being the mapped one: of the mapped file's size (``mmap.size()`` reads the
    file the mapping keeps open), with the same first and last rows at the offset
    worked out. A file renamed over it with the same size and the same first and last
    rows would pass; nothing portable tells which file a mapping is of.
    """
    if (
        not hasattr(os, "preadv")
        or root is None
        or root.mode == "c"
        or not isinstance(root.filename, (str, os.PathLike))  # np.load(Path) keeps the Path
        or x.shape[0] == 0
        or x.shape[1] == 0
        or x.strides[1] != x.dtype.itemsize
        or x.strides[0] < 0
    ):
        return None
    try:
        reader = _RowFile(os.fspath(root.filename), _file_offset(x.ctypes.data, mapping, root), x.strides[0], x.dtype)
    except OSError:  # deleted or moved since it was mapped; the mapping still reads
        return None
    if reader.size() != mapping.size() or not all(reader.holds(x, row) for row in (0, x.shape[0] - 1)):
        reader.close()  # the name now holds another file (rewritten and renamed into place)
        return None
    return reader
