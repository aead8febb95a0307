"""Locks that keep concurrent elens-lite runs (processes or threads) apart over a folder.

Two runs that need the same cache entry (a dequantized GGUF copy, an export, the
responses of one sentence pool) used to make it side by side, writing the same
files: one of them failed with a traceback (seen in an audit, with threads and with
processes). Now the first one makes it and the others wait, then reuse it; two runs
into one results folder are refused instead, since neither may reuse the other's.

Each lock of a cache entry or a results folder is a file in the cache's ``locks/``
folder, named by the guarded folder's resolved path, held with ``flock``: the OS releases it when its process ends, however
it ends, so a crash leaves no stale lock. Each holder opens the file itself, so two
threads of one process exclude each other too. ``fcntl`` is POSIX-only, like the
positioned I/O elsewhere (README: platforms).

A holder deletes its lock file before it lets go, so the folder does not fill with
one empty file per results folder ever written (an audit counted them). A waiter may
then hold a file that is no longer there; it checks, after it has the lock, that the
name still leads to the file it locked, and starts again if not (the usual pattern
for ``flock`` files that get deleted). A killed holder's file stays, unlocked, until
the next holder of that folder, or ``elens-lite cache rm``, removes it.

Two more: a results folder's own lock file, held while a run writes into it
(:func:`writing_into`), and the cache's ``locks/runs``, which every run holds shared
and ``elens-lite cache rm`` exclusively (:func:`using_cache`, :func:`cache_unused`):
runs read their export and responses long after making them, without their locks.

On a file system that cannot lock (:data:`_NO_FLOCK`), every one of them is a warning
and no lock (:func:`_lock`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import InputError

log = logging.getLogger(__name__)


@contextmanager
def waiting_for(folder: Path, cache: Path, what: str) -> Iterator[None]:
    """Hold ``folder``'s lock; while another run holds it, say so (naming ``what``) and
    wait. For a cache entry: whoever holds the lock makes it, the others reuse it after."""

    def wait() -> None:
        log.warning("waiting for another elens-lite run that is making %s (%s)", what, folder)

    with _held(folder, cache, wait):
        yield


@contextmanager
def refusing(folder: Path, cache: Path, message: str) -> Iterator[None]:
    """Hold ``folder``'s lock; if another run holds it, raise ``InputError(message)``."""

    def refuse() -> None:
        raise InputError(message)

    with _held(folder, cache, refuse):
        yield


@contextmanager
def writing_into(folder: Path) -> Iterator[None]:
    """Hold the lock file inside ``folder`` (which must exist); while another run holds
    it, say so and wait. For a results folder: runs with different caches do not share
    the cache's lock of it (:func:`refusing`), and wrote into one folder at once (an
    audit found one run's summary beside the other's results)."""
    lock = folder / ".elens-lite.lock"

    def wait() -> None:
        log.warning("waiting for another elens-lite run that is writing into %s", folder)

    handle = _locked(lock, wait, folder)
    try:
        yield
    finally:
        _release(lock, handle)


# What flock says on file systems that do not lock (Lustre without ``-o flock``, NFS
# without its lock daemon).
_NO_FLOCK = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})
_told_unlocked: set[Path] = set()


def _lock(handle: IO[str], operation: int, busy: Callable[[], None], where: Path) -> None:
    """``flock`` ``handle`` (``LOCK_EX`` or ``LOCK_SH``), calling ``busy`` first if another
    run holds it: ``busy`` raises to give up, or returns to wait for the lock.

    Where ``where``'s file system cannot lock, a warning (once per folder and process)
    and no lock: runs there are not kept apart, but they run. They used to end with an
    OSError traceback, for ``--out`` after the run's slow stages (found in a review).
    """
    try:
        try:
            _flock_soon(handle, operation)
        except BlockingIOError:
            busy()
            fcntl.flock(handle, operation)
    except OSError as exc:
        if exc.errno not in _NO_FLOCK:
            raise
        if where not in _told_unlocked:
            _told_unlocked.add(where)
            log.warning("%s cannot be locked (%s): elens-lite runs using it at once are not kept apart", where, exc.strerror)


# How long a lock is asked for again before its holder counts as a run. ``cache ls``
# takes each entry's lock shared for a moment (:func:`held`), to tell an entry being
# made from an interrupted one: a ``cache rm`` or a run asking at that moment was
# refused, or said it waited for another run (noted in a review).
_GRACE_S = 0.05


