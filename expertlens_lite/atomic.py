"""Atomic file writes: a crash or Ctrl-C never leaves a half-written result.

Every file the package writes goes through here: the content is written to a
temporary file in the destination's directory and then renamed over the target,
which POSIX guarantees to be atomic on one file system.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    The temporary file is removed if the block raises. ``suffix`` ends the temporary
    name, for writers that insist on an extension (``np.save`` appends ``.npy`` to
    any other name).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp" + suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o644)  # mkstemp's 0600 would make results unreadable to collaborators
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``target``; move it to ``target`` on success.

    Used for whole artifacts (an exported model with its manifest) that are only
    valid complete. An existing ``target`` is replaced.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    tmp.chmod(0o755)
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(target: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``target`` atomically."""
    write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


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
