"""The threads of the kernels' parallel loops (``numba.prange``): numba's TBB layer.

Numba runs parallel loops on the first "threading layer" it can load, in the order
TBB, OpenMP, its own workqueue, and keeps it for the life of the process. With
numba from pip, TBB's library is installed (the ``tbb`` package, a dependency on
x86-64 Linux) but not found: it lies in the environment's ``lib/`` folder, where
the loader does not look. So numba took GNU OpenMP, whose pool does not survive a
``fork``: a child forked after the kernels ran (multiprocessing's default start
method on Linux, torch's DataLoader workers) was killed as soon as it ran them
("fork() called from a process already using GNU OpenMP, this is unsafe"), and
OpenMP's start changed what ``torch.get_num_threads()`` reports (both found by an
audit). TBB survives forks, is safe to call from several threads at once (runs
from threads must work, which rules out workqueue) and runs the kernels as fast
(BENCHMARKS.md). Loading its library first, by its full path, lets numba find it.

Where TBB cannot be loaded (other platforms, ``NUMBA_THREADING_LAYER=omp``, or a
program whose own numba code ran on OpenMP first), a child forked after the kernels
ran on OpenMP gets a :class:`~expertlens_lite.errors.ProcessError` saying what to
do instead of being killed.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import logging
import os
import sys

import numba

from expertlens_lite.errors import ProcessError

log = logging.getLogger(__name__)

_forked_from_openmp = False


def _after_fork_in_child() -> None:
    global _forked_from_openmp
    try:
        _forked_from_openmp = numba.threading_layer() == "omp"
    except ValueError:  # no parallel loop ran before the fork: the child picks its own layer
        pass


os.register_at_fork(after_in_child=_after_fork_in_child)


def ready_threads() -> None:
    """Call before each parallel kernel: loads TBB for numba (:func:`_load_tbb`), and in
    a child forked after the kernels ran on OpenMP raises :class:`ProcessError`."""
    _load_tbb()
    if _forked_from_openmp:
        raise ProcessError(
            "this process was forked after expertlens-lite's kernels ran on numba's OpenMP threads, which a forked "
            "process cannot use: start child processes with multiprocessing's 'spawn' or 'forkserver' method, or "
            "install tbb (pip install tbb) so that numba uses TBB"
        )


@functools.cache
def _load_tbb() -> None:
    """Load the ``tbb`` package's library into the process, where it is installed; then
    numba's ``CDLL("libtbb.so.12")`` and its TBB pool find it by that name. Done before
    numba's first parallel loop, it decides the layer; after, it changes nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        files = importlib.metadata.files("tbb") or []
    except importlib.metadata.PackageNotFoundError:
        return
    for file in files:
        if file.name == "libtbb.so.12":
            try:
                ctypes.CDLL(str(file.locate()), mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:  # a broken install: numba falls back to OpenMP
                log.debug("cannot load TBB from %s: %s", file.locate(), exc)
            return
