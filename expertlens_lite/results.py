"""The results folder of a run: plain, documented files (see the README).

- ``summary.json``: settings, sizes, the alignment table, baselines, timings;
- ``experts.csv``: ``concept, layer, unit, ap`` for every AP ≥ the smallest τ;
- ``similarity.csv``: per rated pair, the human score and every measure's value
  (``jaccard`` is the paper's τ-Jaccard at the first τ);
- ``ap.npy``: the AP matrix ``float32 [n_concepts, n_neurons]`` (concepts in
  ``summary.json`` order, neurons in layer order);
- ``report.html``: the human-facing view, viewable offline.

Each file is written atomically, so an interrupted run never leaves a torn file, and
all of them at the end together (:func:`write_results`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from .atomic import atomic_path, make_ready, reported_write_failures, write_json
from .concepts import ConceptSet
from .export import Manifest
from .human import HumanPairs
from .measures import Measure
from .paths import AP, EXPERTS, REPORT, SIMILARITY, SUMMARY
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

    All of them are written to temporary files first; only then does an earlier run's
    ``summary.json`` go and the new files take their places, one rename each. A run
    stopped or failing (a full disk) while it writes leaves an earlier run's results
    as they were, summary and all (they used to be replaced file by file, so an
    ``--overwrite`` run cut short had lost them, found by an audit); only a stop within
    those renames (milliseconds) leaves a mix, and then no ``summary.json`` says it is
    finished. A full disk is one line naming ``--out``: it is found only here, after the
    run's slow stages.
    """
    with reported_write_failures(f"--out {out}"), ExitStack() as files:
        out.mkdir(parents=True, exist_ok=True)
        staged = {name: files.enter_context(atomic_path(out / name, Path(name).suffix, made_ready=True)) for name in (EXPERTS, SIMILARITY, AP, REPORT)}

        def drop_earlier_summary(failed: type[BaseException] | None, *_) -> None:
            if failed is None:
                (out / SUMMARY).unlink(missing_ok=True)

        files.push(drop_earlier_summary)  # exits run last-in first: this one, then the renames
        concepts = concept_set.concepts
        staged[EXPERTS].write_text(_csv_text(("concept", "layer", "unit", "ap"), experts_rows(ap, concepts, manifest, min_tau)), encoding="utf-8")
        paper, others = measures[0], measures[1:]
        # DESIGN.md's columns first, in its order: concept_a, concept_b, jaccard, human.
        header = ["concept_a", "concept_b", "jaccard", "human", *(m.name for m in others)]
        rows = (
            # Human scores as read (shortest round trip), measures to 9 digits: 6 made ties that moved ρ.
            [a, b, f"{paper.pair_values[i]:.9g}", np.format_float_positional(score, trim="-"), *(f"{m.pair_values[i]:.9g}" for m in others)]
            for i, ((a, b), score) in enumerate(zip(rated.pairs, rated.scores))
        )
        staged[SIMILARITY].write_text(_csv_text(header, rows), encoding="utf-8")
        np.save(staged[AP], ap.astype(np.float32))
        # The report names the run's paths; one that is not UTF-8 on the disk (legal on Linux)
        # is shown as Python shows it, "\udce9", rather than failing the run here, at its end.
        report = render_report(summary, measures, rated, paper, ap, manifest)
        staged[REPORT].write_text(report, encoding="utf-8", errors="backslashreplace")
        for tmp in staged.values():  # on the disk before the earlier summary goes: some disks report a full one only here
            make_ready(tmp)