def _flock_soon(handle: IO[str], operation: int) -> None:
    """``flock`` without blocking, asked again for :data:`_GRACE_S`; BlockingIOError if
    the lock is still held then."""
    deadline = time.monotonic() + _GRACE_S
    while True:
        try:
            fcntl.flock(handle, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


@contextmanager
def using_cache(cache: Path) -> Iterator[None]:
    """Hold the cache's ``runs`` lock shared, for a whole run: ``elens-lite cache rm``
    waits for no run and refuses while any holds it (a run whose export it had removed
    failed later, reading the export's embeddings, found by an audit). While a
    ``cache rm`` holds it, say so and wait."""

    def wait() -> None:
        log.warning("waiting for elens-lite cache rm in %s", cache)

    with _runs_lock(cache) as handle:
        _lock(handle, fcntl.LOCK_SH, wait, cache)
        yield


@contextmanager
def cache_unused(cache: Path, message: str) -> Iterator[None]:
    """Hold the cache's ``runs`` lock alone, or raise ``InputError(message)`` if a run
    holds it (:func:`using_cache`)."""

    def refuse() -> None:
        raise InputError(message)

    with _runs_lock(cache) as handle:
        _lock(handle, fcntl.LOCK_EX, refuse, cache)
        yield


def _runs_lock(cache: Path) -> IO[str]:
    """The cache's ``runs`` lock file, open; never deleted, so it needs no name check."""
    (cache / "locks").mkdir(parents=True, exist_ok=True)
    return (cache / "locks" / "runs").open("a")


def held(folder: Path, cache: Path) -> bool:
    """Whether a run holds ``folder``'s lock in ``cache`` now (its file is not made)."""
    try:
        handle = _lock_file(folder, cache).open()
    except FileNotFoundError:
        return False
    with handle:
        return not _free(handle, fcntl.LOCK_SH)


def _free(handle: IO[str], operation: int) -> bool:
    """Whether no other run holds ``handle``'s lock: it is taken (``operation``) if so.
    True where the file system cannot lock, as then no run holds one."""
    try:
        fcntl.flock(handle, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_FLOCK:
            raise
    return True


def _lock_file(folder: Path, cache: Path) -> Path:
    """The lock of ``folder``, named by a hash of its resolved path's bytes (``os.fsencode``:
    a Linux file name need not be UTF-8, and ``str.encode`` failed on one that is not)."""
    return cache / "locks" / f"{hashlib.sha256(os.fsencode(folder.resolve())).hexdigest()[:16]}.lock"


@contextmanager
def _held(folder: Path, cache: Path, busy: Callable[[], None]) -> Iterator[None]:
    """Hold ``folder``'s lock in ``cache``, calling ``busy`` first if another run holds
    it: ``busy`` raises to give up, or returns to wait for the lock."""
    lock = _lock_file(folder, cache)
    lock.parent.mkdir(parents=True, exist_ok=True)
    handle = _locked(lock, busy, cache)
    try:
        yield
    finally:
        _release(lock, handle)


def _release(lock: Path, handle: IO[str]) -> None:
    """Delete ``lock`` while still holding it (the next holder makes a new file), then let go."""
    try:
        lock.unlink(missing_ok=True)
    except OSError as exc:  # a folder that can no longer be changed: the file stays, unlocked, harmless
        log.info("cannot remove the lock file %s: %s", lock, exc.strerror)
    finally:
        handle.close()


def _locked(lock: Path, busy: Callable[[], None], where: Path) -> IO[str]:
    """The open ``lock`` file, locked (see :func:`_lock`): opened and locked again while
    the name leads to another file than the one locked (its holder deleted it on release)."""
    told = False

    def busy_once() -> None:
        nonlocal told
        if not told:
            busy()
            told = True

    while True:
        handle = lock.open("a")
        try:
            _lock(handle, fcntl.LOCK_EX, busy_once, where)
            if _names(lock, handle):
                return handle
        except BaseException:
            handle.close()
            raise
        handle.close()


def _names(path: Path, handle: IO[str]) -> bool:
    """Whether ``path`` is the file open as ``handle``."""
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def remove_unheld_locks(cache: Path) -> None:
    """Delete the lock files in ``cache`` that no run holds (left by killed runs):
    each is taken first, as a run would take it, so none that is held goes."""
    for lock in sorted((cache / "locks").glob("*.lock")):
        with lock.open("a") as handle:
            if _free(handle, fcntl.LOCK_EX) and _names(lock, handle):
                lock.unlink()
