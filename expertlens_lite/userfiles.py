"""Reading the user's input files, with the one-line errors the CLI shows."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError


def read_text_file(path: Path | str, what: str) -> tuple[Path, str]:
    """The UTF-8 text of ``path``; a missing or undecodable file raises InputError naming ``what``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    try:
        return path, path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} file {path} is not UTF-8 text (undecodable byte at offset {exc.start})") from None
