"""The results folder of a run: plain, documented files (see the README).

- ``summary.json``: settings, sizes, the alignment table, baselines, timings;
- ``experts.csv``: ``concept, layer, unit, ap`` for every AP ≥ the smallest τ;
- ``similarity.csv``: per rated pair, the human score and every measure's value
  (``jaccard`` is the paper's τ-Jaccard at the first τ);
- ``ap.npy``: the AP matrix ``float32 [n_concepts, n_neurons]`` (concepts in
  ``summary.json`` order, neurons in layer order);
- ``report.html``: the human-facing view, viewable offline.

Each file is written atomically, so an interrupted run never leaves a torn file, and
all of them at the end together (:func:`staged_results`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from .atomic import (
    atomic_path,
    json_text,
    make_ready,
    reported_write_failures,
    signals_deferred,
)
from .concepts import ConceptSet
from .export import Manifest
from .human import HumanPairs
from .measures import Measure
from .paths import AP, EXPERTS, REPORT, SIMILARITY, SUMMARY, make_folder
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


@contextmanager
def staged_results(out: Path) -> Iterator[dict[str, Path]]:
    """Temporary files for every result file, ``summary.json`` included, which take their
    places together when the block ends without an error.

    Only when all of them are written (by :func:`write_results` and
    :func:`write_summary`) and on the disk does an earlier run's ``summary.json`` go and
    the new files take their places, one rename each, ``summary.json`` last, with Ctrl-C
    and SIGTERM held meanwhile (:func:`~.atomic.signals_deferred`). A run stopped or
    failing (a full disk) while it writes leaves an earlier run's results as they were,
    summary and all (they used to be replaced file by file, so an ``--overwrite`` run
    cut short had lost them; and a Ctrl-C within the renames left a mix, found by
    audits). Only a SIGKILL or a power cut within the renames (milliseconds) leaves a
    mix, and then no ``summary.json`` says it is finished. A full disk is one line
    naming ``--out``: it is found only here, after the run's slow stages.
    """
    with reported_write_failures(f"--out {out}"), ExitStack() as files:
        make_folder(out)
        held = files.enter_context(ExitStack())  # closed last: what holds the signals lets go after every rename
        # Entered first, renamed last: summary.json marks the folder as finished.
        staged = {name: files.enter_context(atomic_path(out / name, Path(name).suffix, made_ready=True)) for name in (SUMMARY, EXPERTS, SIMILARITY, AP, REPORT)}

        def commit_begins(failed: type[BaseException] | None, *_) -> None:
            if failed is None:
                held.enter_context(signals_deferred())
                (out / SUMMARY).unlink(missing_ok=True)

        files.push(commit_begins)  # exits run last-in first: this one, then the renames
        yield staged


def write_summary(staged: dict[str, Path], summary: dict) -> None:
    """Write ``summary.json`` into its staged file (:func:`staged_results`), on the disk."""
    staged[SUMMARY].write_text(json_text(summary), encoding="utf-8")
    make_ready(staged[SUMMARY])


def write_results(
    staged: dict[str, Path],
    summary: dict,
    manifest: Manifest,
    concept_set: ConceptSet,
    rated: HumanPairs,
    ap: np.ndarray,
    measures: list[Measure],
    min_tau: float,
) -> None:
    """Write every result file but ``summary.json`` (written last, with final timings)
    into its staged file (:func:`staged_results`), each on the disk before the earlier
    summary goes: some disks report a full one only then."""
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
    for name in (EXPERTS, SIMILARITY, AP, REPORT):
        make_ready(staged[name])
