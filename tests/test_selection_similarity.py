"""Selection rules and similarity measures against direct Python computations."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
from scipy import stats

from expertlens_lite.alignment import Bootstrap, pair_values
from expertlens_lite.errors import InputError
from expertlens_lite.human import HumanPairs
from expertlens_lite.kernels import jaccard_matrix, unpack_masks
from expertlens_lite.selection import Selection, base_rates, select
from expertlens_lite.similarity import profile_similarity

RNG = np.random.default_rng(7)
AP = RNG.random((6, 150)) ** 3
AP[2, :10] = AP[2, 10]  # ties
RATES = base_rates(np.array([10, 20, 30, 10, 5, 40]), np.array([200, 190, 180, 300, 100, 160]))


def python_sets(selection: Selection) -> list[set[int]]:
    n = AP.shape[1]
    out = []
    for c, row in enumerate(AP):
        if selection.rule == "tau":
            out.append({m for m in range(n) if row[m] >= selection.parameter})
        elif selection.rule == "lift":
            out.append({m for m in range(n) if row[m] / RATES[c] >= selection.parameter})
        else:
            k = int(selection.parameter) if selection.rule == "topk" else math.ceil(selection.parameter * n)
            ranked = sorted(range(n), key=lambda m: (-row[m], m))  # ties: lower index first
            out.append(set(ranked[:k]))
    return out


@pytest.mark.parametrize(
    "selection", [Selection("tau", 0.2), Selection("lift", 4.0), Selection("topk", 17), Selection("topfrac", 0.05)]
)
def test_selection_rules_match_python(selection):
    masks = unpack_masks(select(AP, selection, RATES), AP.shape[1])
    assert [set(np.flatnonzero(m).tolist()) for m in masks] == python_sets(selection)


def test_jaccard_of_selection_matches_python_sets():
    sets = python_sets(Selection("topk", 30))
    got = jaccard_matrix(select(AP, Selection("topk", 30), RATES))
    for a in range(6):
        for b in range(6):
            assert got[a, b] == pytest.approx(len(sets[a] & sets[b]) / len(sets[a] | sets[b]))


@pytest.mark.parametrize("rule, value", [("tau", 1.5), ("topk", 0), ("topk", 2.5), ("topfrac", 2.0), ("lift", -1.0), ("best", 1.0)])
def test_bad_selection_parameters(rule, value):
    with pytest.raises(InputError):
        Selection(rule, value)


def test_a_selection_that_is_no_selection_is_refused():
    with pytest.raises(InputError, match=r"^selection must be a Selection, e.g. Selection\('tau', 0.5\); got 'tau'$"):
        select(AP, "tau", RATES)


def test_topk_must_leave_some_neurons_out():
    select(AP, Selection("topk", AP.shape[1] - 1), RATES)
    with pytest.raises(InputError, match="must be below"):
        select(AP, Selection("topk", AP.shape[1]), RATES)


@pytest.mark.parametrize("fraction, n_neurons, k", [(0.07, 100, 7), (0.55, 100, 55), (0.55, 46080, 25344), (0.675, 46080, 31104), (0.071, 100, 8)])
def test_a_top_fraction_keeps_the_decimal_share(fraction, n_neurons, k):
    """In floats 0.07 x 100 is 7.000000000000001, and ceil made the set 8 neurons."""
    masks = unpack_masks(select(RNG.random((2, n_neurons)), Selection("topfrac", fraction), None), n_neurons)
    assert masks.sum(axis=1).tolist() == [k, k]


@pytest.mark.parametrize(
    "ap, base_rate, rules",
    [(AP[:1], RATES[:3], ["lift"]), (AP, [0.1], ["lift"]), (AP, 0.1, ["lift"]), (AP[0], RATES[:1], ["lift", "topk", "topfrac", "tau"])],
)
def test_ap_and_base_rates_of_other_shapes_are_refused(ap, base_rate, rules):
    """An AP row with three base rates made three expert sets (numpy broadcasts); an AP
    vector failed with an IndexError in the top-k rules."""
    for rule in rules:
        with pytest.raises(InputError, match="must be a matrix|one value per concept"):
            select(ap, Selection(rule, {"topfrac": 0.05, "tau": 0.5}.get(rule, 2)), base_rate)


def test_base_rates_outside_what_a_rate_can_be_are_refused_and_other_rules_need_none():
    """A zero base rate divided by zero, a negative one gave empty sets, silently; a top-k
    without base rates was a TypeError (an audit)."""
    for bad in (0.0, -0.2, 1.5):
        with pytest.raises(InputError, match=rf"^base rates are P / \(P \+ N\), within \(0, 1\]; got {bad}$"):
            select(AP, Selection("lift", 2), np.r_[RATES[:-1], bad])
    assert select(AP, Selection("topk", 3)).shape == select(AP, Selection("topk", 3), RATES).shape


def test_profile_similarities_match_python():
    cos = profile_similarity(AP, "cosine")
    pearson = profile_similarity(AP, "pearson")
    wj = profile_similarity(AP, "weighted_jaccard")
    for a in range(6):
        for b in range(6):
            x, y = AP[a], AP[b]
            assert cos[a, b] == pytest.approx(float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)))
            assert pearson[a, b] == pytest.approx(stats.pearsonr(x, y).statistic)
            assert wj[a, b] == pytest.approx(sum(min(p, q) for p, q in zip(x, y)) / sum(max(p, q) for p, q in zip(x, y)))


def test_alignment_matches_scipy_and_bootstrap_is_sane():
    concepts = ("a", "b", "c", "d", "e", "f")
    pairs = tuple((concepts[i], concepts[j]) for i in range(6) for j in range(i + 1, 6))
    human = HumanPairs("test", pairs, tuple(float(s) for s in RNG.random(len(pairs))))
    matrix = RNG.random((6, 6))
    matrix = matrix + matrix.T
    values = pair_values(matrix, concepts, human)
    assert values.tolist() == [matrix[concepts.index(a), concepts.index(b)] for a, b in pairs]
    boot = Bootstrap(human, 500, np.random.default_rng(0))
    result = boot.align(values)
    expected = stats.spearmanr(values, human.scores)
    assert result.spearman == pytest.approx(expected.statistic) and result.p_value == pytest.approx(expected.pvalue)
    assert result.ci_low <= result.spearman <= result.ci_high and result.n_pairs == len(pairs)
    # A measure equal to the human scores beats a noise measure in the paired test.
    assert boot.paired_p_value(np.asarray(human.scores), RNG.random(len(pairs))) < 0.05
    assert boot.paired_p_value(values, values) == 1.0
    assert math.isnan(boot.align(np.zeros(len(pairs))).spearman)  # constant: undefined, not an error


def _men_like(n_pairs: int = 40) -> HumanPairs:
    words = [f"w{i}" for i in range(n_pairs + 1)]
    return HumanPairs("test", tuple(itertools.pairwise(words)), tuple(float(s) for s in np.random.default_rng(3).random(n_pairs)))


def test_resamples_without_a_sparse_similaritys_few_nonzero_pairs_count_as_no_association():
    """The paper's τ-Jaccard is 0 on all but a handful of pairs. Resamples that drew none
    of them were left out (ρ undefined), so the CI described only the others and its
    lower bound sat on the point estimate; a constant has no rank association: ρ 0."""
    human = _men_like()
    values = np.zeros(40)
    values[int(np.argmax(human.scores))] = 1.0  # one pair of 40 above 0: about 36% of resamples miss it
    boot = Bootstrap(human, 1000, 0)
    rho = boot.resampled_rho(values)
    missed = boot.weights[:, int(np.argmax(human.scores))] == 0
    assert 0.25 < missed.mean() < 0.5 and np.all(rho[missed] == 0.0)
    result = boot.align(values)
    assert result.ci_low == 0.0 < result.spearman <= result.ci_high


@pytest.mark.parametrize("unit", ["pairs", "concepts"])
def test_resampled_rho_is_spearman_on_the_resampled_pairs_themselves(unit):
    """Each resample's ρ is scipy's Spearman ρ on its pairs, a pair as often as drawn:
    for concepts, each drawn concept pair brings its rated pair w_a · w_b times."""
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(20)]
    pairs = tuple((a, b) for a, b in itertools.combinations(words, 2) if rng.random() < 0.3)
    human = HumanPairs("t", pairs, tuple(float(x) for x in rng.integers(0, 10, len(pairs))))  # ties
    values = np.round(rng.random(len(pairs)), 1)
    values[::3] = 0.0
    boot = Bootstrap(human, 100, 5, unit=unit)
    draws = np.random.default_rng(5)
    if unit == "pairs":
        taken = draws.integers(0, len(pairs), size=(100, len(pairs)))
    else:
        position = {w: i for i, w in enumerate(sorted(human.words))}
        counts = [np.bincount(row, minlength=len(position)) for row in draws.integers(0, len(position), size=(100, len(position)))]
        taken = [np.repeat(np.arange(len(pairs)), [c[position[a]] * c[position[b]] for a, b in pairs]) for c in counts]
    scores = np.asarray(human.scores)
    expected = [stats.spearmanr(values[rows], scores[rows]).statistic for rows in taken]
    np.testing.assert_allclose(boot.resampled_rho(values), expected, atol=1e-12)


def test_resampled_rho_of_values_that_cannot_be_ranked_is_nan_or_refused():
    human = _men_like()
    boot = Bootstrap(human, 50, 0, unit="concepts")
    values = np.random.default_rng(0).random(40)
    values[3] = np.nan
    assert np.isnan(boot.resampled_rho(values)).all()
    with pytest.raises(InputError, match=r"^values must have one number per rated pair \(40\); got shape \(39,\)$"):
        boot.resampled_rho(values[:39])
    with pytest.raises(InputError, match="needs at least 2 rated pairs; got 1"):
        Bootstrap(HumanPairs("t", human.pairs[:1], human.scores[:1]), 50, 0)


def test_a_bootstrap_of_what_is_no_rating_or_seed_is_refused():
    """A list of pairs was an AttributeError, a string seed numpy's TypeError (an audit)."""
    human = HumanPairs("t", (("a", "b"), ("b", "c"), ("a", "c")), (1.0, 2.0, 3.0))
    with pytest.raises(InputError, match=r"^human must be HumanPairs \(human.read_human_pairs\); got list$"):
        Bootstrap(list(human.pairs), 50, 0)
    for rng in ("abc", -1, 1.5):
        with pytest.raises(InputError, match=r"^rng must be a numpy Generator or a non-negative whole number \(a seed\)"):
            Bootstrap(human, 50, rng)


