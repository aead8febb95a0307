"""Choose the MEN words that the bundled default corpus is written for.

Why a script: the bundled corpus must cover enough MEN pairs (>= 120) with a small
number of words (>= 60) so that the default run is both fast and statistically
meaningful, and the words should span many topics so that human scores spread out.
A greedy pick over the MEN graph does that reproducibly: it repeatedly adds the
most-rated MEN word (highest degree, then alphabetically) among those that close at
least one pair with the words already chosen. Maximising closed pairs instead piles
every word into one topic (weather and times of day), which makes a poor benchmark. Words that are the simple plural of
one another (``bird``/``birds``) are never both chosen, because concept matching
counts simple plurals and their positive sets would coincide.

Usage::

    python scripts/choose_concepts.py expertlens_lite/data/men.txt --n-words 64
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path


def read_pairs(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()[:2]) for line in path.read_text().splitlines() if line.strip()]


def plural_clash(word: str, chosen: set[str]) -> bool:
    forms = {word, word + "s", word + "es"}
    if word.endswith("es"):
        forms.add(word[:-2])
    if word.endswith("s"):
        forms.add(word[:-1])
    return bool((forms - {word}) & chosen)


def choose(pairs: list[tuple[str, str]], n_words: int) -> list[str]:
    neighbours: dict[str, set[str]] = defaultdict(set)
    degree: Counter[str] = Counter()
    for a, b in pairs:
        neighbours[a].add(b)
        neighbours[b].add(a)
        degree[a] += 1
        degree[b] += 1
    chosen: list[str] = []
    chosen_set: set[str] = set()
    while len(chosen) < n_words:
        candidates = [w for w in degree if w not in chosen_set and not plural_clash(w, chosen_set)]
        best = max(candidates, key=lambda w: (min(len(neighbours[w] & chosen_set), 1), degree[w], w))
        chosen.append(best)
        chosen_set.add(best)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("men", type=Path)
    parser.add_argument("--n-words", type=int, default=64)
    args = parser.parse_args()
    pairs = read_pairs(args.men)
    words = choose(pairs, args.n_words)
    chosen = set(words)
    covered = [(a, b) for a, b in pairs if a in chosen and b in chosen]
    for word in sorted(words):
        print(word)
    print(f"# {len(words)} words, {len(covered)} MEN pairs with both words chosen")


if __name__ == "__main__":
    main()
