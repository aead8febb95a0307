"""Export a model to ONNX with pooled MLP neurons, validate it, and cache it.

Steps (each a plain function): load the PyTorch model, export it with Optimum
(feature extraction; causal families with past keys and values, so that sentences
that start alike run their first tokens once, :mod:`expertlens_lite.heads`), add the
pooled outputs (:mod:`.surgery`), save
the tokenizer and the input-embedding table (for the word-embedding baseline),
check parity with a PyTorch forward with hooks, write the manifest. The whole
folder appears atomically under ``ELENS_HOME/models/<key>``, so an interrupted
export leaves nothing behind and a rerun reuses a finished one.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..atomic import atomic_dir, dir_leftovers, remove_leftovers, signals_deferred
from ..batching import Encoded, PoolingOptions, encode, iter_batches, make_batch, pad_id
from ..concepts import read_corpus
from ..config import QUANTIZATIONS
from ..lengths import export_max_tokens, json_object, max_tokens
from ..errors import ModelError, ResourceError, first_line, whole_number
from ..locks import waiting_for
from ..models import Architecture, get_architecture
from ..models.sources import ModelSource, cannot_load, dequantize, resolve_model
from ..paths import DEFAULT_CORPUS, bundled, cache_folder_given, check_openable_by_libraries
from ..quiet import quiet_transformers, warnings_silenced
from .manifest import FORMAT_VERSION, MANIFEST, Manifest, damage
from .prefix import Prefix, compute_prefix, constant_prefix, load_prefix, save_prefix
from .quantize import (
    INT8_WEIGHTS,
    SCRATCH_PREFIX,
    onnx_filename,
    onnx_sha256,
    quantize_model,
    uses_external_data,
)
from .reference import torch_responses
from .smoothing import PROBE_PREFIX
from .surgery import PAST_INPUT, add_pooled_outputs, response_outputs
from .tokenizer import JsonTokenizer, disagreement

log = logging.getLogger(__name__)

EMBEDDINGS = "embeddings.npy"
PARITY_ATOL = 1e-4  # on |Δ| / max(1, |x|), see _parity
# Different lengths so that the check exercises padding and the mask.
PARITY_SENTENCES = (
    "The cat sat quietly on the warm windowsill.",
    "Rain again.",
    "After the long winter, the first flowers opened in the garden behind the old stone house.",
)
# int8 smoothing is calibrated on this many sentences of the bundled corpus (fixed sample).
CALIBRATION_SENTENCES = 128


@functools.cache
def _warn_int8_made_elsewhere(directory: Path, model: str, name: str) -> None:
    """Warn, once per folder, that its int8 variant (the file ``name``) has the other
    weight type than this CPU's (:func:`.quantize.int8_weights`)."""
    if name == onnx_filename("int8", "s8"):
        what = "int8 weights, whose products saturate on this CPU (x86 without VNNI) and can move its responses"
    else:
        what = "uint8 weights, made for a CPU without VNNI (this CPU gets int8 weights, which ORT multiplies with VNNI)"
    log.warning("the int8 variant in %s has %s; export %s again here with --quantize int8", directory, what, model)


class ParityError(ModelError):
    """The exported graph disagrees with the PyTorch model beyond tolerance."""


@dataclass(frozen=True)
class ExportedModel:
    """A finished export: its folder and manifest."""

    directory: Path
    manifest: Manifest

    def onnx_path(self, quantize: str = "none") -> Path:
        """The ONNX file of the ``quantize`` variant, which ``export_model(source, cache,
        quantize)`` makes: for int8, the one with this CPU's weight type
        (:func:`.quantize.int8_weights`), else, with a warning, the other one (an export
        folder made on another CPU)."""
        _check_quantize(quantize)
        name = onnx_filename(quantize)
        if name not in self.manifest.files and quantize == "int8":
            other = next(n for w in INT8_WEIGHTS if (n := onnx_filename(quantize, w)) != name)
            if other in self.manifest.files:
                name = other
                _warn_int8_made_elsewhere(self.directory, self.manifest.model, name)
        if name not in self.manifest.files:
            raise ModelError(
                f"the export in {self.directory} has no {quantize} variant; export its model "
                f"({self.manifest.model}) with --quantize {quantize}"
            )
        return self.directory / name

    def tokenizer(self):
        """The model's tokenizer: its ``tokenizer.json`` alone where the export checked
        that this tokenizes as transformers does (no PyTorch import, :mod:`.tokenizer`)."""
        if self.manifest.tokenizer_json:
            return JsonTokenizer(self.directory)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.directory)

    def embeddings(self) -> np.ndarray:
        """The input-embedding table ``[vocab, hidden]`` (memory-mapped)."""
        return np.load(self.directory / EMBEDDINGS, mmap_mode="r")

    def prefix(self) -> Prefix:
        """The constant prefix and what it leaves for later tokens (:mod:`.prefix`)."""
        return load_prefix(self.directory, self.manifest.prefix_token_ids)


