"""Typed exceptions of the library.

The CLI turns every :class:`ElensError` into a one-line message and exit status 2;
anything else is a bug and keeps its traceback. Library code raises these for
problems the *user* can fix (bad files, bad options), never for internal errors.
"""

from __future__ import annotations

import math
import numbers


class ElensError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class InputError(ElensError, ValueError):
    """Malformed or out-of-range input data (files, arrays, option values)."""


class ModelError(ElensError):
    """A model that cannot be found, read, or is of an unsupported architecture."""


class ResourceError(ElensError):
    """A request too large for the machine (memory, disk)."""


class ProcessError(ElensError):
    """Work the process cannot do as it was started (a child forked after the kernels
    ran on threads that do not survive a fork)."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, at most 300 characters ("" if it has none):
    a third-party error can run to pages (Optimum's lists every model type it knows),
    and the CLI shows one line."""
    return (str(exc).strip().splitlines() or [""])[0][:300]


def whole_number(value: object, *, from_float: bool = False) -> int | None:
    """``value`` as an ``int`` if it is a whole number, else None: an int or a NumPy
    integer, and with ``from_float`` a float equal to one (a top-k read as a number).
    ``True`` and ``False`` are None: Python counts them as ints, but no one means a
    count by them, so taking them would hide a mistake."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if from_float and isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def size_text(size: float) -> str:
    """Bytes in the largest unit that keeps them at least 1 (decimal units, as ``df -H``):
    "40.0 MB" rather than the "0.0 GB" a disk-space refusal printed (an audit)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} B"
