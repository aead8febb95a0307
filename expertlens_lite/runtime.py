"""ONNX Runtime inference: pooled neuron responses for every sentence, cached on disk.

Sentences are tokenized once; a causal model runs the heads they share once
(:mod:`.heads`), then the rest of every sentence, sorted into length buckets and run
in batches (on the CPU one batch per core, :func:`run_batches`); each batch's pooled outputs are written
straight into a memory-mapped ``.npy`` file, so the response matrix
``[n_sentences, n_neurons]`` never has to fit in RAM. The file is only renamed into
place when complete; an interrupted run keeps its finished batches and resumes from them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import psutil

from .atomic import flushed_names, remove_leftovers, write_json
from .batching import (
    Encoded,
    PoolingOptions,
    encode,
    length_buckets,
    make_batch,
    pad_id,
)
from .devices import (
    batches_at_once,
    confined_threads,
    onnxruntime_module,
    resolve_device,
)
from .errors import InputError, ModelError, ResourceError, size_text, whole_number
from .export import ExportedModel, Manifest
from .export.manifest import MANIFEST
from .export.prefix import Prefix
from .export.surgery import PAST_INPUT, keep_outputs, response_outputs
from .heads import (
    Heads,
    HeadStates,
    check_prefix,
    fed_back,
    group_heads,
    head_batch,
    is_fed_back,
)
from .lengths import check_lengths, export_max_tokens
from .locks import waiting_for
from .paths import ABOUT, cache_folder_given, is_unicode, nearest_existing

log = logging.getLogger(__name__)

HEADS_MEMORY = 1 << 30  # most bytes the heads' states may take (:func:`shared_heads`)


def create_session(path: Path, device: str = "cpu", threads: int | None = None, keep: Callable[[str], bool] | None = None):
    """An ONNX Runtime session on ``device`` (``cpu`` or ``cuda``), all graph optimizations on;
    ``threads`` sets its intra-op threads (default: ONNX Runtime's, one per physical
    core, or one per CPU the process may use where it may not use them all,
    :func:`.devices.confined_threads`).

    With ``keep``, the session's graph computes only the outputs whose names it accepts
    (:func:`.export.surgery.keep_outputs`); the weights are read from the file as usual,
    external data included.
    """
    ort = onnxruntime_module()

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads is None:
        threads = confined_threads()
    if threads is not None:
        options.intra_op_num_threads = threads
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    if keep is None:
        return ort.InferenceSession(str(path), options, providers=providers)
    model = onnx.load(path, load_external_data=False)
    keep_outputs(model, keep)
    graph = model.SerializeToString()
    del model  # a model under 2 GB holds its weights: one copy less while the session loads
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(Path(path).parent))
    return ort.InferenceSession(graph, options, providers=providers)


def feed_for(session, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The subset of ``batch`` that the session takes as inputs; a graph that takes past
    tokens (:mod:`.heads`) gets none if ``batch`` has none, so it runs whole sentences."""
    if not all(i.name in batch for i in session.get_inputs()):
        batch = HeadStates.empty(session, len(batch["input_ids"]), 0).arrays | batch
    return {i.name: batch[i.name] for i in session.get_inputs()}


def run_batch(session, names: list[str], batch: dict[str, np.ndarray], device: str) -> list[np.ndarray]:
    """Run one batch; on CUDA through I/O binding (:func:`run_bound`)."""
    if device != "cuda":
        return session.run(names, feed_for(session, batch))
    return run_bound(session, names, batch, "cuda")


def run_bound(session, names: list[str], batch: dict[str, np.ndarray], device_type: str) -> list[np.ndarray]:
    """Run one batch through I/O binding: the inputs are copied to ``device_type`` once,
    the outputs ``names`` are allocated there and copied back once, and intermediate
    tensors never leave the device. Separate from :func:`run_batch` so that this path,
    which CUDA runs, can be checked on the CPU too."""
    binding = session.io_binding()
    for name, array in feed_for(session, batch).items():
        binding.bind_cpu_input(name, array)
    for name in names:
        binding.bind_output(name, device_type)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()


