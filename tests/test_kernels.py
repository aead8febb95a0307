"""Average-precision kernels against sklearn and an independent slow implementation."""

from __future__ import annotations

import importlib
import mmap
import os
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from expertlens_lite.errors import InputError
from expertlens_lite.kernels import average_precision, average_precision_many

# The module (the package re-exports a function of the same name).
ap_module = importlib.import_module("expertlens_lite.kernels.average_precision")

ATOL = 1e-9


def slow_ap(labels: list[int], scores: list[float]) -> float:
    """AP by its definition: one threshold per distinct score, in pure Python."""
    n_pos = sum(labels)
    ap = 0.0
    previous_tp = 0
    for threshold in sorted(set(scores), reverse=True):
        tp = sum(1 for y, s in zip(labels, scores) if s >= threshold and y == 1)
        fp = sum(1 for y, s in zip(labels, scores) if s >= threshold and y == 0)
        ap += (tp - previous_tp) / n_pos * tp / (tp + fp)
        previous_tp = tp
    return ap


def sklearn_columns(responses: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.array(
        [average_precision_score(labels, responses[:, m]) for m in range(responses.shape[1])]
    )


def sklearn_many(responses, positives, pool, excluded):
    """One sklearn call per (concept, neuron) on positives + (pool - excluded - positives)."""
    out = np.empty((len(positives), responses.shape[1]))
    for c, pos in enumerate(positives):
        dropped = set(excluded[c]) | set(pos) if excluded is not None else set(pos)
        neg = [r for r in pool if r not in dropped]
        rows = list(pos) + neg
        labels = np.r_[np.ones(len(pos), int), np.zeros(len(neg), int)]
        out[c] = sklearn_columns(responses[rows], labels)
    return out


def random_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    labels = (rng.random(n) < 0.3).astype(int)
    labels[:2] = [1, 0]
    return labels


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_random_scores_match_sklearn(dtype):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 30)).astype(dtype)
    y = random_labels(rng, 400)
    np.testing.assert_allclose(average_precision(x, y), sklearn_columns(x, y), rtol=0, atol=ATOL)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_heavy_ties_match_sklearn_and_slow(dtype):
    rng = np.random.default_rng(2)
    x = rng.integers(-2, 3, size=(150, 25)).astype(dtype)
    x[rng.random(x.shape) < 0.2] = -0.0  # -0.0 ties with 0.0, as in sklearn
    y = random_labels(rng, 150)
    got = average_precision(x, y)
    np.testing.assert_allclose(got, sklearn_columns(x, y), rtol=0, atol=ATOL)
    slow = [slow_ap(y.tolist(), x[:, m].astype(float).tolist()) for m in range(x.shape[1])]
    np.testing.assert_allclose(got, slow, rtol=0, atol=ATOL)


def test_constant_columns_score_positive_rate():
    rng = np.random.default_rng(3)
    x = np.tile(rng.normal(size=(1, 6)), (80, 1))
    y = random_labels(rng, 80)
    got = average_precision(x, y)
    np.testing.assert_allclose(got, sklearn_columns(x, y), rtol=0, atol=ATOL)
    np.testing.assert_allclose(got, y.mean(), rtol=0, atol=ATOL)


def test_single_positive_matches_sklearn_and_slow():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 6, size=(50, 40)).astype(np.float32)
    y = np.zeros(50, int)
    y[17] = 1
    got = average_precision(x, y)
    np.testing.assert_allclose(got, sklearn_columns(x, y), rtol=0, atol=ATOL)
    slow = [slow_ap(y.tolist(), x[:, m].tolist()) for m in range(x.shape[1])]
    np.testing.assert_allclose(got, slow, rtol=0, atol=ATOL)


def test_integer_and_bool_inputs_match_sklearn():
    rng = np.random.default_rng(5)
    x = rng.integers(-5, 5, size=(60, 8))
    y = random_labels(rng, 60).astype(bool)
    np.testing.assert_allclose(average_precision(x, y), sklearn_columns(x, y), rtol=0, atol=ATOL)