@pytest.mark.parametrize(
    "name, row, message",
    [("cosine", [np.nan, 0.1], "AP profiles must be finite; concept 1 is not"),
     ("weighted_jaccard", [-0.5, 0.1], "weighted_jaccard needs non-negative profiles (APs); concept 1 has a negative value")],
)
def test_profiles_that_are_no_aps_are_refused(name, row, message):
    """A NaN came back as NaN similarities, a negative row as a weighted Jaccard of -1."""
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        profile_similarity(np.array([[0.2, 0.3], row]), name)


def test_a_concept_bootstrap_is_wider_than_a_pair_bootstrap_where_pairs_share_concepts():
    rng = np.random.default_rng(2)
    words = [f"w{i}" for i in range(25)]
    pairs = tuple(itertools.combinations(words, 2))  # each concept in 24 pairs
    strength = rng.random(25)
    human = HumanPairs("t", pairs, tuple(float(strength[int(a[1:])] + strength[int(b[1:])] + rng.random()) for a, b in pairs))
    values = np.array([strength[int(a[1:])] * strength[int(b[1:])] for a, b in pairs])
    pair, concept = (Bootstrap(human, 1000, 0, unit=unit).align(values) for unit in ("pairs", "concepts"))
    assert concept.ci_high - concept.ci_low > 1.5 * (pair.ci_high - pair.ci_low)


