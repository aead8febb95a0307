"""Concept-similarity measures and their scores against human ratings.

A :class:`Measure` is one way of saying how similar two concepts are, as a
``[C, C]`` matrix: Jaccard of the expert sets of one selection rule, a graded
similarity of AP profiles, or one of the two embedding baselines. Every measure of
a run is scored on the same human pairs and bootstrap resamples, and compared with
the paper's measure (τ-Jaccard at the first τ) by a paired bootstrap.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .alignment import Alignment, Bootstrap, pair_values
from .baselines import cosine_matrix, sentence_embedding_vectors, word_embedding_vectors
from .concepts import ConceptSet
from .export import ExportedModel
from .human import HumanPairs
from .kernels import jaccard_matrix, popcount
from .runtime import Responses
from .selection import Selection, base_rates, select
from .similarity import PROFILE_SIMILARITIES, profile_similarity

log = logging.getLogger(__name__)

PAPER_MEASURE = "tau"


def constant_paper_note(paper: str) -> str:
    """What "p vs paper" means where the paper's measure is the same on every rated pair
    (:meth:`.alignment.Bootstrap.paired_p_value`)."""
    return f"{paper} is the same on every rated pair (ρ undefined): p vs paper tests ρ against 0"


def median_text(value: float | None) -> str:
    """A median expert-set size as the table and the report show it: a whole number as
    one, the half between two sizes with its .5 (rounding showed 2.5 as 2)."""
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


@dataclass
class Measure:
    """One similarity measure and, once scored, its alignment with human ratings.

    Attributes:
        name: unique label, e.g. ``"topk=200 jaccard"`` or ``"word_embedding"``.
        kind: ``"experts"`` (from expert sets or AP profiles) or ``"baseline"``.
        selection: the selection rule for set-based measures, else None.
        similarity: ``"jaccard"``, a profile similarity, or ``"cosine"`` (baselines).
        matrix: ``[C, C]`` similarity of concepts.
        set_sizes: expert-set size per concept (set-based measures only).
    """

    name: str
    kind: str
    selection: Selection | None
    similarity: str
    matrix: np.ndarray = field(repr=False)
    set_sizes: np.ndarray | None = field(default=None, repr=False)
    alignment: Alignment | None = None
    paired_p_value: float | None = None
    zero_overlap: float | None = None
    pair_values: np.ndarray | None = field(default=None, repr=False)

    @property
    def median_size(self) -> float | None:
        return None if self.set_sizes is None else float(np.median(self.set_sizes))

    def score(self, concepts: Sequence[str], rated: HumanPairs, bootstrap: Bootstrap) -> None:
        """Fill in the alignment and, for set measures, the share of rated pairs with no shared expert."""
        self.pair_values = pair_values(self.matrix, tuple(concepts), rated)
        self.alignment = bootstrap.align(self.pair_values)
        if self.set_sizes is not None:
            self.zero_overlap = float(np.mean(self.pair_values == 0))

    def row(self) -> dict:
        """The measure's line of the comparison table (JSON-ready)."""
        return {
            "measure": self.name,
            "kind": self.kind,
            "selection": None if self.selection is None else self.selection.label,
            "similarity": self.similarity,
            **(self.alignment.as_dict() if self.alignment else {}),
            "paired_p_vs_paper": self.paired_p_value,
            "median_experts": self.median_size,
            "zero_overlap_fraction": self.zero_overlap,
        }


def expert_measures(ap: np.ndarray, concept_set: ConceptSet, selections: Sequence[Selection], profiles: Sequence[str] = PROFILE_SIMILARITIES) -> list[Measure]:
    """Jaccard of each selection's expert sets, then each graded profile similarity."""
    n_pos = np.array([len(p) for p in concept_set.positives])
    n_neg = np.array([concept_set.n_negatives(c) for c in range(len(concept_set.concepts))])
    rates = base_rates(n_pos, n_neg)
    measures = []
    for selection in selections:
        if selection.rule == "lift" and (unreachable := int(np.sum(rates * selection.parameter > 1))):
            log.warning(
                "--lift %g selects no expert for %d of %d concepts: their base rate P/(P+N) is above 1/%g, so their AP "
                "would have to exceed 1; lower --lift or raise --n-neg", selection.parameter, unreachable, len(rates), selection.parameter,
            )
        bits = select(ap, selection, rates)
        measures.append(Measure(f"{selection.label} jaccard", "experts", selection, "jaccard", jaccard_matrix(bits), popcount(bits)))
    for name in profiles:
        measures.append(Measure(f"profile {name}", "experts", None, name, profile_similarity(ap, name)))
    return measures


def baseline_measures(exported: ExportedModel, responses: Responses, concept_set: ConceptSet) -> list[Measure]:
    """The sentence- and word-embedding baselines of the same model, compared by cosine."""
    sentence = sentence_embedding_vectors(responses.sentence_embeddings, concept_set.positives)
    word = word_embedding_vectors(exported.embeddings(), exported.tokenizer(), concept_set.concepts)
    return [
        Measure("sentence_embedding", "baseline", None, "cosine", cosine_matrix(sentence)),
        Measure("word_embedding", "baseline", None, "cosine", cosine_matrix(word)),
    ]


def score_all(measures: list[Measure], concepts: Sequence[str], rated: HumanPairs, bootstrap: Bootstrap) -> None:
    """Score every measure and its paired difference from the paper's τ-Jaccard (the first τ)."""
    for measure in measures:
        measure.score(concepts, rated, bootstrap)
    paper = next((m for m in measures if m.selection is not None and m.selection.rule == PAPER_MEASURE), None)
    if paper is None:
        return
    for measure in measures:
        if measure is not paper:
            measure.paired_p_value = bootstrap.paired_p_value(measure.pair_values, paper.pair_values)