@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.longdouble])
def test_values_float64_cannot_hold_are_refused_and_others_of_their_dtype_match_sklearn(dtype, tmp_path):
    """2**53 + 1 was rounded to 2**53, tying a positive with a negative it outranks
    (AP 0.583 against sklearn's 0.833), found by an audit; a long double likewise."""
    y = np.array([0, 1, 0, 1])
    big = np.longdouble(2**53) + 1 if dtype is np.longdouble else dtype(2**53) + dtype(1)
    x = np.array([[1, big - 1], [2, big], [0, 3], [1, 4]], dtype=dtype)
    np.testing.assert_allclose(average_precision(x[:, :1], y), sklearn_columns(x[:, :1], y), rtol=0, atol=ATOL)
    with pytest.raises(InputError, match=rf"^responses of neuron 1 hold {re.escape(str(big))} \({np.dtype(dtype)}\), which float64"):
        average_precision(x, y)
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(InputError, match="^responses of neuron 1 hold"):
        average_precision_many(np.load(tmp_path / "x.npy", mmap_mode="r"), [np.array([1, 3])], np.array([0, 2]))


def test_invariant_to_positive_scaling_and_shifting():
    rng = np.random.default_rng(6)
    # Dyadic values, so scaling by 3 and shifting by 100 are exact and keep ties.
    x = rng.integers(0, 400, size=(120, 12)) / 8.0
    y = random_labels(rng, 120)
    base = average_precision(x, y)
    np.testing.assert_allclose(average_precision(3.0 * x, y), base, rtol=0, atol=ATOL)
    np.testing.assert_allclose(average_precision(x + 100.0, y), base, rtol=0, atol=ATOL)
    np.testing.assert_allclose(average_precision(0.5 * x - 7.0, y), base, rtol=0, atol=ATOL)


def test_layouts_give_identical_results():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(90, 70)).astype(np.float32)
    y = random_labels(rng, 90)
    base = average_precision(x, y)
    np.testing.assert_array_equal(average_precision(np.asfortranarray(x), y), base)
    np.testing.assert_array_equal(average_precision(x.astype(">f4"), y), base)
    wide = np.concatenate([x, x], axis=1)
    np.testing.assert_array_equal(average_precision(wide[:, ::2], y), base[::2].tolist() * 2)


@st.composite
def concept_sets(draw):
    """Responses, positives, pool and excluded rows in the shapes a run makes."""
    seed = draw(st.integers(0, 2**32 - 1))
    n_sentences = draw(st.integers(2, 120))
    n_neurons = draw(st.integers(1, 6))
    n_concepts = draw(st.integers(1, 5))
    levels = draw(st.sampled_from([2, 4, 0]))  # 0: continuous scores, else tied ones
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    rng = np.random.default_rng(seed)
    if levels:
        x = rng.integers(0, levels, size=(n_sentences, n_neurons)).astype(dtype)
    else:
        x = rng.normal(size=(n_sentences, n_neurons)).astype(dtype)
    pool_size = draw(st.integers(0, n_sentences))
    pool = rng.permutation(n_sentences)[:pool_size]
    positives, excluded = [], []
    for _ in range(n_concepts):
        n_pos = int(rng.integers(1, min(n_sentences, 30) + 1))
        positives.append(rng.choice(n_sentences, n_pos, replace=False))
        # Excluded rows: some pool rows, and possibly rows outside the pool.
        n_exc = int(rng.integers(0, min(n_sentences, 8) + 1))
        excluded.append(rng.choice(n_sentences, n_exc, replace=False))
    return x, positives, pool, excluded


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(concept_sets(), st.booleans())
def test_many_matches_sklearn_per_concept(case, wide_digits):
    x, positives, pool, excluded = case
    with pytest.MonkeyPatch.context() as patch:
        if wide_digits:  # float16/32: the 16-bit digits used from _WIDE_DIGIT_ROWS rows
            patch.setattr(ap_module, "_WIDE_DIGIT_ROWS", 1)
        got = average_precision_many(x, positives, pool, excluded, block_size=4)
    np.testing.assert_allclose(got, sklearn_many(x, positives, pool, excluded), rtol=0, atol=ATOL)


def test_many_large_pool_matches_sklearn():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3000, 5)).astype(np.float32)
    x[:, 0] = np.round(x[:, 0], 1)  # many ties
    pool = np.arange(2500)
    positives = [2500 + 100 * c + np.arange(100) for c in range(5)]
    positives[1] = np.r_[positives[1], [3, 4]]  # pool rows that are also positives
    excluded = [rng.choice(pool, 40, replace=False) for _ in range(5)]
    got = average_precision_many(x, positives, pool, excluded)
    np.testing.assert_allclose(got, sklearn_many(x, positives, pool, excluded), rtol=0, atol=ATOL)