def test_the_paired_p_value_counts_the_observed_difference_as_a_resample():
    """A share of resamples said p = 0.000 where 1,000 resamples cannot tell below about 0.002."""
    human = _men_like()
    boot = Bootstrap(human, 200, 0)
    noise = np.random.default_rng(5).random(40)
    assert boot.paired_p_value(np.asarray(human.scores), noise) == 2 / 201  # the difference never changes sign


def test_a_similarity_constant_on_every_pair_is_compared_as_rho_0():
    """The paper's τ-Jaccard is 0 on every rated pair where no two concepts share an
    expert: its ρ is undefined, but a paired test against it is one against ρ = 0, as on
    a resample where it is constant. It was undefined (NaN), while one pair that shared
    an expert made it defined."""
    human = _men_like()
    boot = Bootstrap(human, 200, 0)
    scores, constant = np.asarray(human.scores), np.zeros(40)
    assert math.isnan(boot.align(constant).spearman)
    assert boot.paired_p_value(scores, constant) == boot.paired_p_value(constant, scores) == 2 / 201
    assert boot.paired_p_value(constant, np.ones(40)) == 1.0
    noise = np.random.default_rng(6).random(40)
    rho = boot.resampled_rho(noise)  # against ρ = 0 on every resample: how often ρ(noise) falls on either side of 0
    assert boot.paired_p_value(noise, constant) == min(1.0, 2 * (min(int((rho <= 0).sum()), int((rho >= 0).sum())) + 1) / 201)
    assert 0.05 < boot.paired_p_value(noise, constant) < 1
    one_shared = constant.copy()
    one_shared[np.argmax(scores)] = 0.5
    assert boot.paired_p_value(scores, one_shared) == 2 / 201
    assert math.isnan(boot.paired_p_value(scores, np.r_[np.nan, constant[1:]]))


