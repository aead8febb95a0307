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
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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
def _held(folder: Path, cache: Path, busy: Callable[[], None]) -> Iterator[None]:
    """Hold ``folder``'s lock, calling ``busy`` first if another run holds it: ``busy``
    raises to give up, or returns to wait for the lock."""
    lock = cache / "locks" / f"{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy()
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
