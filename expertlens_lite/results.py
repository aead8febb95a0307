"""The results folder of a run: plain, documented files (see the README).

- ``summary.json``: settings, sizes, the alignment table, baselines, timings;
- ``experts.csv``: ``concept, layer, unit, ap`` for every AP ≥ the smallest τ;
- ``similarity.csv``: per rated pair, the human score and every measure's value
  (``jaccard`` is the paper's τ-Jaccard at the first τ);
- ``ap.npy``: the AP matrix ``float32 [n_concepts, n_neurons]`` (concepts in
  ``summary.json`` order, neurons in layer order);
- ``report.html``: the human-facing view, viewable offline.

Each file is written atomically, so an interrupted run never leaves a torn file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .atomic import atomic_path, reported_write_failures, write_json, write_text
from .concepts import ConceptSet
from .export import Manifest
from .human import HumanPairs
from .measures import Measure
from .report import render_report
from .selection import AP_ROUNDING


def _csv_text(header: Sequence[str], rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def experts_rows(ap: np.ndarray, concepts: Sequence[str], manifest: Manifest, min_tau: float):
    """``(concept, layer, unit, ap)`` for each AP ≥ ``min_tau`` (with the expert sets'
    margin, :data:`.selection.AP_ROUNDING`), by concept then descending AP."""
    layers, units = (np.asarray(a) for a in manifest.layer_and_unit())
    for c, concept in enumerate(concepts):
        columns = np.flatnonzero(ap[c] + AP_ROUNDING >= min_tau)
        for m in columns[np.argsort(-ap[c, columns], kind="stable")]:
            yield concept, int(layers[m]), int(units[m]), f"{ap[c, m]:.9g}"


SUMMARY = "summary.json"  # written last: a folder that has it holds a finished run's results
EXPERTS, SIMILARITY, AP, REPORT = "experts.csv", "similarity.csv", "ap.npy", "report.html"
RESULT_FILES = (EXPERTS, SIMILARITY, AP, REPORT, SUMMARY)


def write_summary(out: Path, summary: dict) -> None:
    """Write ``summary.json``, which marks ``out`` as holding a finished run's results."""
    with reported_write_failures(f"--out {out}"):
        write_json(out / SUMMARY, summary)


def write_results(
    out: Path,
    summary: dict,
    manifest: Manifest,
    concept_set: ConceptSet,
    rated: HumanPairs,
    ap: np.ndarray,
    measures: list[Measure],
    min_tau: float,
) -> None:
    """Write every result file except ``summary.json`` (written last, with final timings).

    An earlier run's ``summary.json`` goes first, so that a run interrupted while it
    replaces that run's files never leaves a folder that looks finished. A full disk is
    one line naming ``--out``: it is found only here, after the run's slow stages.
    """
    with reported_write_failures(f"--out {out}"):
        out.mkdir(parents=True, exist_ok=True)
        (out / SUMMARY).unlink(missing_ok=True)
        concepts = concept_set.concepts
        write_text(out / EXPERTS, _csv_text(("concept", "layer", "unit", "ap"), experts_rows(ap, concepts, manifest, min_tau)))
        paper, others = measures[0], measures[1:]
        header = ["concept_a", "concept_b", "human", "jaccard", *(m.name for m in others)]
        rows = (
            # Human scores as read (shortest round trip), measures to 9 digits: 6 made ties that moved ρ.
            [a, b, np.format_float_positional(score, trim="-"), *(f"{m.pair_values[i]:.9g}" for m in measures)]
            for i, ((a, b), score) in enumerate(zip(rated.pairs, rated.scores))
        )
        write_text(out / SIMILARITY, _csv_text(header, rows))
        with atomic_path(out / AP, suffix=".npy") as tmp:
            np.save(tmp, ap.astype(np.float32))
        write_text(out / REPORT, render_report(summary, measures, rated, paper, ap, manifest))
