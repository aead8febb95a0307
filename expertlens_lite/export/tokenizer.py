"""The exported model's tokenizer, read with the ``tokenizers`` library alone.

Why not transformers' ``AutoTokenizer``: a run on a cached export only tokenizes, and
loading it imports transformers and PyTorch, 5.8 s of the default model's 17 s warm
run (measured with cProfile). A fast tokenizer's ``tokenizer.json`` holds all of its
tokenization (normalizer, pre-tokenizer, model, and the post-processor that adds
BOS, CLS or SEP); the Python class around it adds padding and truncation, which a run
does not use, and names its special tokens, read here from the saved configuration.

That this holds for a given model is checked when it is exported
(:func:`disagreement`, on :data:`PROBES`) and recorded in its manifest; an export where
it does not, or without a ``tokenizer.json`` (a model with a slow tokenizer only), is
tokenized by transformers, as before.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..baselines import word_token_ids
from ..batching import pad_id

TOKENIZER_JSON = "tokenizer.json"
# Where a saved transformers tokenizer names its special tokens, in the order it reads them.
_SPECIAL_TOKEN_FILES = ("tokenizer_config.json", "special_tokens_map.json")

# Strings on which the two tokenizers must agree: cases, accents, digits, punctuation,
# runs of spaces, tabs and newlines, scripts without spaces, emoji, a special-token
# string inside text, the empty string, a text too long for the model.
PROBES = (
    "The cat sat quietly on the warm windowsill.",
    "  Leading and trailing spaces, and  double   spaces  ",
    "UPPER lower MiXeD Café naïve façade Ångström",
    "Numbers 0 7 42 3.14159 1,000,000 and dates 2026-12-01.",
    "Punctuation!? \"quotes\" 'single' (parens) [brackets] {braces} -- ... ;:",
    "tabs\tand\nnew\nlines\r\nhere",
    "日本語の文章と中文句子, Ελληνικά, русский, עברית, العربية",
    "emoji 🙂🚀 and symbols © ® ™ € £ ¥ ° ± × ÷",
    "contractions: don't, it's, we'll, they've, I'm",
    "<s> </s> <|endoftext|> [CLS] [SEP] [PAD] inside a sentence",
    "",
    "longer than any model's maximum length: " + "very " * 600 + "long",
)
PROBE_WORDS = ("cat", "hummingbird", "Café", "breakfast", "x", "42", "naïve", "日本")


class JsonTokenizer:
    """A ``tokenizer.json`` with the part of a transformers tokenizer's interface that
    the package calls (:func:`.batching.encode`, :func:`.batching.pad_id`,
    :func:`.baselines.word_token_ids`)."""

    def __init__(self, directory: Path):
        from tokenizers import Tokenizer

        self._backend = Tokenizer.from_file(str(Path(directory) / TOKENIZER_JSON))
        self._backend.no_truncation()  # a saved tokenizer.json may carry a model's max length
        self._backend.no_padding()
        self.pad_token_id = self._special_token_id(directory, "pad_token")
        self.eos_token_id = self._special_token_id(directory, "eos_token")

    def _special_token_id(self, directory: Path, name: str) -> int | None:
        for filename in _SPECIAL_TOKEN_FILES:
            path = Path(directory) / filename
            token = json.loads(path.read_text(encoding="utf-8")).get(name) if path.is_file() else None
            if isinstance(token, dict):  # an AddedToken, saved with its options
                token = token.get("content")
            if token:
                return self._backend.token_to_id(token)
        return None

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True, return_special_tokens_mask: bool = False) -> dict:
        """Token ids (and special-token flags) of one string or of each of several."""
        single = isinstance(text, str)
        encodings = self._backend.encode_batch([text] if single else list(text), add_special_tokens=add_special_tokens)
        out = {"input_ids": [e.ids for e in encodings]}
        if return_special_tokens_mask:
            out["special_tokens_mask"] = [e.special_tokens_mask for e in encodings]
        return {key: value[0] for key, value in out.items()} if single else out

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, special tokens included (transformers' default)."""
        return self._backend.decode(list(ids), skip_special_tokens=False)


def disagreement(reference, directory: Path) -> str | None:
    """Where :class:`JsonTokenizer` on ``directory`` tokenizes differently from the
    transformers tokenizer ``reference`` that was saved there, if anywhere."""
    if not (Path(directory) / TOKENIZER_JSON).is_file():
        return f"no {TOKENIZER_JSON} (a slow tokenizer)"
    lean = JsonTokenizer(directory)
    if pad_id(lean) != pad_id(reference):
        return f"padding id {pad_id(lean)} instead of {pad_id(reference)}"
    for probe in PROBES:
        if _tokens(lean, probe) != _tokens(reference, probe, verbose=False):  # no warning that the long probe is long
            return f"the tokens of {probe!r}"
    for word in PROBE_WORDS:
        if word_token_ids(lean, word) != word_token_ids(reference, word):
            return f"the word tokens of {word!r}"
    return None


def _tokens(tokenizer, text: str, **options) -> tuple[list[int], list[int]]:
    """What :func:`.batching.encode` reads of ``text``: ids and special-token flags."""
    out = tokenizer([text], add_special_tokens=True, return_special_tokens_mask=True, **options)
    return list(out["input_ids"][0]), list(out["special_tokens_mask"][0])