def export_key(source: ModelSource) -> str:
    """The weights' fingerprint (a hub model's is its commit) and the export format.

    The revision's label is left out: a branch and the commit it points to are the same
    weights, and were exported twice. "None" stands where the label once was, so that
    the keys of local and bundled models, which have no revision, stayed as they were.
    """
    raw = f"{source.fingerprint}|None|{FORMAT_VERSION}"
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def export_dir(source: ModelSource, cache_dir: Path) -> Path:
    """The cache folder of ``source``'s export, named for people by the model's name.

    A GGUF file's is found by the key alone, which is of the file's bytes, so that the
    file renamed reuses its export rather than make another (a whole one first). A local
    folder's key is of its files' names, sizes and times, which a folder of other weights
    can share (times set alike, as reproducible builds do; a review): its name keeps them
    apart. A hub model's name is its id whatever the revision."""
    key = export_key(source)
    if source.gguf is not None:
        made = [path for path in (cache_dir / "models").glob(f"*-{key}") if not path.name.startswith(".")]
        if made:
            return min(made, key=lambda path: (not (path / MANIFEST).is_file(), path.name))
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source.name).name)[-40:]
    return cache_dir / "models" / f"{readable}-{key}"


def _check_quantize(quantize: str) -> None:
    if quantize not in QUANTIZATIONS:
        raise ModelError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZATIONS)}")


def export_model(
    source: ModelSource | str | os.PathLike, cache_dir: Path, quantize: str = "none", int8_weights: str | None = None,
) -> ExportedModel:
    """Export (or reuse) ``source`` and make sure its ``quantize`` variant exists; a folder
    that ``elens-lite export`` wrote is used as it is (:func:`_given_export`). A ``source``
    given as a ``--model`` value (a name, folder, file or hub id) is resolved first.
    ``int8_weights``: the int8 variant's weight type (:data:`.quantize.INT8_WEIGHTS`), to
    make the one of another CPU as well; default: this CPU's."""
    _check_quantize(quantize)
    if int8_weights not in (None, *INT8_WEIGHTS):
        raise ModelError(f"int8_weights must be one of {', '.join(INT8_WEIGHTS)} (or None: this CPU's); got {int8_weights!r}")
    cache_dir = cache_folder_given(cache_dir)
    if isinstance(source, (str, os.PathLike)):
        source = resolve_model(source, None, cache_dir)
    if not isinstance(source, ModelSource):
        raise ModelError(f"a model to export is a ModelSource (resolve_model) or a --model value; got {source!r}")
    if (Path(source.path) / MANIFEST).exists():
        return _given_export(Path(source.path), quantize)
    directory = export_dir(source, cache_dir)
    # Python's and NumPy's global generators as they were: Optimum's dummy inputs draw
    # from them (NumPy's for a causal model's past), and so does a library imported on
    # the way (audits found both moved by a first export).
    python_random, numpy_random = random.getstate(), np.random.get_state()
    try:
        with waiting_for(directory, cache_dir, f"the export of {source.name}"):
            return _cached_export(source, directory, quantize, int8_weights)
    finally:
        random.setstate(python_random)
        np.random.set_state(numpy_random)


