"""The whole ExpertLens run as one function over plain data: :func:`run`.

corpus + concepts → :class:`~expertlens_lite.concepts.ConceptSet` → export →
responses → expertise (AP per concept and neuron) → similarity measures →
alignment with human ratings → results folder. The CLI only builds a
:class:`RunConfig` and calls :func:`run`; so can any pipeline that embeds the
library.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .alignment import Bootstrap, bootstrap_bytes
from .atomic import (
    file_leftovers,
    json_ready,
    remove_leftovers,
    reported_write_failures,
)
from .concepts import (
    ConceptSet,
    build_concept_set,
    is_concept_word,
    matching_sentences,
    read_concepts,
    read_corpus,
    word_index,
)
from .config import RunConfig
from .devices import resolve_device
from .errors import InputError, ResourceError
from .export import ExportedModel, export_model
from .human import HumanPairs, read_human_pairs
from .kernels import average_precision_many
from .locks import refusing, using_cache, writing_into
from .measures import Measure, baseline_measures, expert_measures, score_all
from .models.sources import resolve_model
from .paths import (
    DEFAULT_CORPUS,
    DEFAULT_HUMAN,
    RESULT_FILES,
    SUMMARY,
    bundled,
    cache_dir,
    check_outside_cache,
    make_folder,
)
from .results import staged_results, write_results, write_summary
from .runtime import available_memory, compute_responses

log = logging.getLogger(__name__)

# Fewer rated pairs than this get a warning: at 30 pairs a 95% CI of Spearman's ρ is
# still about ±0.35 (Fisher's z, ±1.96 / sqrt(n - 3)), so rules cannot be told apart.
FEW_PAIRS = 30

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as a long stage advances."""


@dataclass
class RunResult:
    """What a run produced: the summary (as written to ``summary.json``) and the arrays."""

    summary: dict
    out: Path
    """The results folder, absolute."""
    concept_set: ConceptSet
    ap: np.ndarray
    """float64 [concepts, neurons]: each neuron's average precision for each concept of
    ``concept_set.concepts``, in that order; neurons in the manifest's layer order."""
    measures: list[Measure]


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        log.info("stage %s", name)
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)


def corpus_file(config: RunConfig) -> Path:
    """The corpus a run reads: ``--corpus``, else the bundled one."""
    return config.corpus or bundled(DEFAULT_CORPUS)


def load_inputs(config: RunConfig) -> tuple[ConceptSet, HumanPairs]:
    """Read corpus, concepts and human ratings; sample the concept set."""
    corpus = read_corpus(corpus_file(config))
    human = read_human_pairs(config.human or bundled(DEFAULT_HUMAN))
    if config.concepts is not None:
        words = read_concepts(config.concepts)
    else:  # words of the human set that occur in the corpus at all
        if unusable := sorted(w for w in human.words if not is_concept_word(w)):  # were left out without a word
            log.warning(
                "%d rated word(s) of %s are not single words as the corpus is matched, so never concepts; their pairs "
                "are left out: %s%s", len(unusable), human.source, ", ".join(unusable[:8]), " …" if len(unusable) > 8 else "",
            )
        index = word_index(corpus)
        words = sorted(w for w in human.words if matching_sentences(w, index))
    concept_set = build_concept_set(
        corpus, words, n_pos=config.n_pos, n_neg=config.n_neg, min_pos=config.min_pos, seed=config.seed,
        warn_skipped=config.concepts is not None,
    )
    rated = human.restricted_to(set(concept_set.concepts))
    if len(rated.pairs) < 3:
        raise InputError(
            f"only {len(rated.pairs)} rated pair(s) of {human.source} have both words among the "
            f"{len(concept_set.concepts)} concepts; need at least 3 to measure alignment"
        )
    if len(set(rated.scores)) == 1:  # ρ would be undefined for every measure, CIs [0, 0] (found by an audit)
        raise InputError(
            f"all {len(rated.pairs)} rated pairs of {human.source} among the concepts have the same human score "
            f"({rated.scores[0]:g}): no alignment can be measured against it"
        )
    if len(rated.pairs) < FEW_PAIRS:
        log.warning(
            "only %d rated pairs have both words among the concepts: each ρ rests on so few that its 95%% CI is "
            "±0.35 or wider; add concepts that %s rates", len(rated.pairs), human.source,
        )
    _check_bootstrap_fits(config.n_bootstrap, len(rated.pairs))
    return concept_set, rated


