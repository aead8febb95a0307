"""Where things live: the cache (``ELENS_HOME``) and the bundled data files."""

from __future__ import annotations

import os
import tempfile
from importlib import resources
from pathlib import Path

from .errors import InputError


def cache_dir() -> Path:
    """``$ELENS_HOME``, else ``~/.cache/expertlens-lite``; exported models and responses go
    here, so a folder that cannot be written is refused before any work."""
    path = Path(os.environ.get("ELENS_HOME") or Path.home() / ".cache" / "expertlens-lite").expanduser()
    check_writable(path, f"the cache folder {path} (ELENS_HOME)")
    return path


def check_writable(path: Path, what: str) -> None:
    """Refuse, with an :class:`InputError` naming ``what``, a folder ``path`` that could
    not be created or written to, without creating it: a run checks where its results
    go before its slow stages, and one refused later leaves nothing behind.

    Why a probe rather than ``os.access``: permission bits do not tell (root passes them;
    ``/proc`` refuses new folders whatever they say), so a temporary folder is made and
    removed in the nearest folder that exists.
    """
    existing = next(p for p in [path.absolute(), *path.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise InputError(f"{what} cannot be created: {existing} is not a folder")
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".elens-probe-").cleanup()
    except OSError as exc:
        raise InputError(f"{what} cannot be written: {exc.strerror} ({existing})") from None


def bundled(name: str) -> Path:
    """A file of the package's ``data/`` folder (``men.txt``, ``corpus.txt``)."""
    return Path(str(resources.files("expertlens_lite") / "data" / name))


DEFAULT_CORPUS = "corpus.txt"
DEFAULT_HUMAN = "men.txt"