def _cached_export(source: ModelSource, directory: Path, quantize: str, int8_weights: str | None) -> ExportedModel:
    """:func:`export_model` once it holds ``directory``: the cached export, made or
    repaired if need be, with its ``quantize`` variant; what killed runs left of their
    work on it is removed first."""
    remove_leftovers(directory.parent, *dir_leftovers(directory))
    if directory.is_dir():  # atomic file writes, the int8 quantizer's scratch, its calibration probe
        remove_leftovers(directory, ".*.tmp*", f"{SCRATCH_PREFIX}*", f"{PROBE_PREFIX}*.onnx")
    if not (directory / MANIFEST).exists():
        _export_fresh(source, directory)
    elif (problem := _unfit(directory)) is not None:  # a cache: made again, not refused
        log.warning("the cached export %s is %s; exporting it again", directory, problem)
        _export_fresh(source, directory)
    exported = ExportedModel(directory, Manifest.load(directory))
    if exported.manifest.tokenizer_json is None:  # exported before the check existed: checked once, now
        exported.manifest.tokenizer_json = _tokenizer_json_agrees(exported.tokenizer(), directory, source.name)
        exported.manifest.save(directory)
    if quantize != "none" and onnx_filename(quantize, int8_weights) not in exported.manifest.files:
        architecture = get_architecture(exported.manifest.model_type)
        down = [architecture.onnx_scope(i) for i in range(exported.manifest.n_layers)]
        calibration = _calibration_batches(exported) if quantize == "int8" else []
        path = quantize_model(exported.onnx_path(), quantize, down, calibration, architecture.causal, int8_weights)
        exported.manifest.files[path.name] = onnx_sha256(path)
        exported.manifest.save(directory)
    return exported


def _unfit(directory: Path) -> str | None:
    """Why the cached export in ``directory`` cannot be reused, if it cannot: damaged, or
    made with another family entry for its model type. The cache key is the model's, not
    the entry's, so an entry a user corrects (another module) would otherwise keep its
    neurons read from the old one."""
    if (problem := damage(directory)) is not None:
        return f"damaged ({problem})"
    manifest = Manifest.load(directory)
    try:
        entry = get_architecture(manifest.model_type)
    except ModelError:  # a family registered when it was exported, not now: used as it is
        return None
    if manifest.mlp_down is not None and (manifest.mlp_down, manifest.causal) != (entry.mlp_down, entry.causal):
        return f"of another entry for {manifest.model_type!r} ({manifest.mlp_down}, causal={manifest.causal})"
    return None


def _given_export(directory: Path, quantize: str) -> ExportedModel:
    """A folder ``elens-lite export`` wrote, used as it is: a run needs no PyTorch then,
    so a model exported on one machine runs on another. The folder is the user's, so
    it is checked, never repaired or added to."""
    check_openable_by_libraries(directory, f"the export folder {directory}")
    problem = damage(directory)
    if problem is not None:
        raise ModelError(f"the export in {directory} is damaged ({problem}); export the model again")
    manifest = Manifest.load(directory)
    if manifest.format_version != FORMAT_VERSION:
        raise ModelError(
            f"{directory} holds an export of format {manifest.format_version}, this version of expertlens-lite "
            f"reads format {FORMAT_VERSION}; export the model again"
        )
    exported = ExportedModel(directory, manifest)
    exported.onnx_path(quantize)  # refuses a variant the folder does not have
    return exported


def _calibration_batches(exported: ExportedModel) -> list[dict[str, np.ndarray]]:
    """Input batches of a fixed sample of the bundled corpus, whatever corpus a run uses:
    the quantized model is cached per model, not per run."""
    tokenizer = exported.tokenizer()
    limit = export_max_tokens(exported)
    sentences = _within(limit, tokenizer, read_corpus(bundled(DEFAULT_CORPUS)))
    if not sentences:  # quantized uncalibrated, silently (a review)
        raise ModelError(f"model {exported.manifest.model!r} reads at most {limit} tokens, fewer than any sentence "
                         "the int8 variant is calibrated on; use --quantize none or fp16")
    rows = np.random.default_rng(0).choice(len(sentences), min(CALIBRATION_SENTENCES, len(sentences)), replace=False)
    encoded = encode(tokenizer, [sentences[i] for i in sorted(rows)])
    return [batch for _, batch in iter_batches(encoded, 32, pad_id(tokenizer), PoolingOptions())]


