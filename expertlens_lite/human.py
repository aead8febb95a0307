"""Human similarity ratings (MEN and files of the same format).

A ratings file has one pair per line: ``word1 word2 score`` separated by spaces or
tabs. Blank lines and lines starting with ``#`` are ignored. Words are lower-cased,
since concept matching is case-insensitive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .userfiles import read_text_file


@dataclass(frozen=True)
class HumanPairs:
    """Rated word pairs: ``pairs[i] = (word_a, word_b)`` rated ``scores[i]``."""

    source: str
    pairs: tuple[tuple[str, str], ...]
    scores: tuple[float, ...]

    def __post_init__(self) -> None:
        # Built by hand, pairs and scores of other lengths were found only in the bootstrap (an audit).
        if len(self.pairs) != len(self.scores) or any(len(pair) != 2 for pair in self.pairs):
            raise InputError(f"HumanPairs needs one score per pair of two words; got {len(self.pairs)} pairs, {len(self.scores)} scores")

    @property
    def words(self) -> set[str]:
        return {w for pair in self.pairs for w in pair}

    def restricted_to(self, words: set[str]) -> HumanPairs:
        """The pairs whose two words are both in ``words`` (same order)."""
        keep = [i for i, (a, b) in enumerate(self.pairs) if a in words and b in words]
        return HumanPairs(self.source, tuple(self.pairs[i] for i in keep), tuple(self.scores[i] for i in keep))


def read_human_pairs(path: Path | str) -> HumanPairs:
    """Read a ``word1 word2 score`` file; a malformed line raises with its line number.

    So does a word paired with itself (its similarity is 1 by every measure, which
    would lift every ρ) and a pair rated twice, in either order (which rating counts?).
    """
    path, text = read_text_file(path, "human ratings")
    pairs: list[tuple[str, str]] = []
    scores: list[float] = []
    rated_on: dict[frozenset[str], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split()
        try:
            if len(fields) != 3:
                raise ValueError
            score = float(fields[2])
            if not math.isfinite(score):
                raise ValueError
        except ValueError:
            raise InputError(
                f"{path}:{number}: expected 'word1 word2 score' with a numeric score, got {stripped[:60]!r}"
            ) from None
        pair = (fields[0].lower(), fields[1].lower())
        if pair[0] == pair[1]:
            raise InputError(f"{path}:{number}: {pair[0]!r} is paired with itself")
        key = frozenset(pair)
        if key in rated_on:
            raise InputError(f"{path}:{number}: the pair {pair[0]} {pair[1]} is rated already on line {rated_on[key]}")
        rated_on[key] = number
        pairs.append(pair)
        scores.append(score)
    if not pairs:
        raise InputError(f"human ratings file {path} has no rated pairs")
    return HumanPairs(str(path), tuple(pairs), tuple(scores))
