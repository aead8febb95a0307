"""Where things live: the cache (``ELENS_HOME``) and the bundled data files."""

from __future__ import annotations

import os
import tempfile
from importlib import resources
from pathlib import Path

from .errors import InputError


def cache_dir() -> Path:
    """:func:`cache_path`, refused before any work if it cannot be written: exported
    models and responses go there."""
    path = cache_path()
    check_openable_by_libraries(path, f"the cache folder {path} (ELENS_HOME)")
    check_writable(path, f"the cache folder {path} (ELENS_HOME)")
    return path


def cache_folder_given(cache_dir: str | os.PathLike) -> Path:
    """A library caller's cache folder as the CLI's is: a path, ``~`` expanded (it made a
    folder named "~" in the current one, an audit found), its links followed."""
    if not isinstance(cache_dir, (str, os.PathLike)) or not os.fspath(cache_dir):
        raise InputError(f"cache_dir must be a folder's path (a str or os.PathLike); got {cache_dir!r}")
    return followed(expanded(cache_dir))


def shown(path: str | os.PathLike) -> str:
    """``path`` as text any output stream takes: a name that is not UTF-8 shows its odd
    bytes as Python's error messages do (``caf\\udce9``), where printing it failed."""
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


def check_openable_by_libraries(path: Path, what: str) -> None:
    """Refuse, with an :class:`InputError` naming ``what``, a ``path`` that is not UTF-8:
    a Linux file name may be any bytes, but ONNX Runtime, tokenizers and PyTorch's
    exporter take paths as UTF-8 strings and fail on one with a traceback."""
    if not is_unicode(os.fsdecode(path)):
        raise InputError(
            f"{what} has a name that is not UTF-8, and ONNX Runtime, tokenizers and PyTorch's exporter "
            "cannot open files there; rename it or choose another folder"
        )


def is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode, which libraries written in Rust and C++ can
    take: no lone surrogate, as ``os.fsdecode`` makes of bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def cache_path() -> Path:
    """``$ELENS_HOME``, else ``~/.cache/expertlens-lite`` (which may not exist yet), its
    links followed (:func:`followed`)."""
    return followed(expanded(os.environ.get("ELENS_HOME") or "~/.cache/expertlens-lite"))


def followed(path: Path) -> Path:
    """``path`` made absolute, with its symbolic links followed: a folder made through a
    link to a folder that is not there yet (which ``Path.mkdir`` refuses, "File exists")
    is made where the link points, as ``elens-lite export --out`` does. (A run's
    ``--out`` or ``ELENS_HOME`` that was such a link was a traceback, the --out one
    after the run's slow stages: an audit.)"""
    return Path(os.path.realpath(path))


def make_folder(path: Path) -> None:
    """``mkdir -p`` of ``path``, :func:`followed`."""
    followed(path).mkdir(parents=True, exist_ok=True)


def model_path_spec(path: os.PathLike) -> str:
    """A path object given as a model, as a ``--model`` string that can only name that
    path: ``Path("smollm2")`` becomes ``./smollm2``, which is never the bundled model of
    that name nor a hub id (as a bare string it picked the bundled model even where
    ./smollm2 was an export folder, found by an audit)."""
    spec = os.fspath(path)
    if isinstance(spec, bytes) or os.path.isabs(spec) or spec.startswith(("./", "../", "~")):
        return spec
    return os.path.join(".", spec)


def expanded(path: str | os.PathLike) -> Path:
    """``path`` with a leading ``~`` or ``~user`` made the home folder, which the shell
    does not do in ``--corpus=~/c.txt``; an unknown user is an :class:`InputError`
    (pathlib's RuntimeError was a traceback, found by an audit)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        raise InputError(f"{path}: {str(path).split('/')[0]} is no user's home folder here") from None


def check_writable(path: Path, what: str) -> None:
    """Refuse, with an :class:`InputError` naming ``what``, a folder ``path`` that could
    not be created or written to, without creating it: a run checks where its results
    go before its slow stages, and one refused later leaves nothing behind.

    Why a probe rather than ``os.access``: permission bits do not tell (root passes them;
    ``/proc`` refuses new folders whatever they say), so a temporary folder is made and
    removed in the nearest folder that exists.
    """
    existing = nearest_existing(path)
    if not existing.is_dir():
        raise InputError(f"{what} cannot be created: {existing} is not a folder")
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".elens-probe-").cleanup()
    except OSError as exc:
        raise InputError(f"{what} cannot be written: {exc.strerror} ({existing})") from None


def check_outside_cache(out: Path, cache: Path) -> None:
    """Refuse an ``--out`` that overlaps the cache folder: ``cache rm`` or a rebuilt entry
    would delete what is written there, and replacing ``--out`` could delete the cache."""
    target, cache = followed(out), followed(cache)
    if target == cache or target in cache.parents or cache in target.parents:
        raise InputError(f"--out {out} overlaps the cache folder {cache} (ELENS_HOME); choose a folder outside it")


def nearest_existing(path: Path) -> Path:
    """``path`` :func:`followed`, or its nearest parent folder that exists."""
    path = followed(path)
    return next(p for p in [path, *path.parents] if p.exists())


def bundled(name: str) -> Path:
    """A file of the package's ``data/`` folder (``men.txt``, ``corpus.txt``)."""
    return Path(str(resources.files("expertlens_lite") / "data" / name))


DEFAULT_CORPUS = "corpus.txt"
DEFAULT_HUMAN = "men.txt"
# A cache entry's description for people (``elens-lite cache ls``), in entries whose
# other files do not say what they were made from (responses, GGUF copies).
ABOUT = "about.json"
# An export folder's description (:class:`.export.manifest.Manifest`), named here for
# the cache's listing, which should not import the exporter's ONNX and PyTorch.
MANIFEST = "manifest.json"
# The files of a results folder (see :mod:`.results`), named here for the run's option
# checks, which should not import the results writer's ONNX and SciPy.
SUMMARY = "summary.json"  # written last: a folder that has it holds a finished run's results
EXPERTS, SIMILARITY, AP, REPORT = "experts.csv", "similarity.csv", "ap.npy", "report.html"
RESULT_FILES = (EXPERTS, SIMILARITY, AP, REPORT, SUMMARY)
