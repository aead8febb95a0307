"""Concepts and their sentences: corpus reading, word matching and seeded sampling.

The output, :class:`ConceptSet`, is the plain data every later stage uses: the
distinct sentences the model must see (each exactly once) and, per concept, the
row indices of its positives and of the pool rows excluded from its negatives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, first_line, whole_number
from .userfiles import nfc, read_text_file

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class ConceptSet:
    """Sentences and per-concept positive/negative rows.

    Attributes:
        sentences: the distinct sentences to run through the model, ``[S]``.
        concepts: concept words, ``[C]``, in the order of the other per-concept fields.
        positives: per concept, row indices (into ``sentences``) of its positives.
        pool: row indices of the shared negative pool, ``[n_pool]``.
        excluded: per concept, the pool rows that contain the concept; its negatives
            are ``pool`` minus these.
        skipped: concepts dropped for too few positives, with the count found.
        seed: the seed that drew the samples.
    """

    sentences: tuple[str, ...]
    concepts: tuple[str, ...]
    positives: tuple[np.ndarray, ...]
    pool: np.ndarray
    excluded: tuple[np.ndarray, ...]
    skipped: dict[str, int] = field(default_factory=dict)
    seed: int = 0

    def n_negatives(self, concept: int) -> int:
        return len(self.pool) - len(self.excluded[concept])


def read_corpus(path: Path | str) -> list[str]:
    """Read a corpus: ``.jsonl`` (or ``.ndjson``, in any case) with a ``text`` field per
    line, else one sentence a line.

    Blank lines are ignored and duplicate sentences kept once (first occurrence).
    """
    path, text = read_text_file(path, "corpus")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        sentences = _parse_jsonl(path, text)
    else:
        sentences = [line.strip() for line in text.splitlines()]
    sentences = list(dict.fromkeys(s for s in sentences if s))
    if not sentences:
        raise InputError(f"corpus {path} has no sentences")
    return sentences


def _parse_jsonl(path: Path, text: str) -> list[str]:
    sentences = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}:{number}: not valid JSON") from None
        except (ValueError, RecursionError) as exc:  # an integer of over 4,300 digits; nesting too deep (an audit)
            raise InputError(f"{path}:{number}: JSON that Python cannot read ({first_line(exc)})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InputError(f"{path}:{number}: expected an object with a string 'text' field")
        sentences.append(record["text"].strip())
    return sentences


def read_concepts(path: Path | str) -> list[str]:
    """Read concept words, one per line (blank lines and ``#`` comments ignored)."""
    path, text = read_text_file(path, "concepts")
    lines = text.splitlines()
    words = []
    for number, line in enumerate(lines, start=1):
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if not is_concept_word(word):
            raise InputError(f"{path}:{number}: {_not_a_concept(word)}")
        words.append(word)
    if not words:
        raise InputError(f"concepts file {path} lists no words")
    return concept_words(words)


def concept_words(words: Sequence[str]) -> list[str]:
    """``words`` as concepts: single words, lower-cased (as the corpus is matched and the
    human pairs are read) and in composed Unicode (:func:`~.userfiles.nfc`), each once."""
    if isinstance(words, str) or not isinstance(words, Sequence):
        raise InputError(f"concepts must be a list of words; got {type(words).__name__} {str(words)[:40]!r}")
    for word in words:  # checked as it is matched: "İ" lower-cases to "i" and a combining dot
        if not isinstance(word, str) or not is_concept_word(word):
            raise InputError(_not_a_concept(word))
    return list(dict.fromkeys(nfc(word).lower() for word in words))


def is_concept_word(word: str) -> bool:
    """Whether ``word`` can be a concept: a single word once lower-cased and composed,
    as the corpus is matched (:func:`word_index`)."""
    return _WORD.fullmatch(nfc(word).lower()) is not None


def _not_a_concept(word: object) -> str:
    """Why ``word`` is no concept: not a single word, or one that stops being one when
    lower-cased (as the corpus is matched), which the plain message denied it was."""
    if isinstance(word, str) and _WORD.fullmatch(nfc(word)):
        lowered = nfc(word).lower()
        return f"the concept {word!r} lower-cases to {lowered!r} ({len(lowered)} characters), no single word as the corpus is matched"
    return f"a concept must be a single word, got {word!r}"


def word_index(sentences: list[str]) -> dict[str, set[int]]:
    """Map each lower-cased word token to the indices of the sentences containing it.

    Tokens are maximal runs of word characters, so a lookup is equivalent to the
    regular expression ``\\bword\\b`` (case-insensitive) on each sentence, at a
    fraction of the cost when many concepts are matched against one corpus.
    """
    index: dict[str, set[int]] = defaultdict(set)
    for i, sentence in enumerate(sentences):
        for token in _WORD.findall(sentence.lower()):
            index[token].add(i)
    return index


# Endings that take "es" in a simple English plural (box -> boxes, dish -> dishes).
_ES_ENDINGS = ("s", "x", "z", "ch", "sh", "o")


def matching_sentences(word: str, index: dict[str, set[int]]) -> set[int]:
    """Sentences containing ``word`` as a whole word, or its simple plural: +s, and +es
    after s, x, z, ch, sh or o. (+es after any word made "hates" a plural of hat and
    "planes" of plan, found by an audit.)"""
    word = word.lower()
    forms = (word, word + "s", word + "es") if word.endswith(_ES_ENDINGS) else (word, word + "s")
    return set().union(*(index.get(form, set()) for form in forms))


def _stream(seed: int, word: str | None = None) -> np.random.Generator:
    """The random stream of the negative pool (no ``word``) or of one concept's positives.

    Each is its own child of ``seed``, keyed by the concept word's bytes rather than its
    place in the list, so that adding, removing or reordering concepts leaves every other
    concept's positives and the pool as they were: results for a concept can be compared
    across runs that study different concept lists. The key is a SHA-256 of the word,
    not Python's ``hash``, which changes from one process to the next.
    """
    if word is None:
        return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    key = int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, key)))