def test_an_ap_that_equals_the_threshold_exactly_is_an_expert():
    """Four positives ranked 1, 6, 9 and 12 of 12 have AP (1 + 2/6 + 3/9 + 4/12) / 4 = 1/2
    exactly (sklearn says 0.5), but the kernel's sum of rounded fractions is
    0.49999999999999994, which AP ≥ τ = 0.5 used to leave out; AP / base rate = 1/2 / (4/12)
    = 1.5 likewise. A neuron a little further below stays out."""
    from sklearn.metrics import average_precision_score

    from expertlens_lite.kernels import average_precision

    labels = np.array([1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 1])
    scores = np.arange(12, 0, -1.0)[:, None]
    ap = average_precision(scores, labels)[None]
    assert average_precision_score(labels, scores[:, 0]) == 0.5 and ap[0, 0] < 0.5  # the rounding this is about
    ap = np.hstack([ap, ap - 1e-9])
    assert unpack_masks(select(ap, Selection("tau", 0.5), None), 2).tolist() == [[True, False]]
    assert unpack_masks(select(ap, Selection("lift", 1.5), base_rates(np.array([4]), np.array([8]))), 2).tolist() == [[True, False]]


def test_a_lift_that_some_concepts_cannot_reach_is_warned_about(caplog):
    """With 30 positives and 200 negatives the base rate is 0.13, so a lift of 10 would
    need an AP of 1.3: every such set used to come out empty without a word."""
    from expertlens_lite.concepts import ConceptSet
    from expertlens_lite.measures import expert_measures

    concepts = ConceptSet(
        sentences=tuple(f"s{i}" for i in range(430)),
        concepts=("a", "b"),
        positives=(np.arange(200, 230), np.arange(230, 430)),
        pool=np.arange(200),
        excluded=(np.array([], int), np.array([], int)),
    )
    ap = np.random.default_rng(0).uniform(size=(2, 50))
    expert_measures(ap, concepts, [Selection("lift", 10.0), Selection("lift", 2.0)], profiles=())
    assert caplog.messages == [
        (
            "--lift 10 selects no expert for 2 of 2 concepts: their base rate P/(P+N) is above 1/10, so their AP would "
            "have to exceed 1; lower --lift or raise --n-neg"
        )
    ]