def _within(limit: int | None, tokenizer, sentences: Sequence[str]) -> list[str]:
    """The ``sentences`` a model reading at most ``limit`` tokens can take (all where it
    has no limit): the export's check and calibration sentences were run whatever the
    model's position table, and a GPT-2 of 16 positions failed with an IndexError
    inside PyTorch, one of 22 inside ONNX Runtime (an audit)."""
    if limit is None:
        return list(sentences)
    return [sentence for sentence, n in zip(sentences, encode(tokenizer, sentences).lengths()) if n <= limit]


# Weights a base model may lack in its checkpoint without harm: BERT's pooler, which
# masked-LM checkpoints do not have and no neuron depends on.
_UNUSED_WEIGHTS = re.compile(r"^pooler\.")
# What a folder holding a tokenizer has (fast, WordPiece, BPE or SentencePiece files).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.*", "merges.txt", "*.model", "*.tiktoken")


def load_pretrained(source: ModelSource):
    """Config, base model (fp32, eval mode) and tokenizer; a one-line error for a model
    that cannot be found or read (unreachable, weights missing or cut short, no tokenizer)
    or whose weights do not fit its config. transformers only warns when the checkpoint
    lacks weights the config asks for (a layer more, keys of another prefix), which it
    makes up at random, or holds layers the config does not have (a layer fewer), which
    it leaves out: the run would go on with random neurons, or a model cut short."""
    # With Ctrl-C and SIGTERM held (main thread): a KeyboardInterrupt raised inside
    # PyTorch's import leaves it half made in the process, so that every later export
    # there failed ("partially initialized module 'torch'") or the interpreter crashed
    # (an audit of runs in one long-lived process). The signal is acted on right after.
    with signals_deferred():
        import torch
        from safetensors import SafetensorError
        from transformers import AutoConfig, AutoModel, AutoTokenizer

    dequantize(source)
    folder = Path(source.path)
    # Checked first: transformers guesses a missing type from the folder's path ("roberta"
    # in .../robert/...), or fails listing every type it knows.
    if (folder / "config.json").is_file() and (config_json := json_object(folder / "config.json")) is not None:
        if "model_type" not in config_json:
            raise ModelError(f"cannot load model {source.name!r}: its config.json names no model_type; add one (\"model_type\": \"llama\", ...)")
        if isinstance(config_json["model_type"], str):  # one transformers does not know was blamed on the folder's files (an audit)
            get_architecture(config_json["model_type"])
    try:
        config = AutoConfig.from_pretrained(source.path, revision=source.load_revision)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:  # a config.json of another shape: a list, ...
        raise _cannot_load(source, exc) from None
    architecture = get_architecture(config.model_type)
    if getattr(config, "is_encoder_decoder", False):  # a family registered for one failed after the trace (an audit)
        raise ModelError(f"model {source.name!r} is an encoder-decoder ({config.model_type}); only encoder or decoder stacks are studied")
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and layers < 1:  # failed in the export's check, concatenating no layers (an audit)
        raise ModelError(f"model {source.name!r} has no layers (num_hidden_layers {layers}), so no MLP neurons to study")
    if folder.is_dir() and not any(next(folder.glob(pattern), None) for pattern in _TOKENIZER_FILES):  # before loading the weights
        raise _cannot_load(source, FileNotFoundError(f"no tokenizer files in {folder}"), "tokenizer")
    try:
        with quiet_transformers():
            model, loading = AutoModel.from_pretrained(
                source.path, revision=source.load_revision, dtype=torch.float32, output_loading_info=True
            )
    except (OSError, ValueError, SafetensorError) as exc:
        raise _cannot_load(source, exc) from None
    except RuntimeError as exc:
        if "size mismatch" in str(exc):
            raise ModelError(f"the weights of model {source.name!r} do not fit its config: {_mismatch(exc)}") from None
        if "memory" in str(exc).lower():  # PyTorch's "DefaultCPUAllocator: not enough memory": the machine, not the model
            raise ResourceError(f"not enough memory to load model {source.name!r}: {first_line(exc)}") from None
        raise _cannot_load(source, exc) from None  # a config it cannot build ("max_position_embeddings": -1)
    except (TypeError, KeyError, AttributeError) as exc:  # a config value of another type ("num_hidden_layers": "six")
        raise _cannot_load(source, exc, "config") from None
    _check_weights_fit(source.name, loading, config.num_hidden_layers)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source.path, revision=source.load_revision)
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # without its files, some classes fail on None (GPT-NeoX: AttributeError)
        raise _cannot_load(source, exc, "tokenizer") from None
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:  # its last ids index past the embeddings: an IndexError in the export's check (an audit)
        raise ModelError(
            f"the tokenizer of model {source.name!r} has {len(tokenizer):,} tokens but its embedding matrix {rows:,} rows: "
            "they do not belong together (is config.json's vocab_size right?)"
        )
    return architecture, model.eval(), tokenizer