def inference_session(path: Path, device: str, workers: int, outputs: Sequence[str]):
    """A session for :func:`run_batches` with ``workers`` batches at once: one intra-op
    thread each when there are several (they share the session), else ONNX Runtime's
    default. It computes ``outputs`` and what a head's run leaves for later runs
    (:func:`.heads.is_fed_back`), nothing else."""
    wanted = set(outputs)
    return create_session(path, device, threads=1 if workers > 1 else None, keep=lambda name: name in wanted or is_fed_back(name))


def run_batches(
    session, names: list[str], batches: Iterable[dict[str, np.ndarray]], device: str, workers: int = 1
) -> Iterator[list[np.ndarray]]:
    """Each batch's outputs, in order, with ``workers`` batches running at once.

    Why batches side by side rather than one batch on every core: a batch of short
    sentences makes small MatMuls, and every one of the graph's ~4,000 nodes forks
    and joins ONNX Runtime's intra-op threads. On this project's 2-core machine, a
    single-threaded session per core ran SmolLM2's int8 graph 8% faster (median of 10
    interleaved rounds) than one session on both cores, with bit-identical outputs
    and shorter slow spells (BENCHMARKS.md). ``session`` is shared (``run`` is
    thread-safe and releases the GIL); give it one intra-op thread. One batch more
    than ``workers`` is queued, so no core waits while the caller takes a result.
    """
    if workers == 1:
        for batch in batches:
            yield run_batch(session, names, batch, device)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        try:
            for batch in batches:
                pending.append(pool.submit(run_batch, session, names, batch, device))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # the caller stopped early: drop what has not started
            for future in pending:
                future.cancel()


def available_memory() -> int:
    """Bytes of physical memory a new allocation can have now without swapping.

    psutil's ``available`` (Linux's ``MemAvailable``: free pages plus the page cache
    and other memory the kernel can reclaim; its own estimate on macOS and Windows),
    not the free pages alone (``SC_AVPHYS_PAGES``): Linux keeps few pages free and
    fills the rest with cache, so after a few large files were read the free pages
    alone were 1.5 GB of 24 GB available, and runs were refused for want of memory
    they had. ``SC_AVPHYS_PAGES`` does not exist on macOS or Windows either.
    """
    return psutil.virtual_memory().available


def shared_heads(session, encoded: Encoded, options: PoolingOptions, before: int) -> Heads:
    """The sentences grouped by their heads (:mod:`.heads`): the constant prefix
    (``before`` tokens) and one token, unless the heads' states would take more than a
    quarter of the free memory (or ``HEADS_MEMORY``), then the prefix alone; for a graph
    without past, empty heads."""
    if not any(i.name.startswith(PAST_INPUT) for i in session.get_inputs()):
        return group_heads(encoded, options, 0)
    budget = min(available_memory() // 4, HEADS_MEMORY)
    heads = group_heads(encoded, options, before + 1)
    if len(heads.first) * HeadStates.bytes_per_head(session, heads.length) > budget:
        return group_heads(encoded, options, before)
    return heads


@dataclass(frozen=True)
class BatchPlan:
    """Which rows every batch of a run takes, in the order they run: the heads that run
    after the constant prefix (:mod:`.heads`; head indices), then the sentences of the
    prefix alone, then the rests of the others (sentence indices). Fixed before any
    batch runs, so that a resumed run can check the batch count its progress file
    claims against it (:func:`compute_responses`)."""

    heads: Heads
    head_buckets: list[np.ndarray]
    alone_buckets: list[np.ndarray]
    rest_buckets: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.head_buckets) + len(self.alone_buckets) + len(self.rest_buckets)

    def fingerprint(self) -> str:
        """What identifies the layout, which a resumed run must share with the interrupted
        one: it depends on free memory too (:func:`shared_heads`), which may have changed."""
        digest = hashlib.sha256(f"heads {self.heads.length}".encode())
        for bucket in (*self.head_buckets, *self.alone_buckets, *self.rest_buckets):
            digest.update(np.asarray(bucket, dtype=np.int64).tobytes() + b"|")
        return digest.hexdigest()[:16]