def test_concept_without_negatives_scores_one_like_sklearn():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(20, 4))
    pool = np.arange(10)
    got = average_precision_many(x, [np.arange(10, 15), np.arange(15, 20)], pool, [pool, []])
    np.testing.assert_array_equal(got[0], 1.0)
    np.testing.assert_allclose(got[0], [average_precision_score(np.ones(5), x[10:15, m])
                                        for m in range(4)], rtol=0, atol=ATOL)
    assert np.all(got[1] < 1.0)


def test_a_progress_that_is_not_a_function_is_refused_before_any_block():
    """It was a TypeError after the first block's work (an audit)."""
    x = np.random.default_rng(3).normal(size=(20, 8))
    with pytest.raises(InputError, match=r"^progress must be a function \(n_done, n_neurons\) or None; got int$"):
        average_precision_many(x, [np.arange(5)], np.arange(5, 20), progress=5)


def test_memmap_blocks_match_in_memory(tmp_path):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(700, 300)).astype(np.float16)
    pool = np.arange(0, 700, 2)
    positives = [np.arange(1, 700, 2)[c::5] for c in range(5)]
    excluded = [pool[c::7] for c in range(5)]
    expected = average_precision_many(x, positives, pool, excluded)
    np.save(tmp_path / "r.npy", x)
    mapped = np.load(tmp_path / "r.npy", mmap_mode="r")
    seen = []
    got = average_precision_many(
        mapped, positives, pool, excluded, block_size=64, progress=lambda d, n: seen.append((d, n))
    )
    np.testing.assert_array_equal(got, expected)
    assert seen == [(min(d, 300), 300) for d in range(64, 364, 64)]
    np.testing.assert_array_equal(
        average_precision_many(mapped[:, 50:250], positives, pool, excluded, block_size=16),
        expected[:, 50:250],
    )
    np.testing.assert_array_equal(
        average_precision_many(np.load(tmp_path / "r.npy", mmap_mode="c"), positives, pool,
                               excluded, block_size=64),
        expected,
    )
    for name, stored in [("big_endian", x.astype(">f4")), ("fortran", np.asfortranarray(x))]:
        np.save(tmp_path / f"{name}.npy", stored)
        np.testing.assert_array_equal(
            average_precision_many(np.load(tmp_path / f"{name}.npy", mmap_mode="r"), positives,
                                   pool, excluded, block_size=100),
            expected,
        )