# A layer's weights, as checkpoints name them: ``layers.3.``, ``layer.3.``, ``h.3.``, ``blocks.3.``.
_LAYER_KEY = re.compile(r"(?:^|\.)(?:layers?|h|blocks?)\.(\d+)\.")


def _check_weights_fit(name: str, loading: dict, n_layers: int) -> None:
    """Refuse a checkpoint that lacks weights the config asks for (but a pooler's), or
    holds layers past the config's last; other weights it holds and the base model does
    not read (an LM head, a masked-LM head) are fine."""
    problem = ""
    if missing := sorted(key for key in loading["missing_keys"] if not _UNUSED_WEIGHTS.match(key)):
        problem = f"lacks {len(missing)} weight(s) its config asks for ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
    elif extra := sorted(key for key in loading["unexpected_keys"] if (m := _LAYER_KEY.search(key)) and int(m.group(1)) >= n_layers):
        problem = f"holds {len(extra)} weight(s) of layers past the config's {n_layers} ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})"
    if problem:
        raise ModelError(f"the checkpoint of model {name!r} {problem}: the config and the weights do not match")


def _cannot_load(source: ModelSource, exc: Exception, part: str = "") -> ModelError:
    """:func:`.sources.cannot_load` for ``source``; a file missing from a hub model read
    offline, from its snapshot folder (its ``path``), is missing from the HF cache."""
    snapshot = source.commit is not None and source.path != source.name and isinstance(exc, OSError)
    return cannot_load(source.name, source.revision, exc, part, snapshot=snapshot)


def _mismatch(exc: RuntimeError) -> str:
    """The first "size mismatch for ..." line of PyTorch's state-dict error."""
    return next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), first_line(exc))


def _onnx_export(model, folder: Path, with_past: bool) -> bool:
    """Optimum's feature-extraction export to ``folder/model.onnx``; returns whether the
    graph takes past keys and values.

    ``with_past`` adds the ``past_key_values`` inputs (Optimum's own ``-with-past`` task
    only adds them as outputs). Every built-in causal family exports that way; a family
    a user registers may not (Optimum's config for it may take no past, or its trace may
    fail), and then it is exported without past, with a warning: its sentences run whole,
    slower but with the same responses. An export that fails even so is a
    :class:`ModelError` naming the model type.
    """
    model_type = model.config.model_type
    _check_optimum_supports(model_type)
    if with_past:
        try:
            _optimum_export(model, folder, with_past=True)
            return True
        except Exception as exc:  # noqa: BLE001  (whatever the tracer raises; the plain export below says if the model is the problem)
            log.warning("%s cannot be exported with past keys and values (%s: %s); its sentences will run whole", model_type, type(exc).__name__, first_line(exc))
            _empty(folder)
    try:
        _optimum_export(model, folder, with_past=False)
    except Exception as exc:
        raise ModelError(f"Optimum could not export this {model_type} model to ONNX ({type(exc).__name__}: {first_line(exc)})") from exc
    return False