def plan_batches(session, encoded: Encoded, options: PoolingOptions, batch_size: int, prefix: Prefix) -> BatchPlan:
    """The batches of a run over ``encoded``, each sorted into length buckets of at most
    ``batch_size`` rows; a graph without past has empty heads: every sentence runs
    whole, with those of the prefix alone."""
    check_prefix(encoded, prefix)
    before = len(prefix.token_ids)
    heads = shared_heads(session, encoded, options, before)
    lengths = encoded.lengths()

    def buckets(rows: np.ndarray, row_lengths: np.ndarray) -> list[np.ndarray]:
        return [rows[bucket] for bucket in length_buckets(row_lengths, batch_size)]

    head_buckets: list[np.ndarray] = []
    if heads.length > before:
        runnable = np.flatnonzero(lengths[heads.first] > before)
        head_buckets = buckets(runnable, np.minimum(lengths[heads.first[runnable]], heads.length))
    alone = np.flatnonzero(lengths <= before)
    rests = heads.rests(encoded)
    return BatchPlan(heads, head_buckets, buckets(alone, lengths[alone]), buckets(rests, lengths[rests]))


def pooled_batches(
    session,
    names: list[str],
    encoded: Encoded,
    plan: BatchPlan,
    options: PoolingOptions,
    pad: int,
    device: str,
    workers: int,
    prefix: Prefix,
    skip: int = 0,
) -> Iterator[tuple[np.ndarray, list[np.ndarray] | None]]:
    """``(sentences, outputs)`` for every sentence once, batch by batch of ``plan``; the
    first ``skip`` batches come without outputs (already written by an interrupted run),
    computed only as far as later ones need.

    First the distinct heads run after the constant ``prefix`` (:mod:`.heads`;
    :meth:`.ExportedModel.prefix`), which finishes the sentences that end within them;
    then the sentences of the prefix alone run whole; then every other sentence runs
    from the token after its head.
    """
    heads = plan.heads
    states = HeadStates.empty(session, len(heads.first), heads.length, prefix)
    if plan.head_buckets:
        feeds = fed_back(session)
        runs = _run_buckets(session, names + list(feeds), plan.head_buckets, lambda rows: head_batch(encoded, heads, rows, pad, prefix), device, workers)
        for number, (rows, outputs) in enumerate(runs):  # skipped or not: later batches read their states
            states.store(rows, dict(zip(feeds.values(), outputs[len(names) :])), len(prefix.token_ids))
            ended, at = heads.ended_in(encoded, rows)
            yield ended, [output[at] for output in outputs[: len(names)]] if number >= skip else None
    skip = max(0, skip - len(plan.head_buckets))
    yield from _run_buckets(session, names, plan.alone_buckets, lambda rows: make_batch(encoded, rows, pad, options), device, workers, skip)
    skip = max(0, skip - len(plan.alone_buckets))
    yield from _run_buckets(session, names, plan.rest_buckets, lambda rows: states.rest_batch(encoded, heads, rows, pad), device, workers, skip)


def _run_buckets(
    session, names: list[str], buckets: list[np.ndarray], build: Callable[[np.ndarray], dict], device: str, workers: int, skip: int = 0
) -> Iterator[tuple[np.ndarray, list[np.ndarray] | None]]:
    """Each bucket of rows with the outputs of its batch (``build(rows)``); the first
    ``skip`` without outputs, not run."""
    for rows in buckets[:skip]:
        yield rows, None
    results = run_batches(session, names, (build(rows) for rows in buckets[skip:]), device, workers)
    try:
        yield from zip(buckets[skip:], results)
    finally:
        results.close()


def check_resources(n_sentences: int, longest: int, batch_size: int, manifest, directory: Path, workers: int = 1) -> None:
    """Refuse, before any work, a run whose responses cannot fit on disk or whose batches cannot fit in RAM.

    Disk: the two float32 matrices. Memory: the activations of ``workers`` batches at
    once, each roughly every layer's neurons and a dozen hidden-size tensors per token,
    twice (ONNX Runtime keeps inputs and outputs of a node alive together).
    """
    need_disk = 4 * n_sentences * (manifest.n_neurons + manifest.hidden_size)
    free_disk = shutil.disk_usage(nearest_existing(directory)).free  # not made first: a refused run left it, "unfinished"
    if need_disk > free_disk:
        raise ResourceError(
            f"the responses need {size_text(need_disk)} in {directory} but only {size_text(free_disk)} are free; "
            "use fewer sentences (--n-pos, --n-neg) or point ELENS_HOME at a larger disk"
        )
    rows = min(batch_size, n_sentences)
    need_memory = workers * 2 * 4 * rows * longest * (max(manifest.units_per_layer) + 12 * manifest.hidden_size)
    free_memory = available_memory()
    if need_memory > free_memory:
        raise ResourceError(
            f"--batch-size {batch_size} needs about {size_text(need_memory)} of memory for sentences of "
            f"{longest} tokens, but {size_text(free_memory)} are free; lower --batch-size"
        )