def _check_bootstrap_fits(n_resamples: int, n_pairs: int) -> None:
    """Refuse, before the export and inference, a bootstrap larger than free memory."""
    need, free = bootstrap_bytes(n_resamples, n_pairs), available_memory()
    if need > free:
        raise ResourceError(
            f"--n-bootstrap {n_resamples} needs about {need / 1e9:.1f} GB of memory for {n_pairs} rated pairs, "
            f"but {free / 1e9:.1f} GB are free; lower --n-bootstrap"
        )


def run(config: RunConfig, progress: Progress | None = None) -> RunResult:
    """Run the whole pipeline, as ``elens-lite run`` does, and write the results folder
    ``config.out`` (relative to the working directory; refused if it holds an earlier
    run's results, unless ``config.overwrite``).

    The export and the response matrices are cached under ``ELENS_HOME`` (default
    ``~/.cache/expertlens-lite``) and reused by later runs. ``progress(stage, done,
    total)`` is called as the slow stages advance.

    Returns:
        The summary (as written to ``summary.json``), the concept set, the AP matrix and
        every measure's alignment.

    Raises:
        InputError, ModelError, ResourceError (all :class:`~.errors.ElensError`): bad
        input, a model that cannot be exported, too little memory or disk; each with a
        one-line message, the CLI's.
    """
    if not isinstance(config, RunConfig):  # run("minilm") was an AttributeError
        raise InputError(f"run takes a RunConfig, e.g. run(RunConfig(model='minilm')); got {type(config).__name__} {str(config)[:40]!r}")
    if progress is not None and not callable(progress):  # found before the slow stages, not at the first call
        raise InputError(f"progress must be a function (stage, done, total) or None; got {type(progress).__name__}")
    config.validate()  # before the locks: a refused run leaves nothing in the cache
    cache = cache_dir()
    check_outside_cache(config.out, cache)  # a run's results in the cache were deleted by cache rm (an audit)
    with using_cache(cache), _only_run_into(config.out, cache):
        return _run(config, cache, progress)


def _only_run_into(out: Path, cache: Path) -> AbstractContextManager[None]:
    """Hold ``out`` for this run alone; a second run into it meanwhile is refused.

    Two runs into one folder at once would both pass the check for an earlier
    ``summary.json`` and then interleave their files, one's summary beside the other's
    results (seen in an audit). The lock lives in the cache (:mod:`.locks`), so that a
    refused run leaves nothing in ``out``.
    """
    return refusing(out, cache, f"--out {out} is being written by another elens-lite run; wait for it, or choose another --out")


@contextmanager
def _writing_into(out: Path, overwrite: bool) -> Iterator[None]:
    """Hold ``out`` while this run writes its results there, and refuse to replace the
    results of a run that finished into it meanwhile (unless ``overwrite``).

    :func:`_only_run_into` keeps out runs of the same cache only: two runs with their
    own ``ELENS_HOME`` both found no ``summary.json`` when they started, then wrote
    into one folder at once, and each exited 0 (seen in an audit; killed at the wrong
    moment, one left its ``summary.json`` beside the other's results). Temporary files
    that a run killed while writing here left are removed.
    """
    with reported_write_failures(f"--out {out}"):  # the lock file too: a read-only or full disk is one line
        make_folder(out)
        with writing_into(out):
            if (out / SUMMARY).exists() and not overwrite:
                raise InputError(
                    f"--out {out} got the results of another elens-lite run while this one ran; pass --overwrite to "
                    "replace them, or choose another --out (this run's cached work makes a rerun quick)"
                )
            remove_leftovers(out, *(pattern for name in RESULT_FILES for pattern in file_leftovers(name)))
            yield