def build_concept_set(
    corpus: Sequence[str],
    concepts: Sequence[str],
    *,
    n_pos: int,
    n_neg: int,
    min_pos: int,
    seed: int,
    warn_skipped: bool = True,
) -> ConceptSet:
    """Sample positives per concept and one shared negative pool, reproducibly.

    Each concept keeps up to ``n_pos`` of its matching sentences (uniformly, seeded, from
    a stream of its own: :func:`_stream`); concepts with fewer than ``min_pos`` matches
    are skipped and reported. The pool is ``n_neg`` sentences drawn from the whole
    corpus; a concept's negatives are the pool minus the sentences containing it (a
    concept in every pool sentence is refused). Only sentences used somewhere are kept,
    in corpus order, so each enters the model once. ``concepts`` go through
    :func:`concept_words` and the corpus through :func:`~.userfiles.nfc`, then, as
    :func:`read_corpus` does, its sentences are stripped, blank ones dropped (they were
    pool negatives pooled over special tokens alone) and each kept once (its first
    occurrence: a repeated one was sampled as two positives of its concept). Both found
    by audits.
    """
    if any(whole_number(n) is None or n < 1 for n in (n_pos, n_neg, min_pos)):
        raise InputError(f"--n-pos, --n-neg and --min-pos must be positive integers; got {n_pos!r}, {n_neg!r}, {min_pos!r}")
    if min_pos > n_pos:
        raise InputError(f"--min-pos ({min_pos}) cannot exceed --n-pos ({n_pos})")
    if whole_number(seed) is None or seed < 0:
        raise InputError(f"--seed must be a non-negative integer; got {seed!r}")
    if isinstance(corpus, str) or not isinstance(corpus, Sequence) or not all(isinstance(s, str) for s in corpus):
        raise InputError(f"corpus must be a list of sentences; got {type(corpus).__name__} {str(corpus)[:40]!r}")
    concepts = concept_words(concepts)
    corpus = list(dict.fromkeys(text for text in (nfc(sentence).strip() for sentence in corpus) if text))
    index = word_index(corpus)
    kept: list[str] = []
    hits: list[np.ndarray] = []
    chosen: list[np.ndarray] = []
    skipped: dict[str, int] = {}
    for word in concepts:
        matches = np.array(sorted(matching_sentences(word, index)), dtype=np.int64)
        if len(matches) < min_pos:
            skipped[word] = int(len(matches))
            continue
        take = _stream(seed, word).choice(len(matches), size=min(n_pos, len(matches)), replace=False)
        kept.append(word)
        hits.append(matches)
        chosen.append(np.sort(matches[take]))
    if skipped:
        shown = ", ".join(f"{w} ({n})" for w, n in list(skipped.items())[:8])
        more = f" and {len(skipped) - 8} more (listed in summary.json)" if len(skipped) > 8 else ""
        log.log(
            logging.WARNING if warn_skipped else logging.INFO,
            "skipped %d concept(s) with fewer than %d positive sentences: %s%s", len(skipped), min_pos, shown, more,
        )
    if len(kept) < 2:
        raise InputError(
            f"only {len(kept)} concept(s) have at least {min_pos} positive sentences in the corpus; "
            "need 2 or more (add sentences, add concepts, or lower --min-pos)"
        )
    pool = np.sort(_stream(seed).choice(len(corpus), size=min(n_neg, len(corpus)), replace=False))
    used = np.unique(np.concatenate([pool, *chosen]))
    row_of = np.full(len(corpus), -1, dtype=np.int64)
    row_of[used] = np.arange(len(used))
    pool_rows = row_of[pool]
    excluded = tuple(row_of[np.intersect1d(pool, h, assume_unique=True)] for h in hits)
    everywhere = [word for word, e in zip(kept, excluded) if len(e) == len(pool)]
    if everywhere:
        raise InputError(
            f"{', '.join(everywhere[:8])}{' and more' if len(everywhere) > 8 else ''}: in every one of the "
            f"{len(pool)} negative-pool sentences, which leaves no negatives to tell experts by; leave it out of the concepts"
            + (f" or draw a pool larger than --n-neg {len(pool)}" if len(pool) < len(corpus) else "")
        )
    return ConceptSet(
        sentences=tuple(corpus[i] for i in used),
        concepts=tuple(kept),
        positives=tuple(row_of[c] for c in chosen),
        pool=pool_rows,
        excluded=excluded,
        skipped=skipped,
        seed=seed,
    )
