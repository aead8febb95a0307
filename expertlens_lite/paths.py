"""Where things live: the cache (``ELENS_HOME``) and the bundled data files."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def cache_dir() -> Path:
    """``$ELENS_HOME``, else ``~/.cache/expertlens-lite``; exported models and responses go here."""
    return Path(os.environ.get("ELENS_HOME") or Path.home() / ".cache" / "expertlens-lite").expanduser()


def bundled(name: str) -> Path:
    """A file of the package's ``data/`` folder (``men.txt``, ``corpus.txt``)."""
    return Path(str(resources.files("expertlens_lite") / "data" / name))


DEFAULT_CORPUS = "corpus.txt"
DEFAULT_HUMAN = "men.txt"
