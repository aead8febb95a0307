"""Locks that keep concurrent elens-lite runs (processes or threads) apart over a folder.

Two runs that need the same cache entry (a dequantized GGUF copy, an export, the
responses of one sentence pool) used to make it side by side, writing the same
files: one of them failed with a traceback (seen in an audit, with threads and with
processes). Now the first one makes it and the others wait, then reuse it; two runs
into one results folder are refused instead, since neither may reuse the other's.

Each lock is a file in the cache's ``locks/`` folder, named by the guarded folder's
resolved path, held with ``flock``: the OS releases it when its process ends, however
it ends, so a crash leaves no stale lock. Each holder opens the file itself, so two
threads of one process exclude each other too. ``fcntl`` is POSIX-only, like the
positioned I/O elsewhere (README: platforms).

A holder deletes its lock file before it lets go, so the folder does not fill with
one empty file per results folder ever written (an audit counted them). A waiter may
then hold a file that is no longer there; it checks, after it has the lock, that the
name still leads to the file it locked, and starts again if not (the usual pattern
for ``flock`` files that get deleted). A killed holder's file stays, unlocked, until
the next holder of that folder, or ``elens-lite cache rm``, removes it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
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

    def wait() -> None:
        log.warning("waiting for another elens-lite run that is writing into %s", folder)

    with _held_at(folder / ".elens-lite.lock", wait):
        yield


@contextmanager
def _held(folder: Path, cache: Path, busy: Callable[[], None]) -> Iterator[None]:
    """Hold ``folder``'s lock in ``cache``, calling ``busy`` first if another run holds
    it: ``busy`` raises to give up, or returns to wait for the lock."""
    lock = cache / "locks" / f"{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with _held_at(lock, busy):
        yield


@contextmanager
def _held_at(lock: Path, busy: Callable[[], None]) -> Iterator[None]:
    """Hold the lock file ``lock`` (see :func:`_held`)."""
    handle = _locked(lock, busy)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still held: the next holder makes a new file
        handle.close()


def _locked(lock: Path, busy: Callable[[], None]) -> IO[str]:
    """The open ``lock`` file, locked: opened and locked again while the name leads to
    another file than the one locked (its holder deleted it on release)."""
    told = False
    while True:
        handle = lock.open("a")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not told:
                    busy()
                    told = True
                fcntl.flock(handle, fcntl.LOCK_EX)
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
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a run holds it
            if _names(lock, handle):
                lock.unlink()