def _check_optimum_supports(model_type: str) -> None:
    """Refuse, before any tracing, a model type Optimum's ONNX exporter has no config for
    (its own error is a ``KeyError`` listing every type it knows)."""
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the model types it exports)
    from optimum.exporters.tasks import TasksManager

    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(model_type, "onnx", library_name="transformers")
    except KeyError:
        tasks = {}
    if "feature-extraction" not in tasks:
        raise ModelError(f"Optimum's ONNX exporter, which expertlens-lite exports through, does not support model type {model_type!r}")


def _optimum_export(model, folder: Path, with_past: bool) -> None:
    import torch
    from optimum.exporters.onnx import onnx_export_from_model
    from optimum.exporters.tasks import TasksManager

    custom = None
    if with_past:
        constructor = TasksManager.get_exporter_config_constructor(
            "onnx", model=model, task="feature-extraction", library_name="transformers"
        )
        custom = {"model": _with_past_mask(constructor(model.config, use_past=True, use_past_in_inputs=True))}
    # Optimum then copies the model's tokenizer and processors from where the model was
    # loaded (config._name_or_path): for a hub id, from the hub at its default revision,
    # whatever revision was asked. Pointed at the output folder, which has none yet, it
    # copies nothing; the export saves the tokenizer it loaded itself.
    loaded_from, model.config._name_or_path = model.config._name_or_path, str(folder)
    # Optimum draws its dummy inputs from PyTorch's global generator (and Python's,
    # kept by export_model): a caller that seeded it would find it moved by an export
    # that a warm cache skips.
    try:
        # The tracer's notes on constants are expected, not actionable; so is the paragraph
        # of Llama's tokenizer class that Optimum's look for processors there prints.
        with warnings_silenced(), quiet_transformers(), torch.random.fork_rng(devices=[]):
            onnx_export_from_model(model, folder, task="feature-extraction", custom_onnx_configs=custom, do_validation=False)
    finally:
        model.config._name_or_path = loaded_from


def _with_past_mask(onnx_config):
    """``onnx_config`` with its dummy attention mask as wide as past and new tokens together.

    Optimum widens it so only for its ``text-generation`` task (``OnnxConfigWithPast.
    generate_dummy_inputs``); with past inputs on a ``feature-extraction`` export the
    trace sees a mask one column short of the keys, which OPT, BLOOM, Falcon, GPT-J,
    CodeGen and StableLM refuse (a shape error in attention). Same widening as Optimum's.
    """
    from optimum.utils import DummyInputGenerator

    class WithPastMask(type(onnx_config)):
        def generate_dummy_inputs(self, framework: str = "pt", **kwargs):
            inputs = super().generate_dummy_inputs(framework=framework, **kwargs)
            width = inputs["input_ids"].shape[1] + inputs["past_key_values"][0][1].shape[-2]
            inputs["attention_mask"] = DummyInputGenerator.pad_input_on_dim(inputs["attention_mask"], desired_length=width, dim=1)
            return inputs

    onnx_config.__class__ = WithPastMask  # the instance stays: each family's constructor takes other arguments
    return onnx_config


def _export_fresh(source: ModelSource, directory: Path) -> None:
    architecture, model, tokenizer = load_pretrained(source)
    units = _units_per_layer(model, architecture, model.config.num_hidden_layers)
    log.info("exporting %s to ONNX", source.name)
    with atomic_dir(directory) as tmp:
        try:
            manifest = _export_into(tmp, source, architecture, model, tokenizer, units, with_past=architecture.causal)
        except ParityError as exc:
            if not _takes_past(tmp / "model.onnx"):  # exported without past already: nothing to fall back to
                raise
            # A trace that runs but computes the past otherwise than the model (seen with MPT).
            log.warning("%s exported with past keys and values %s; exporting it without them: its sentences will run whole",
                        model.config.model_type, str(exc).removeprefix(f"exported {source.name} "))
            _empty(tmp)
            manifest = _export_into(tmp, source, architecture, model, tokenizer, units, with_past=False)
        manifest.save(tmp)