def _run(config: RunConfig, cache: Path, progress: Progress | None) -> RunResult:
    timer = _Timer()
    with timer.stage("concepts"):
        concept_set, rated = load_inputs(config)
    with timer.stage("export"):
        if progress is not None:  # an export takes a minute or more, once: a bar from the start says so
            progress("export", 0, 1)
        exported = export_model(resolve_model(config.model, config.revision, cache), cache, config.quantize)
        if progress is not None:
            progress("export", 1, 1)
    for selection in config.selections():  # before inference, now that the model's size is known
        selection.check_neurons(exported.manifest.n_neurons)
    with timer.stage("responses"):
        responses = compute_responses(
            exported,
            concept_set.sentences,
            cache,
            options=config.pooling,
            quantize=config.quantize,
            device=config.device,
            batch_size=config.batch_size,
            progress=None if progress is None else lambda d, t: progress("responses", d, t),
        )
    with timer.stage("expertise"):
        ap = average_precision_many(
            responses.neurons,
            concept_set.positives,
            concept_set.pool,
            concept_set.excluded,
            progress=None if progress is None else lambda d, t: progress("expertise", d, t),
        )
    with timer.stage("analysis"):
        measures = expert_measures(ap, concept_set, config.selections()) + baseline_measures(exported, responses, concept_set)
        bootstrap = Bootstrap(rated, config.n_bootstrap, np.random.default_rng(config.seed), config.bootstrap_unit)
        score_all(measures, concept_set.concepts, rated, bootstrap)
    summary = _summary(config, exported, concept_set, rated, measures, timer)
    with _writing_into(config.out, config.overwrite), staged_results(config.out) as staged:
        with timer.stage("write"):
            write_results(staged, summary, exported.manifest, concept_set, rated, ap, measures, min(config.taus))
        summary = json_ready(summary | {"timings": timer.seconds})  # what summary.json holds
        write_summary(staged, summary)
    return RunResult(summary, config.out.absolute(), concept_set, ap, measures)  # right after a chdir too


def _summary(
    config: RunConfig,
    exported: ExportedModel,
    concept_set: ConceptSet,
    rated: HumanPairs,
    measures: list[Measure],
    timer: _Timer,
) -> dict:
    manifest = exported.manifest
    experts = [m for m in measures if m.selection is not None and m.selection.rule == "tau"]
    baselines = {m.name: m.alignment.as_dict() for m in measures if m.kind == "baseline"}
    return {
        "tool": f"expertlens-lite {__version__}",
        "model": config.model,
        "revision": config.revision,
        "commit": manifest.commit,
        "architecture": manifest.architecture,
        "n_layers": manifest.n_layers,
        "n_neurons": manifest.n_neurons,
        "n_concepts": len(concept_set.concepts),
        "n_sentences": len(concept_set.sentences),
        "n_pool": len(concept_set.pool),  # --n-neg, or the whole corpus where it is smaller
        "device_used": resolve_device(config.device),  # what --device auto resolves to here (cached responses ran nothing)
        "onnx_file": exported.onnx_path(config.quantize).name,  # for int8: which weights (quantize.int8_weights)
        "n_pairs": len(rated.pairs),
        # absolute, so that the summary names its inputs wherever it is read from
        "corpus": os.path.abspath(corpus_file(config)),
        "human": os.path.abspath(rated.source),
        "concepts": list(concept_set.concepts),
        "skipped_concepts": concept_set.skipped,
        "settings": {
            "taus": list(config.taus),
            "lifts": list(config.lifts),
            "topks": list(config.topks),
            "top_fracs": list(config.top_fracs),
            "n_pos": config.n_pos,
            "n_neg": config.n_neg,
            "min_pos": config.min_pos,
            "seed": config.seed,
            "quantize": config.quantize,
            "device": config.device,
            "batch_size": config.batch_size,
            "n_bootstrap": config.n_bootstrap,
            "bootstrap_unit": config.bootstrap_unit,
            "pooling": asdict(config.pooling),
        },
        "alignment": [
            {"tau": m.selection.parameter, **m.alignment.as_dict(), "median_experts": m.median_size, "zero_overlap_fraction": m.zero_overlap}
            for m in experts
        ],
        "default_measure": config.headline(),
        "comparison": [m.row() for m in measures],
        "baselines": baselines,
        "timings": timer.seconds,
    }
