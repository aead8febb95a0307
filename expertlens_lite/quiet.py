"""Warnings of third-party code silenced in a block, without losing the caller's filters.

``warnings.catch_warnings`` saves the process's warning filters on entry and puts them
back on exit. Two threads of one program in such blocks at once (two exports, runs
from threads) exit in the wrong order: the first to leave restores the filters from
before both, the second then restores the first one's "ignore everything", and every
warning of the program stays silenced from then on. Until Python 3.14's context-local
filters, the blocks here take turns (a lock) so that they always nest.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_TURNS = threading.RLock()  # re-entrant: a silenced block may call another


@contextmanager
def warnings_silenced() -> Iterator[None]:
    """Every warning ignored in the block (other threads' too, as with any filter)."""
    with _TURNS, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
