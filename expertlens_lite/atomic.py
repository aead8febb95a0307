"""Atomic file writes: a crash or Ctrl-C never leaves a half-written result.

Every file the package writes goes through here: the content is written to a
temporary file in the destination's directory and then renamed over the target,
which POSIX guarantees to be atomic on one file system.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import math
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InputError, ResourceError, first_line
from .paths import nearest_existing

log = logging.getLogger(__name__)


@functools.cache
def _umask_by_setting() -> int:
    """The umask as ``os.umask`` reads it: by setting it, and back at once (a file that
    another thread makes meanwhile gets the 022 mask). Read once, at the first write,
    so as not to race other threads on every write; not at import, where it raced the
    importing program's threads even on Linux, which never needs it."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _umask() -> int:
    """The process's umask now, where Linux shows it (``/proc/self/status``); elsewhere
    the one at the first write (:func:`_umask_by_setting`)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _umask_by_setting()


def as_if_created(tree: Path) -> None:
    """Give ``tree`` and every file and folder under it the mode ``open()`` and ``mkdir``
    would give them under the umask, before it is moved into place. ``mkstemp`` and
    ``mkdtemp`` make them 0600 and 0700, and so do some writers (safetensors' weights,
    ONNX's external data): results and cached models were unreadable to the
    collaborators the user's umask lets in. A folder keeps its setgid bit, which a
    shared cache's folders use to give new files their group."""
    mask = _umask()
    for path in [tree, *tree.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod((0o777 & ~mask) | (path.stat().st_mode & stat.S_ISGID))
        else:
            path.chmod(0o666 & ~mask)


@contextmanager
def atomic_path(target: Path, suffix: str = "", *, made_ready: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    The temporary file is removed if the block raises. ``suffix`` ends the temporary
    name, for writers that insist on an extension (``np.save`` appends ``.npy`` to
    any other name). ``made_ready``: the block ends with :func:`make_ready` of the file
    itself (to have it on the disk before something else happens), so only the rename
    is left.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp" + suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if not made_ready:
            make_ready(tmp_path)
        os.replace(tmp_path, target)
        flushed_names(target.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def make_ready(tree: Path) -> None:
    """Give the new file or folder ``tree`` its modes (:func:`as_if_created`) and flush
    it (:func:`flushed`), as before its rename into place."""
    as_if_created(tree)
    flushed(tree)


def flushed(tree: Path) -> None:
    """Flush ``tree`` to the disk: a file, or a folder and everything under it.

    Why: a rename is atomic for every process, but after a power cut or an OS crash
    the new name can be on the disk while the data it names is not (ext4 and XFS
    order them only in some cases), and a file that is there but empty or zeroed
    would be read as complete. So the data is flushed before the rename, and the
    folder that holds the new name after it (:func:`flushed_names`). On macOS,
    ``fsync`` reaches the drive but not through its write cache (that takes
    ``F_FULLFSYNC``, not used: macOS is untested here, README).
    """
    for path in [tree, *tree.rglob("*")] if tree.is_dir() else [tree]:
        if path.is_dir():
            flushed_names(path)
        elif not path.is_symlink():
            _fsync(path)


def flushed_names(folder: Path) -> None:
    """Flush the entries of ``folder`` (names, not the files they name) to the disk,
    where its file system can: some cannot flush a folder (EINVAL, EOPNOTSUPP, EBADF
    on some network and FUSE ones), and the rename is done by then, so that is no
    reason to fail the run."""
    try:
        _fsync(folder)
    except OSError as exc:
        log.debug("cannot flush the folder %s: %s", folder, exc.strerror)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_leftovers(name: str) -> tuple[str, ...]:
    """The pattern of what :func:`atomic_path` leaves beside a file ``name`` when killed."""
    return (f".{name}.*.tmp*",)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``target``; move it to ``target`` on success.

    Used for whole artifacts (an exported model with its manifest) that are only
    valid complete. An existing ``target`` is replaced (see :func:`_replace_dir`).
    ``target`` is resolved first because the temporary directory must sit beside it:
    ``Path(".").parent`` is ``.`` itself, which would put it inside ``target``.
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _folder_beside(target, _NEW)
    try:
        yield tmp
        make_ready(tmp)
        _replace_dir(tmp, target)
        flushed_names(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_leftovers(folder: Path, *patterns: str) -> None:
    """Delete what a killed run left of its scratch work in ``folder``: the files and
    folders matching ``patterns``. A run killed outright (SIGKILL, a lost machine) never
    reaches the ``finally`` that removes them, and they piled up, hundreds of MB each
    (seen in an audit: export copies, GGUF copies, quantizer scratch). Call it only
    while holding the lock of the work (:mod:`.locks`), so that nothing matched is in use.
    """
    for pattern in patterns:
        for path in folder.glob(pattern):
            log.info("removing %s, left by an interrupted run", path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


# The suffixes of the folders :func:`atomic_dir` makes beside its target: the new
# content, and the old one while it is being replaced.
_NEW, _OLD = ".tmp", ".old"


def _folder_beside(target: Path, suffix: str) -> Path:
    """A new empty folder ``.<target name>.<random><suffix>`` beside ``target``."""
    return Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix))


# How many bytes longer than its target's name the name of a folder that
# :func:`_folder_beside` makes is: two dots, mkdtemp's 8 random characters, the suffix.
_BESIDE_EXTRA = 2 + 8 + max(len(_NEW), len(_OLD))


def check_dir_name(target: Path, what: str) -> None:
    """Refuse, with an :class:`InputError` naming ``what``, a ``target`` for
    :func:`atomic_dir` whose own name fits its file system but whose scratch folder's
    would not: that was found only after the work (an export takes minutes), when the
    scratch folder was made."""
    size = len(os.fsencode(target.name))
    try:
        limit = os.pathconf(nearest_existing(target), "PC_NAME_MAX")
    except (OSError, ValueError):  # a system that does not say: the usual limit
        limit = 255
    if size + _BESIDE_EXTRA > limit:
        raise InputError(
            f"{what}: the name {target.name[:40]}… is too long ({size} bytes; at most {limit - _BESIDE_EXTRA} here, as a "
            f"temporary folder beside it takes its name and {_BESIDE_EXTRA} bytes more)"
        )


def dir_leftovers(target: Path) -> tuple[str, ...]:
    """The patterns of what :func:`atomic_dir` leaves beside ``target`` when killed."""
    return tuple(f".{target.name}.*{suffix}" for suffix in (_NEW, _OLD))


def remove_dir(target: Path) -> None:
    """Delete the folder ``target`` so that nothing finds it half deleted: it is renamed
    aside in one step first (what a deletion cut short leaves matches
    :func:`dir_leftovers`), then deleted."""
    old = _folder_beside(target, _OLD)
    os.replace(target, old)  # onto an empty directory, which POSIX allows
    shutil.rmtree(old)


def _replace_dir(new: Path, target: Path) -> None:
    """Move the directory ``new`` to ``target``. An existing ``target`` is renamed aside
    and deleted only once ``new`` is in place: deleting it first would lose it when the
    deletion or the move fails halfway (a read-only file, a busy mount point)."""
    if not target.exists():
        os.replace(new, target)
        return
    old = _folder_beside(target, _OLD)
    os.replace(target, old)  # onto an empty directory, which POSIX allows
    try:
        os.replace(new, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


# Why a write fails on a machine that works: the user can act on these, so they are
# reported in one line; any other OSError is a bug and keeps its traceback.
_WRITE_FAILURES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


@contextmanager
def reported_write_failures(what: str) -> Iterator[None]:
    """Turn a failed write in the block into a one-line :class:`ResourceError`
    ``"<what>: <reason>"`` (``"--out r: no space left on device"``).

    A full disk is only found while writing, after the run's slow stages, so it cannot be
    checked up front as permissions are (:func:`~expertlens_lite.paths.check_writable`).
    The writes in the block go through :func:`atomic_path` or :func:`atomic_dir`, which
    remove their temporary files, so nothing half written stays behind.
    """
    try:
        yield
    except OSError as exc:
        reason = _write_failure_reason(exc)
        if reason is None:
            raise
        raise ResourceError(f"{what}: {reason}") from None


def _write_failure_reason(exc: OSError) -> str | None:
    """The reason to show for ``exc``, or None if it is no failure of the medium.

    An OSError without errno is a short write: numpy reports a full disk as
    ``"36864 requested and 20448 written"``.
    """
    if exc.errno is None:
        return f"the write was cut short ({first_line(exc)}); is the disk full?"
    if exc.errno in _WRITE_FAILURES:
        return os.strerror(exc.errno).lower()
    return None


def write_text(target: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_ready(value: Any) -> Any:
    """``value`` with what JSON cannot hold made plain: NumPy numbers as Python ones
    (``json`` refuses them, which once failed a run's summary after its slow stages),
    NaN and infinities as None (Python writes them as ``NaN``, which is not JSON: strict
    readers refuse the whole file), tuples as lists."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if getattr(value, "shape", None) == () and hasattr(value, "item"):  # a NumPy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(data: Any) -> str:
    """``data`` (made :func:`json_ready`) as indented, strict JSON."""
    return json.dumps(json_ready(data), indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_json(target: Path, data: Any) -> None:
    """Write ``data`` as :func:`json_text` to ``target`` atomically."""
    write_text(target, json_text(data))


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) and SIGTERM during the block, then act on the first that came.

    For renames that must happen together: a run's result files taking their places. A
    Ctrl-C among them left an earlier run's files mixed with the new ones and no summary
    (found by an audit); held, it stops the program right after them. Python sets signal
    handlers from the main thread only; elsewhere the block runs as it is (the main
    thread gets the signal then). SIGKILL cannot be held.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[tuple[int, Any]] = []
    numbers = [n for n in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(n) is not None]  # None: set outside Python
    previous = {n: signal.signal(n, lambda signum, frame: came.append((signum, frame))) for n in numbers}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if came:
            signum, frame = came[0]
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def file_sizes(directory: Path, leave_out: str) -> dict[str, int]:
    """Name -> size of every file in ``directory`` but ``leave_out`` (the record itself),
    recorded when a folder is written so that :func:`size_damage` can check it on reuse."""
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file() and p.name != leave_out}


def size_damage(directory: Path, sizes: dict[str, int]) -> str | None:
    """What is wrong with a folder written atomically with these file ``sizes``, if
    anything: a file missing or of another size.

    Such a folder is complete when written, so this is damage from outside (a file
    deleted by hand, a copy cut short by a full disk). Sizes, not hashes: this runs on
    every reuse, and hashing SmolLM2's 540 MB of weights would add about a second to
    each run.
    """
    for name, size in sizes.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size:,} bytes, not {size:,}"
    return None