@pytest.mark.parametrize("dtype", [np.float32, np.longdouble])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_response_names_the_neuron(bad, dtype, tmp_path):
    """A long double NaN was called a value "float64 cannot hold exactly" (an audit)."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(40, 150)).astype(dtype)
    x[5, 137] = bad
    y = random_labels(rng, 40)
    with pytest.raises(InputError, match=r"neuron 137\b.* contain NaN or inf"):
        average_precision(x, y)
    np.save(tmp_path / "r.npy", x)
    with pytest.raises(InputError, match=r"neuron 137\b.* contain NaN or inf"):
        average_precision_many(
            np.load(tmp_path / "r.npy", mmap_mode="r"), [np.arange(3)], np.arange(3, 40),
            block_size=64,
        )


@pytest.mark.parametrize(
    "labels",
    [
        [0, 1, 2, 1],  # not binary
        [0, 0, 0, 0],  # no positive
        [1, 1, 1, 1],  # no negative
        [0, 1, 1],  # wrong length
        [[0, 1], [1, 0]],  # not 1-D
        ["a", "b", "a", "b"],  # not numbers
    ],
)
def test_bad_labels_raise(labels):
    with pytest.raises(InputError):
        average_precision(np.zeros((4, 3)), np.array(labels))


@pytest.mark.parametrize(
    "responses",
    [np.zeros(4), np.zeros((4, 2, 2)), np.array([["a", "b"]] * 4), np.zeros((4, 2), complex)],
)
def test_bad_responses_raise(responses):
    with pytest.raises(InputError):
        average_precision(responses, np.array([0, 1, 0, 1]))


@pytest.mark.parametrize(
    "positives, pool, excluded, block_size",
    [
        ([[]], [0, 1], None, None),  # concept without positives
        ([[0, 0]], [1, 2], None, None),  # repeated positive
        ([[9]], [1, 2], None, None),  # out of range
        ([[-1]], [1, 2], None, None),  # negative index
        ([[0.0]], [1, 2], None, None),  # not integers
        ([[0]], [1, 1], None, None),  # repeated pool row
        ([[0]], [1, 2], [[1], [2]], None),  # excluded of the wrong length
        ([], [1, 2], None, None),  # no concepts
        (np.array([0, 1]), [2, 3], None, None),  # flat array instead of one per concept
        ([[0]], [1, 2], None, 0),  # bad block size
        ([[0]], [1, 2], None, "64"),  # a block size that is no number
        ([[0]], [1, 2], None, True),
        ([[0]], [1, 2], None, 2.5),
    ],
)
def test_bad_concept_sets_raise(positives, pool, excluded, block_size):
    with pytest.raises(InputError):
        average_precision_many(np.zeros((5, 3)), positives, pool, excluded, block_size=block_size)


@pytest.mark.parametrize("block_size", [np.int64(2), 2.0, 1000])
def test_block_size_takes_any_whole_number(block_size):
    x = np.random.default_rng(0).normal(size=(5, 3))
    got = average_precision_many(x, [[0, 1]], [2, 3, 4], block_size=block_size)
    assert np.allclose(got, average_precision_many(x, [[0, 1]], [2, 3, 4]))


@pytest.mark.parametrize("positives", [{0: [0, 1]}, np.array([0, 1])])
def test_positives_not_given_per_concept_are_named_as_such(positives):
    """A dict was iterated by its keys and refused for a 0-d 'positives[0]'."""
    with pytest.raises(InputError, match="^positives must be a sequence of index arrays, one per concept$"):
        average_precision_many(np.zeros((5, 3)), positives, [2, 3])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("wide_digits", [False, True])
def test_many_edge_cases_match_sklearn_in_every_float(dtype, wide_digits, monkeypatch):
    """Both walks (float16 numbers tie groups; 32/64-bit add untied rows at once) and
    both digit widths of the sort (16-bit ones are used from _WIDE_DIGIT_ROWS rows,
    forced here) on constant and tied neurons, a one-positive concept, rows in several
    roles and excluded rows; more rows than the 8 the panel copy takes at a time
    (with a remainder) and more columns than one stripe."""
    if wide_digits:
        monkeypatch.setattr(ap_module, "_WIDE_DIGIT_ROWS", 1)
    rng = np.random.default_rng(12)
    n_sentences, n_neurons = 203, 300
    x = rng.normal(size=(n_sentences, n_neurons))
    x[:, 1] = 2.5  # constant
    x[:, 2] = rng.integers(0, 3, n_sentences)  # three levels: large tie groups
    x[:, 3] = np.round(x[:, 3], 1)  # many small tie groups
    x[:, 4] = np.where(rng.random(n_sentences) < 0.5, 0.0, -0.0)  # -0.0 ties 0.0
    x = x.astype(dtype)
    pool = np.arange(0, 160)
    positives = [
        np.arange(160, 180),
        np.r_[np.arange(175, 190), [3, 7]],  # shares rows with concept 0; two pool rows
        np.array([200]),  # one positive
        np.arange(190, 203),
    ]
    excluded = [pool[::9], np.array([1, 2, 3]), np.array([], int), pool[::2]]
    got = average_precision_many(x, positives, pool, excluded, block_size=256)
    np.testing.assert_allclose(got, sklearn_many(x, positives, pool, excluded), rtol=0, atol=ATOL)
    np.testing.assert_allclose(got[:, 1], [p.size / (p.size + np.setdiff1d(
        pool, np.union1d(e, p)).size) for p, e in zip(positives, excluded)], rtol=0, atol=ATOL)


@pytest.mark.parametrize("wide_digits", [False, True])
def test_float16_and_wider_copies_give_identical_aps(wide_digits, monkeypatch):
    """The float16 walk and the 32/64-bit one add the same terms in the same order."""
    if wide_digits:
        monkeypatch.setattr(ap_module, "_WIDE_DIGIT_ROWS", 1)
    rng = np.random.default_rng(13)
    x = rng.normal(size=(500, 40)).astype(np.float16)
    x[:, :10] = np.round(x[:, :10])  # heavy ties
    pool = np.arange(300)
    positives = [300 + np.arange(c, 200, 4) for c in range(4)] + [np.r_[0:5, 450:460]]
    excluded = [pool[c::11] for c in range(5)]
    base = average_precision_many(x, positives, pool, excluded)
    for wider in (np.float32, np.float64):
        np.testing.assert_array_equal(
            average_precision_many(x.astype(wider), positives, pool, excluded), base
        )


@pytest.mark.parametrize("as_path", [str, Path])
def test_memmap_is_read_with_positioned_reads(as_path, tmp_path, monkeypatch):
    """A file-backed input is read with ``os.preadv``, not through its mapping,
    whether ``np.load`` got a string or a ``Path`` (a Path used to turn the reads
    off, so resident memory grew with the pages the mapping touched)."""
    x, positives, pool, excluded, expected = _small_concepts()
    np.save(tmp_path / "r.npy", x)
    reads = []
    preadv = os.preadv
    monkeypatch.setattr(os, "preadv", lambda *args: reads.append(args[2]) or preadv(*args))
    got = average_precision_many(np.load(as_path(tmp_path / "r.npy"), mmap_mode="r"), positives, pool, excluded, block_size=32)
    np.testing.assert_array_equal(got, expected)
    rows_in_use = len(pool) + sum(len(p) for p in positives)
    assert len(reads) >= 1 + rows_in_use  # the probe, then every row in use of each read


@pytest.mark.parametrize("missing", ["preadv", "madvise"])
def test_memmap_without_posix_calls_reads_through_the_mapping(missing, tmp_path, monkeypatch):
    """Where a platform's Python lacks ``os.preadv`` or ``madvise`` (Windows), a
    memory-mapped input is read through its mapping, and its pages are left to the OS
    (both used to fail with AttributeError). Without ``madvise``, a Fortran-order
    file, whose rows are not contiguous, is the case that reads through the mapping."""
    x, positives, pool, excluded, expected = _small_concepts()
    np.save(tmp_path / "r.npy", x if missing == "preadv" else np.asfortranarray(x))
    monkeypatch.delattr(*((os, "preadv") if missing == "preadv" else (mmap, "MADV_DONTNEED")))
    got = average_precision_many(np.load(str(tmp_path / "r.npy"), mmap_mode="r"), positives, pool, excluded, block_size=32)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("change", ["rewritten", "deleted"])
def test_memmap_whose_file_name_changed_is_read_through_the_mapping(change, tmp_path):
    """The positioned reads reopen the file by name. A file renamed over it since (here
    with the same first row, which was all that was checked) used to be read instead of
    the mapped array, and a deleted one raised FileNotFoundError."""
    x, positives, pool, excluded, expected = _small_concepts()
    path = tmp_path / "r.npy"
    np.save(path, x)
    mapped = np.load(path, mmap_mode="r")
    if change == "rewritten":
        other = x.copy()
        other[1:] = np.random.default_rng(12).normal(size=(x.shape[0] - 1, x.shape[1]))
        np.save(tmp_path / "new.npy", other)
        os.replace(tmp_path / "new.npy", path)
    else:
        path.unlink()
    np.testing.assert_array_equal(average_precision_many(mapped, positives, pool, excluded, block_size=32), expected)


@pytest.mark.parametrize("view", [lambda m: m, lambda m: m[:, ::2], lambda m: m[::-1]])
def test_memmap_whose_file_was_cut_short_is_refused(view, tmp_path):
    """Cut after it was mapped, the file no longer holds the array's last rows: read
    through the mapping, they killed the process with SIGBUS (an audit)."""
    x, positives, pool, excluded, _ = _small_concepts()
    path = tmp_path / "r.npy"
    np.save(path, x)
    mapped = view(np.load(path, mmap_mode="r"))
    os.truncate(path, path.stat().st_size - x.nbytes // 2)
    with pytest.raises(InputError, match=r"^response file ended early: .* it is truncated or was rewritten while in use$"):
        average_precision_many(mapped, positives, pool, excluded, block_size=32)


def _small_concepts():
    """Responses, four concepts' rows and their APs computed in memory."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(300, 90)).astype(np.float32)
    pool = np.arange(0, 300, 3)
    positives = [np.arange(1, 300, 3)[c::4] for c in range(4)]
    excluded = [pool[c::5] for c in range(4)]
    return x, positives, pool, excluded, average_precision_many(x, positives, pool, excluded)


def test_a_memmap_view_of_an_array_over_a_mapping_is_read(tmp_path):
    """Such a view has no offset or file name: the truncation check failed on it with a
    TypeError (a review)."""
    x, positives, pool, excluded, expected = _small_concepts()
    path = tmp_path / "r.bin"
    path.write_bytes(bytes(5000) + x.tobytes())
    with path.open("rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.ndarray(x.shape, x.dtype, buffer=mapping, offset=5000).view(np.memmap)
    np.testing.assert_array_equal(average_precision_many(view, positives, pool, excluded, block_size=32), expected)
    del view
    mapping.close()