def test_stage_functions_take_plain_python_inputs_and_refuse_wrong_ones_in_one_line():
    """Seen in an audit of the library: each of these was a bare TypeError, AttributeError
    or KeyError from deep inside, or (a lift without base rates) NumPy's."""
    ap = [[0.9, 0.1, 0.5], [0.2, 0.8, 0.6]]
    assert unpack_masks(select(ap, Selection("topk", 1), None), 3).tolist() == [[True, False, False], [False, True, False]]
    with pytest.raises(InputError, match=r"^the lift rule needs the concepts' base rates \(selection.base_rates\)$"):
        select(ap, Selection("lift", 2.0), None)
    for parameter in (True, "0.5", None):
        with pytest.raises(InputError, match=f"^--tau must be a number, got {re.escape(repr(parameter))}$"):
            Selection("tau", parameter)
    human = HumanPairs("test", (("a", "b"), ("a", "c"), ("b", "c")), (1.0, 2.0, 3.0))
    seeded, generator = Bootstrap(human, 50, 3), Bootstrap(human, 50, np.random.default_rng(3))
    assert seeded.align([1.0, 3.0, 2.0]) == generator.align([1.0, 3.0, 2.0])
    with pytest.raises(InputError, match=r"^n_resamples must be a positive whole number; got 0$"):
        Bootstrap(human, 0, 3)
    with pytest.raises(InputError, match=r"^values must have one number per rated pair \(3\); got shape \(2,\)$"):
        seeded.align([1.0, 2.0])
    undefined = seeded.align([1.0, math.nan, 2.0])
    assert all(math.isnan(v) for v in (undefined.spearman, undefined.p_value, undefined.ci_low, undefined.ci_high))


def test_pair_values_and_profiles_refuse_what_they_cannot_use():
    human = HumanPairs("test", (("a", "b"), ("a", "e")), (1.0, 2.0))
    with pytest.raises(InputError, match=r"^the rated pairs name words that are not concepts: e; restrict them first"):
        pair_values(np.eye(3), ["a", "b", "c"], human)
    with pytest.raises(InputError, match=r"^AP profiles must be a \[concepts, neurons\] matrix; got 1 dimension\(s\)$"):
        profile_similarity(np.ones(4), "cosine")
    with pytest.raises(InputError, match=r"^unknown profile similarity 'dice'; choose one of cosine, pearson, weighted_jaccard$"):
        profile_similarity(np.ones((2, 4)), "dice")
    from expertlens_lite.kernels import topk_bitsets

    with pytest.raises(InputError, match=r"^k must be an integer in \[0, 4\]; got None$"):
        topk_bitsets(np.ones((2, 4)), None)


def test_rated_pairs_and_matrices_of_other_sizes_are_one_line_errors():
    """Pairs without scores were found only in the bootstrap, a matrix of the wrong size
    was an IndexError, or read other concepts' values (an audit)."""
    with pytest.raises(InputError, match="one score per pair of two words; got 2 pairs, 1 scores"):
        HumanPairs("x", (("a", "b"), ("a", "c")), (1.0,))
    human = HumanPairs("x", (("a", "b"), ("b", "c")), (1.0, 2.0))
    for matrix in (np.zeros((2, 2)), np.zeros((4, 4)), np.zeros(9)):
        with pytest.raises(InputError, match=r"^the similarity matrix must be \[concepts, concepts\] \(3 x 3\)"):
            pair_values(matrix, ("a", "b", "c"), human)
    assert pair_values(np.arange(9.0).reshape(3, 3), ("a", "b", "c"), human).tolist() == [1.0, 5.0]