@dataclass(frozen=True)
class Responses:
    """Pooled responses of one model on one sentence list.

    Attributes:
        neurons: ``[n_sentences, n_neurons]`` float32, memory-mapped from the cache.
        sentence_embeddings: ``[n_sentences, hidden]`` float32, mean-pooled last hidden state.
        directory: the cache folder holding both.
    """

    neurons: np.ndarray
    sentence_embeddings: np.ndarray
    directory: Path


def responses_key(exported: ExportedModel, sentences: Sequence[str], options: PoolingOptions, quantize: str) -> str:
    """Keyed by the sentences themselves, and by the hash of the ONNX file that computes
    them, so that a regenerated quantized variant never meets responses of the one before.
    (The sentences' hash was the caller's to give: one given for another list of the same
    length returned that list's responses, silently; an audit.)"""
    model_hash = exported.manifest.files.get(exported.onnx_path(quantize).name)
    sentences_hash = hashlib.sha256(json.dumps(list(sentences)).encode("utf-8")).hexdigest()[:16]
    raw = f"{exported.directory.name}|{model_hash}|{options.key()}|{quantize}|{sentences_hash}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _about(exported: ExportedModel, n_sentences: int, options: PoolingOptions, quantize: str) -> dict[str, object]:
    """What the responses are of, for people (``elens-lite cache ls``): nothing reads it
    back to compute, since the folder's name is the hash of the same facts."""
    manifest = exported.manifest
    return {
        "model": manifest.model,
        "revision": manifest.revision,
        "export": exported.directory.name,
        "onnx_file": exported.onnx_path(quantize).name,
        "pooling": asdict(options),
        "sentences": n_sentences,
        "neurons": manifest.n_neurons,
    }


class _RowWriter:
    """Writes rows of a float32 ``.npy`` matrix in place with ``os.pwrite``.

    Why not a writable memmap: pages written through a shared mapping stay in the
    process's resident set until it is unmapped, so a memmap writer's memory grows
    with the matrix. Positioned writes leave them to the kernel's page cache, which
    keeps resident memory at one batch however many neurons a model has.
    """

    def __init__(self, path: Path, shape: tuple[int, int], fresh: bool) -> None:
        if fresh:  # writes the header and sizes the (sparse) file
            header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
            del header
        self.offset = np.load(path, mmap_mode="r").offset  # header size, whatever its .npy version
        self.row_bytes = 4 * shape[1]
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, rows: np.ndarray, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=np.float32)
        for row, data in zip(rows, values):
            os.pwrite(self.fd, data.tobytes(), self.offset + int(row) * self.row_bytes)

    def flush(self) -> None:
        """Put the rows written on the disk, before the progress file says they are there
        (after a power cut, rows it counts but that never reached the disk would be read
        back as zeros: :func:`.atomic.flushed`)."""
        getattr(os, "fdatasync", os.fsync)(self.fd)  # macOS has no fdatasync

    def close(self) -> None:
        os.close(self.fd)


# The files of an unfinished run, one set per --batch-size (a resumed run needs the same
# batches), and the temporary files of writes killed halfway: once the responses are
# final, nothing reads them.
_PARTIAL = ("*.partial-b*.npy", "progress-b*.json", ".*.tmp*")


class _CannotResume(Exception):
    """Why the files an interrupted run left cannot be resumed from (changed from outside)."""