def _export_into(tmp: Path, source: ModelSource, architecture: Architecture, model, tokenizer, units: list[int], with_past: bool) -> Manifest:
    """Export ``model`` into the empty folder ``tmp`` (with past keys and values if
    ``with_past`` and the trace takes them) and check its responses against PyTorch's;
    the manifest to save once nothing more is added to the folder."""
    n_layers = model.config.num_hidden_layers
    limit = max_tokens(model.config.to_dict(), {"model_max_length": tokenizer.model_max_length})
    sentences = _within(limit, tokenizer, PARITY_SENTENCES)
    if not sentences:
        raise ModelError(f"model {source.name!r} reads at most {limit} tokens, too few for the sentences the export is checked on")
    with_past = _onnx_export(model, tmp, with_past=with_past)
    prefix_ids = constant_prefix(tokenizer, architecture, sentences) if with_past else ()
    prefix = compute_prefix(model, architecture, prefix_ids) if prefix_ids else Prefix()
    if prefix.token_ids:
        save_prefix(tmp, prefix)
    tokenizer.save_pretrained(tmp)
    tokenizer_json = _tokenizer_json_agrees(tokenizer, tmp, source.name)
    np.save(tmp / EMBEDDINGS, model.get_input_embeddings().weight.detach().float().numpy())

    encoded = encode(tokenizer, sentences)
    batch = make_batch(encoded, range(len(sentences)), pad_id(tokenizer), PoolingOptions())
    expected, expected_embedding = torch_responses(model, architecture, batch)
    if not (np.isfinite(expected).all() and np.isfinite(expected_embedding).all()):  # it was blamed on the export (an audit)
        raise ModelError(f"model {source.name!r} computes NaN or infinite values in PyTorch itself: are its weights damaged?")
    onnx_path = tmp / "model.onnx"
    opset = prepare_graph(onnx_path, [architecture.onnx_scope(i) for i in range(n_layers)], units)
    diff, scaled = _parity(onnx_path, encoded, pad_id(tokenizer), prefix, n_layers, expected, expected_embedding)
    if scaled > PARITY_ATOL:
        raise ParityError(f"exported {source.name} differs from PyTorch by {diff:.2e} (scaled {scaled:.2e} > {PARITY_ATOL:.0e})")
    return Manifest(
        model=source.name,
        revision=source.revision,
        commit=source.commit,
        fingerprint=source.fingerprint,
        architecture=architecture.name,
        model_type=model.config.model_type,
        causal=architecture.causal,
        mlp_down=architecture.mlp_down,
        prefix_token_ids=list(prefix_ids),
        units_per_layer=units,
        hidden_size=int(expected_embedding.shape[1]),
        parity_max_abs_diff=diff,
        opset=opset,
        files={"model.onnx": onnx_sha256(onnx_path)},
        tokenizer_json=tokenizer_json,
    )


def _takes_past(onnx_path: Path) -> bool:
    """Whether the graph in ``onnx_path`` takes past keys and values."""
    return any(i.name.startswith(PAST_INPUT) for i in onnx.load(onnx_path, load_external_data=False).graph.input)


def _empty(folder: Path) -> None:
    """Delete what a failed export attempt left in ``folder``."""
    for path in folder.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _tokenizer_json_agrees(reference, directory: Path, name: str) -> bool:
    """Whether runs can tokenize with ``directory``'s tokenizer.json alone, checked
    against the transformers tokenizer ``reference`` saved there (:mod:`.tokenizer`)."""
    differs = disagreement(reference, directory)
    if differs:
        log.info("runs will tokenize %s with transformers: its tokenizer.json alone differs in %s", name, differs)
    return differs is None


def prepare_graph(onnx_path: Path, scopes: list[str], units: list[int]) -> int:
    """Add the pooled outputs to the ONNX file in place, its weights in a file of their
    own; returns its opset.

    A model over 2 GB, which Optimum saves with its weights in a separate
    ``.onnx_data`` file, keeps referring to that file: its weights are never loaded. A
    smaller one gets such a file too, so that the graph alone is a few MB: a run's
    session is given the graph cut down to the outputs it reads
    (:func:`.surgery.keep_outputs`), and with the weights inside the graph that cut
    cost SmolLM2 2 s per session (measured), more than it saves on the default run.
    """
    graph = onnx.load(onnx_path, load_external_data=False)
    add_pooled_outputs(graph, scopes, units, graph.graph.output[0].name)
    if uses_external_data(graph):
        onnx.save(graph, onnx_path)
    else:
        onnx.save(graph, onnx_path, save_as_external_data=True, all_tensors_to_one_file=True, location=f"{onnx_path.name}_data")
    return next(op.version for op in graph.opset_import if op.domain in ("", "ai.onnx"))


