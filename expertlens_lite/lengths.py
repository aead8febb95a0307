"""The most tokens a sentence may have for a model, and the check of a pool against it.

Read from the export folder's JSON files alone: a run does not import transformers
(seconds) just to learn a number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .batching import Encoded
from .errors import InputError, whole_number

if TYPE_CHECKING:  # the exporter reads max_tokens too: imported at run time, a cycle
    from .export import ExportedModel

# config.json keys of a model's position-embedding table size, by family (BERT/Llama, GPT-2, others).
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_positions")
TOKENIZER_NO_LIMIT = 1_000_000  # transformers writes 1e30 as model_max_length of a tokenizer without a limit
# Model types whose position ids count on from the padding id (RoBERTa's scheme): they
# read pad_token_id + 1 tokens fewer than their table has positions.
POSITIONS_AFTER_PADDING = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "longformer"})


def max_tokens(config: dict, tokenizer_config: dict) -> int | None:
    """The most tokens a sentence of the model may have, None if neither file says: its
    position-embedding table size (``config.json``, :data:`POSITION_KEYS`) and its
    tokenizer's ``model_max_length`` when that is a real limit, whichever is smaller.
    RoBERTa has 514 positions but reads 512 tokens (:data:`POSITIONS_AFTER_PADDING`),
    which its tokenizer says when it has a limit; a folder's tokenizer often has none,
    and a 513-token sentence failed inside ONNX Runtime."""
    positions = next((config[key] for key in POSITION_KEYS if _is_count(config.get(key))), None)
    pad = config.get("pad_token_id")
    if positions is not None and config.get("model_type") in POSITIONS_AFTER_PADDING and whole_number(pad) is not None and pad >= 0:
        positions -= pad + 1
    tokenizer = tokenizer_config.get("model_max_length")
    limits = [positions] if positions is not None else []
    if _is_count(tokenizer) and tokenizer < TOKENIZER_NO_LIMIT:
        limits.append(tokenizer)
    return min(limits, default=None)


def _is_count(value) -> bool:
    """Whether a JSON value is a positive whole number (``true`` is not)."""
    return whole_number(value) is not None and value > 0


def json_object(path: Path) -> dict | None:
    """The JSON object in ``path``, None if there is none there: a model file's fault is
    left to the reader it is for (transformers, ONNX Runtime), which may well cope."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def export_max_tokens(exported: ExportedModel) -> int | None:
    """:func:`max_tokens` of an export folder (no limit checked where its files say none)."""
    files = (json_object(exported.directory / name) or {} for name in ("config.json", "tokenizer_config.json"))
    return max_tokens(*files)


def check_lengths(encoded: Encoded, sentences: Sequence[str], limit: int | None, model: str) -> None:
    """Refuse, before any work, a pool whose longest sentence (special and prefix tokens
    included, as the graph reads them) has more tokens than the model's ``limit``:
    ONNX Runtime would fail deep in the graph with a traceback, and
    :func:`check_resources` would blame ``--batch-size``, which cannot help."""
    lengths = encoded.lengths()
    longest = int(lengths.argmax())
    if limit is None or lengths[longest] <= limit:
        return
    others = int((lengths > limit).sum()) - 1
    more = f" (and {others} more sentence(s) over the limit)" if others else ""
    raise InputError(
        f"sentence {longest} of the pool ({_opening(sentences[longest])!r}) has {lengths[longest]} tokens; "
        f"model {model!r} reads at most {limit}: shorten or split it{more}"
    )


def _opening(sentence: str, words: int = 6, chars: int = 60) -> str:
    """The first few words of ``sentence``, enough to find it, short enough for one line."""
    split = sentence.split()
    opening = " ".join(split[:words])
    return opening[:chars] + " ..." if len(split) > words or len(opening) > chars else opening