def _recorded_batches(state_path: Path, plan: BatchPlan) -> int:
    """The finished batches that the progress file ``state_path`` records, checked to be
    a whole number from 0 to the ``plan``'s batch count (a larger one would skip batches
    never computed and leave their rows zero in the final matrices), of the same layout."""
    try:
        state = json.loads(state_path.read_text())
        done, layout = state["batches_done"], state.get("plan")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not JSON, no such key, not an object
        raise _CannotResume(f"{state_path.name} cannot be read: {type(exc).__name__}: {exc}") from None
    if whole_number(done) is None or not 0 <= done <= len(plan):
        raise _CannotResume(f"{state_path.name} records {done!r} finished batches, of {len(plan)}")
    if layout != plan.fingerprint():
        raise _CannotResume(f"{state_path.name} is of batches laid out otherwise (the shared heads depend on free memory)")
    return done


def _check_partial(path: Path, shape: tuple[int, int]) -> None:
    """Refuse a partial matrix that is not the float32 ``shape`` .npy file, of exactly
    its size, that :class:`_RowWriter` made: a resumed run writes the missing rows into
    it in place and keeps every other row as it finds it."""
    try:
        matrix = np.load(path, mmap_mode="r")
    except (ValueError, EOFError) as exc:
        raise _CannotResume(f"{path.name} cannot be read: {exc}") from None
    size = path.stat().st_size
    if matrix.shape != shape or matrix.dtype != np.float32 or size != matrix.offset + matrix.nbytes:
        raise _CannotResume(f"{path.name} holds {matrix.dtype} {matrix.shape} in {size} bytes, not float32 {shape}")


def _resume_point(state_path: Path, partial: Sequence[Path], shapes: Sequence[tuple[int, int]], plan: BatchPlan) -> int:
    """How many batches an interrupted run finished (0: start afresh). Its progress file
    and partial matrices are checked first, since a resumed run keeps their rows
    unchecked; damaged ones are warned about and the run starts afresh."""
    if state_path.exists() and all(p.exists() for p in partial):
        try:
            done = _recorded_batches(state_path, plan)
            for path, shape in zip(partial, shapes):
                _check_partial(path, shape)
            return done
        except _CannotResume as exc:
            log.warning("the interrupted responses in %s cannot be resumed (%s); computing them again", state_path.parent, exc)
    state_path.unlink(missing_ok=True)  # the fresh partial files must not inherit its count
    return 0


