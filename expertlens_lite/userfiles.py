"""Reading the user's input files, with the one-line errors the CLI shows."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from .errors import InputError
from .paths import expanded


def read_text_file(path: Path | str, what: str) -> tuple[Path, str]:
    """The UTF-8 text of ``path``, without the byte-order mark some editors (Windows
    Notepad) put first, which would otherwise stick to the first word; a missing or
    undecodable file raises InputError naming ``what``. A leading ``~`` is the home
    folder, which the shell does not expand in ``--corpus=~/corpus.txt``. The text is
    in Unicode's composed form (:func:`nfc`)."""
    path = expanded(path)
    if not path.exists():
        raise InputError(f"{what} file not found: {path}")
    if path.is_dir():  # anything else is read: a pipe (``--corpus <(zcat big.txt.gz)``) too
        raise InputError(f"{what} file {path} is a folder")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} file {path} is not UTF-8 text (undecodable byte at offset {exc.start})") from None
    if (nul := text.find("\x00")) >= 0:  # valid UTF-8, but no text has it: UTF-16 without its mark read as UTF-8 does
        raise InputError(f"{what} file {path} holds NUL characters (line {text.count(chr(10), 0, nul) + 1}): is it UTF-16 or binary? Save it as UTF-8 text")
    return path, nfc(text)


def nfc(text: str) -> str:
    """``text`` in Unicode's composed form (NFC). Text copied from macOS file names or
    some PDFs writes "café" as "cafe" and a combining accent, which is no word
    character: the concept "café" found no sentences, while "cafe" took them."""
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)