# config.json keys of the MLP's width, by family (most, GPT-2/GPT-J, OPT, DistilBERT, Falcon).
_MLP_WIDTH_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "hidden_dim", "ffn_hidden_size")


def _units_per_layer(model, architecture: Architecture, n_layers: int) -> list[int]:
    """Input width of each down-projection (``nn.Linear`` or GPT-2's transposed ``Conv1D``),
    checked to be one: a linear layer that maps onto the hidden size, from the MLP's
    width where the config gives it.

    Why check: the parity check compares the graph with PyTorch hooks on the same module,
    so an entry that names a module which exists but is not the down-projection (say
    ``up_proj``, or attention's ``o_proj``, which also maps onto the hidden size) would
    export consistently and find "experts" elsewhere in the model.
    """
    hidden = model.config.hidden_size
    widths = {value for key in _MLP_WIDTH_KEYS if (value := whole_number(getattr(model.config, key, None))) is not None}
    units = []
    for layer in range(n_layers):
        path = architecture.mlp_down_module(layer)
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise ModelError(f"family {architecture.name!r}: the model has no module {path!r} (its mlp_down entry)") from None
        weight = getattr(module, "weight", None)
        if getattr(weight, "ndim", 0) != 2:
            raise ModelError(f"family {architecture.name!r}: {path!r} is a {type(module).__name__}, not a linear layer")
        n_in, n_out = (module.in_features, module.out_features) if hasattr(module, "in_features") else weight.shape
        if n_out != hidden:
            raise ModelError(
                f"family {architecture.name!r}: {path!r} maps {n_in} to {n_out} units, but an MLP down-projection maps onto the hidden size {hidden}"
            )
        if widths and n_in not in widths:
            raise ModelError(
                f"family {architecture.name!r}: {path!r} reads {n_in} units, but the model's MLP has "
                f"{' or '.join(map(str, sorted(widths)))}: its mlp_down entry must name the MLP's down-projection"
            )
        units.append(int(n_in))
    return units


def _parity(
    onnx_path: Path,
    encoded: Encoded,
    pad: int,
    prefix: Prefix,
    n_layers: int,
    expected: np.ndarray,
    expected_embedding: np.ndarray,
) -> tuple[float, float]:
    """Max |ONNX − PyTorch| over the pooled neurons and sentence embedding, absolute and
    scaled by max(1, |PyTorch|) (float32 cannot resolve 1e-4 on activations in the
    hundreds, which some models have), both ways the graph runs: on whole sentences
    and as a run does, heads after the ``prefix`` (:mod:`..heads`)."""
    from ..runtime import create_session, feed_for, plan_batches, pooled_batches

    session = create_session(onnx_path, device="cpu")
    names = response_outputs(n_layers, "max")
    n = len(encoded.input_ids)
    options = PoolingOptions()
    whole = session.run(names, feed_for(session, make_batch(encoded, range(n), pad, options)))
    run = [np.empty_like(output) for output in whole]
    plan = plan_batches(session, encoded, options, n, prefix)
    for rows, outputs in pooled_batches(session, names, encoded, plan, options, pad, "cpu", 1, prefix):
        for target, value in zip(run, outputs):
            target[rows] = value
    pairs = [(np.concatenate(o[:-1], axis=1), expected) for o in (whole, run)] + [(o[-1], expected_embedding) for o in (whole, run)]
    def worst(differences: np.ndarray) -> float:  # NaN, which max() and a comparison pass over, is infinitely far
        return float(np.nan_to_num(differences, nan=np.inf).max())

    absolute = max(worst(np.abs(got - want)) for got, want in pairs)
    scaled = max(worst(np.abs(got - want) / np.maximum(1.0, np.abs(want))) for got, want in pairs)
    return absolute, scaled


__all__ = ["EMBEDDINGS", "ExportedModel", "ParityError", "export_model", "load_pretrained", "prepare_graph"]