def compute_responses(
    exported: ExportedModel,
    sentences: Sequence[str],
    cache_dir: Path,
    *,
    options: PoolingOptions = PoolingOptions(),
    quantize: str = "none",
    device: str = "auto",
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> Responses:
    """Run every sentence once and return (or reuse) the cached response matrices,
    keyed by the sentences (in order), the model file and the pooling.
    ``progress(done, total)`` is called after each batch, in sentences.
    """
    if not isinstance(exported, ExportedModel):  # a --model value was an AttributeError (an audit)
        raise InputError(f"exported must be an ExportedModel, what export_model returns; got {type(exported).__name__} {str(exported)[:40]!r}")
    if not (exported.directory / MANIFEST).is_file():  # the tokenizer's bare "No such file or directory" (an audit)
        raise ModelError(f"the export in {exported.directory} is gone (removed by elens-lite cache rm?); call export_model again")
    if isinstance(sentences, str) or not isinstance(sentences, Sequence) or not sentences:
        raise InputError(f"sentences must be a non-empty list of strings; got {type(sentences).__name__} {str(sentences)[:40]!r}")
    for number, sentence in enumerate(sentences):  # tokenizers' own errors name neither the sentence nor the rule
        if not isinstance(sentence, str) or not sentence.isascii() and not is_unicode(sentence):
            raise InputError(f"sentence {number} must be a string of Unicode text; got {type(sentence).__name__} {str(sentence)[:40]!r}")
    if not isinstance(options, PoolingOptions):
        raise InputError(f"options must be a PoolingOptions, e.g. PoolingOptions('mean'); got {options!r}")
    if progress is not None and not callable(progress):  # found now, not after the first batch
        raise InputError(f"progress must be a function (done, total) or None; got {type(progress).__name__}")
    if whole_number(batch_size) is None or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer; got {batch_size!r}")
    cache_dir = cache_folder_given(cache_dir)
    device = resolve_device(device)  # checked even when the responses are cached
    directory = cache_dir / "responses" / responses_key(exported, sentences, options, quantize)
    with waiting_for(directory, cache_dir, "the same responses"):
        return _cached_or_computed(exported, sentences, directory, options, quantize, device, batch_size, progress)


def _check_shapes(responses: Responses, manifest: Manifest, n_sentences: int) -> None:
    """Raise ValueError if the cached matrices are not what this function writes: float32,
    a row per sentence, the export's neurons and hidden size as columns. (A matrix
    replaced from outside was refused, with a message blaming the caller, rather than
    made again: an audit.)"""
    widths = {"neurons.npy": manifest.n_neurons, "sentence_embeddings.npy": manifest.hidden_size}
    for (name, width), matrix in zip(widths.items(), (responses.neurons, responses.sentence_embeddings)):
        if matrix.dtype != np.float32 or matrix.shape != (n_sentences, width):
            raise ValueError(f"{name} is {matrix.dtype} {list(matrix.shape)}, not float32 [{n_sentences}, {width}]")


def _cached_or_computed(
    exported: ExportedModel,
    sentences: Sequence[str],
    directory: Path,
    options: PoolingOptions,
    quantize: str,
    device: str,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
) -> Responses:
    """:func:`compute_responses` once it holds ``directory``: the cached matrices, or
    the sentences run (resumed where an interrupted run left them) and cached."""
    final = directory / "neurons.npy", directory / "sentence_embeddings.npy"
    if all(p.exists() for p in final):
        try:
            cached = Responses(np.load(final[0], mmap_mode="r"), np.load(final[1], mmap_mode="r"), directory)
            _check_shapes(cached, exported.manifest, len(sentences))
        except ValueError as exc:  # cut short or replaced from outside (they are renamed into place complete): made again
            log.warning("the cached responses in %s are damaged (%s); computing them again", directory, exc)
            for path in final:
                path.unlink()
        else:
            remove_leftovers(directory, *_PARTIAL)  # of an interrupted run with another --batch-size
            return cached

    tokenizer = exported.tokenizer()
    encoded = encode(tokenizer, sentences)
    check_lengths(encoded, sentences, export_max_tokens(exported), exported.manifest.model)
    workers = batches_at_once(device)
    check_resources(len(sentences), int(encoded.lengths().max()), batch_size, exported.manifest, directory, workers)
    if quantize == "fp16" and device == "cpu":
        log.warning("--quantize fp16 is meant for the CUDA provider; on the CPU it is slower than fp32 (use int8)")
    manifest = exported.manifest
    names = response_outputs(manifest.n_layers, options.pooling)
    session = inference_session(exported.onnx_path(quantize), device, workers, names)
    prefix = exported.prefix()
    plan = plan_batches(session, encoded, options, batch_size, prefix)
    shapes = (len(sentences), manifest.n_neurons), (len(sentences), manifest.hidden_size)
    partial = [directory / f"{p.stem}.partial-b{batch_size}.npy" for p in final]
    state_path = directory / f"progress-b{batch_size}.json"
    done = _resume_point(state_path, partial, shapes, plan)
    write_json(directory / ABOUT, _about(exported, len(sentences), options, quantize))
    layout = plan.fingerprint()
    writers = [_RowWriter(path, shape, fresh=not done) for path, shape in zip(partial, shapes)]
    if done:
        log.info("resuming responses after %d finished batches", done)
    results = pooled_batches(session, names, encoded, plan, options, pad_id(tokenizer), device, workers, prefix, skip=done)
    finished = 0
    try:
        for number, (rows, outputs) in enumerate(results, start=1):
            if outputs is not None:
                writers[0].write(rows, np.concatenate(outputs[:-1], axis=1))
                writers[1].write(rows, outputs[-1])
                for writer in writers:
                    writer.flush()
                write_json(state_path, {"batches_done": number, "plan": layout})  # only after the rows are written
            finished += len(rows)
            if progress is not None:
                progress(finished, len(sentences))
    finally:
        results.close()  # an interruption waits for the batches already running, no more
        for writer in writers:
            writer.close()
    for src, dst in zip(partial, final):
        os.replace(src, dst)
    flushed_names(directory)
    state_path.unlink(missing_ok=True)  # this run's own, not "left by an interrupted run" as remove_leftovers logs
    remove_leftovers(directory, *_PARTIAL)  # those of other --batch-size runs
    return Responses(np.load(final[0], mmap_mode="r"), np.load(final[1], mmap_mode="r"), directory)
