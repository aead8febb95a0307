"""What the cache (``ELENS_HOME``) holds, and removing parts of it (``elens-lite cache``).

Every run leaves its model's export (hundreds of MB for SmolLM2), the response
matrices of its sentence pool and, for a GGUF model, a dequantized copy, each keyed
by what made it; nothing else ever removes them, and a new draw of sentences,
another checkpoint or pooling makes new ones beside the old. This lists them with
their sizes and removes the ones named, only while no run uses the cache
(:func:`.locks.cache_unused`): runs read their export and responses until they end.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from .atomic import dir_leftovers, remove_dir
from .errors import InputError
from .locks import cache_unused, held, refusing, remove_unheld_locks
from .paths import ABOUT, MANIFEST

__all__ = ["CacheEntry", "cache_entries", "remove_cache_entries"]

log = logging.getLogger(__name__)

# The cache's folders of entries: exported models, response matrices, dequantized GGUF copies.
_FOLDERS = ("models", "responses", "gguf")


@dataclass(frozen=True)
class CacheEntry:
    """One entry of the cache.

    Attributes:
        name: ``<folder>/<entry>``, relative to the cache (``models/`` exports,
            ``responses/`` response matrices, ``gguf/`` dequantized GGUF copies); what
            :func:`remove_cache_entries` takes.
        about: what it was made from, for people ("" where the entry does not say).
        size: bytes of all its files.
        modified: newest modification time of its files (seconds since the epoch),
            i.e. when a run last wrote to it.
        state: ``"complete"``; ``"being made"`` by a running run; or ``"interrupted"``,
            what a stopped run left: responses to resume, or the scratch folder of an
            export or a GGUF copy (removed by the next run that makes the same entry).
        scratch: bytes (within ``size``) that interrupted work left inside a complete
            entry, such as the int8 quantizer's scratch folder in an export (removed by
            the next run that uses the entry, or ``cache rm --unfinished``).
    """

    name: str
    about: str
    size: int
    modified: float
    state: str
    scratch: int = 0


def cache_entries(cache: Path) -> list[CacheEntry]:
    """The entries in ``cache``, by folder and name; an empty list for a cache not made yet."""
    cache = Path(cache)
    entries = []
    for folder in _FOLDERS:
        for path in sorted((cache / folder).glob("*")) if (cache / folder).is_dir() else []:
            if path.is_dir() and not path.is_symlink():
                try:
                    size, modified = _size_and_time(path)
                except FileNotFoundError:  # removed or renamed into place meanwhile
                    continue
                state = _state(path, folder, cache)
                scratch = sum(map(_bytes, _scratch_inside(path))) if state == "complete" and not held(path, cache) else 0
                entries.append(CacheEntry(f"{folder}/{path.name}", _about(path, folder), size, modified, state, scratch))
    return entries


def _scratch_inside(entry: Path) -> list[Path]:
    """What interrupted work left inside ``entry``: its files and folders whose names
    start with a dot (temporary files of atomic writes, the int8 quantizer's scratch
    folder), which no entry's own files do. (A SIGKILL during an int8 quantization left
    hundreds of MB there that ``cache rm --unfinished`` did not see: an audit.)"""
    return sorted(p for p in entry.iterdir() if p.name.startswith(".")) if entry.is_dir() else []


def _state(path: Path, folder: str, cache: Path) -> str:
    if not path.name.startswith(".") and _complete(path, folder):
        return "complete"
    return "being made" if held(_guarded_by(path), cache) else "interrupted"


def remove_cache_entries(cache: Path, names: Sequence[str], scratch_of: Sequence[str] = ()) -> tuple[int, int]:
    """Remove the entries ``names`` (as :attr:`CacheEntry.name`, or their paths) from
    ``cache``, the scratch that interrupted work left inside the entries ``scratch_of``
    (:attr:`CacheEntry.scratch`), and the lock files no run holds; returns the bytes
    freed and the number of entries removed (a name given twice is one entry).

    All or nothing: every name is checked and every entry's lock taken before anything
    is removed, and while a run uses the cache (it may read any entry until it ends)
    nothing is; each refusal is an :class:`InputError`, as is a name that is no entry
    (a path that leads out of the cache, say).
    """
    cache = Path(cache)
    paths = list(dict.fromkeys(_entry_path(cache, name) for name in names))
    cleared = list(dict.fromkeys(_entry_path(cache, name) for name in scratch_of))
    if not cache.is_dir():  # nothing to remove; taking the locks would make the cache's folder
        return 0, 0
    busy = "a run (or a cache rm) is using this cache: runs read their export and responses until they end; try again when none is"
    with cache_unused(cache, busy), ExitStack() as locks:
        for target in dict.fromkeys(map(_guarded_by, paths + cleared)):  # once each: an entry guards its scratch folders too
            locks.enter_context(refusing(target, cache, f"{target.relative_to(cache)} is being made; try again later"))
        freed = 0
        for path in [p for entry in cleared for p in _scratch_inside(entry)] + paths:
            freed += _bytes(path)
            if path.is_dir() and not path.is_symlink():
                remove_dir(path)
            else:
                path.unlink()
    remove_unheld_locks(cache)
    return freed, len(paths)


def _entry_path(cache: Path, name: str) -> Path:
    """The folder of the entry ``name``, refused unless it is one that :func:`cache_entries` lists."""
    if Path(name).is_absolute() and Path(name).is_relative_to(cache.absolute()):
        name = str(Path(name).relative_to(cache.absolute()))
    parts = Path(name).parts
    if len(parts) != 2 or parts[0] not in _FOLDERS or parts[1] in (".", ".."):
        raise InputError(f"{name!r} is not a cache entry: give names as `elens-lite cache ls` prints them, e.g. responses/<key>")
    path = cache / parts[0] / parts[1]
    if not path.is_dir() or path.is_symlink():
        raise InputError(f"there is no cache entry {name!r} in {cache}")
    return path


def _guarded_by(path: Path) -> Path:
    """The folder whose lock guards ``path``: itself, or for a scratch folder that an
    interrupted run left beside an entry (``.<entry>.<random>.tmp``), the entry."""
    if path.name.startswith("."):
        target = path.parent / path.name[1:].rsplit(".", 2)[0]
        if any(path.match(pattern) for pattern in dir_leftovers(target)):
            return target
    return path


def _complete(path: Path, folder: str) -> bool:
    if folder == "responses":
        return (path / "neurons.npy").is_file() and (path / "sentence_embeddings.npy").is_file()
    return True  # exports and GGUF copies appear in one rename, complete


def _about(path: Path, folder: str) -> str:
    """What the entry was made from, as its own files say."""
    try:
        if folder == "models" and (path / MANIFEST).is_file():
            manifest = json.loads((path / MANIFEST).read_text())
            variants = ", ".join(sorted(manifest.get("files", {})))
            return f"{_model(manifest)}; {variants}"
        if folder == "responses" and (path / ABOUT).is_file():
            about = json.loads((path / ABOUT).read_text())
            return f"{_model(about)}; {about['sentences']:,} sentences, {about['onnx_file']}, {_pooling(about['pooling'])}"
        if folder == "gguf" and (path / ABOUT).is_file():
            return f"{Path(json.loads((path / ABOUT).read_text())['model']).name}, dequantized"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.info("cannot describe %s: %s", path, exc)
    return ""


def _model(fields: dict) -> str:
    return fields["model"] + (f" @ {fields['revision']}" if fields.get("revision") else "")


def _pooling(options: dict) -> str:
    """:class:`~expertlens_lite.batching.PoolingOptions` (as a dict) in words."""
    special = ", special tokens in" if options["keep_special_tokens"] else ""
    first = ", first token out" if options["skip_first_token"] else ""
    return f"{options['pooling']} pooling{special}{first}"


def _bytes(path: Path) -> int:
    """Bytes on disk of the file or folder ``path``."""
    if path.is_dir() and not path.is_symlink():
        return _size_and_time(path)[0]
    return path.lstat().st_blocks * 512


def _size_and_time(folder: Path) -> tuple[int, float]:
    """Bytes on disk of the files under ``folder`` and the newest modification time
    (of the folder itself when it is empty). Files that vanish meanwhile are skipped."""
    size, modified = 0, folder.stat().st_mtime
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                stat = os.stat(os.path.join(root, name), follow_symlinks=False)
            except FileNotFoundError:
                continue
            size += stat.st_blocks * 512
            modified = max(modified, stat.st_mtime)
    return size, modified
