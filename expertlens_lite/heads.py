"""Sentences that start alike run their first tokens once.

In a causal model a token's keys, values, neurons and hidden state depend only on
the tokens up to it, so sentences that start with the same tokens share all of them.
The tokenizer's constant prefix (BOS) is computed once at export
(:mod:`.export.prefix`). A run groups its sentences by their first ``length`` tokens,
their *head* (the prefix and the first word piece: the 2,125 sentences of the default
pool start with 351 distinct heads), runs each distinct head once after the prefix
and keeps what the rest of a sentence reads: the head's keys and values, and its
neurons and last hidden state, which pooling covers. Each sentence then runs from the
token after its head, with the head fed as past (:mod:`.export.surgery` describes the
graph's inputs). On SmolLM2 this removes one token in 16 from the default run's
forward passes, beyond the BOS; the result is exact up to float rounding (tests
compare it with a PyTorch forward over the whole sentence).

Plain data and NumPy only; :mod:`.runtime` runs the batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .batching import Encoded, PoolingOptions, pad_batch, pooled_tokens
from .errors import InputError
from .export.prefix import Prefix
from .export.surgery import (
    PAST_HIDDEN,
    PAST_INPUT,
    PAST_NEURONS,
    PRESENT_OUTPUT,
    TOKEN_HIDDEN,
    TOKEN_NEURONS,
)


@dataclass(frozen=True)
class Heads:
    """A sentence pool grouped by its first ``length`` tokens.

    Attributes:
        length: tokens per head; a sentence of at most that many is its own head.
        of_sentence: per sentence, the index of its head.
        first: per head, the first sentence that has it (whose tokens it is run from).
        pooled: per sentence, which of its tokens pooling covers
            (:func:`.batching.pooled_tokens`); part of a head's identity, since a
            head's pooled outputs are those of the sentences that end within it.
    """

    length: int
    of_sentence: np.ndarray
    first: np.ndarray
    pooled: tuple[np.ndarray, ...]

    def rests(self, encoded: Encoded) -> np.ndarray:
        """The sentences that go on after their head, in order."""
        return np.flatnonzero(encoded.lengths() > self.length)

    def ended_in(self, encoded: Encoded, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The sentences that end within the heads ``rows``, and each one's head's
        position in ``rows``."""
        ended = np.flatnonzero(encoded.lengths() <= self.length)
        position = np.full(len(self.first), -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        at = position[self.of_sentence[ended]]
        return ended[at >= 0], at[at >= 0]


def group_heads(encoded: Encoded, options: PoolingOptions, length: int) -> Heads:
    """Group the sentences of ``encoded`` by their first ``length`` tokens and their pooling there."""
    pooled = tuple(pooled_tokens(ids, special, options) for ids, special in zip(encoded.input_ids, encoded.special))
    index: dict[tuple[bytes, bytes], int] = {}
    of_sentence = np.empty(len(pooled), dtype=np.int64)
    first: list[int] = []
    for sentence, (ids, take) in enumerate(zip(encoded.input_ids, pooled)):
        key = ids[:length].tobytes(), take[:length].tobytes()
        if key not in index:
            index[key] = len(first)
            first.append(sentence)
        of_sentence[sentence] = index[key]
    return Heads(length, of_sentence, np.array(first, dtype=np.int64), pooled)


def head_batch(encoded: Encoded, heads: Heads, rows: Sequence[int], pad: int, prefix: Prefix) -> dict[str, np.ndarray]:
    """Inputs that run the heads ``rows`` after the constant ``prefix`` (:mod:`.export.prefix`)."""
    skip = len(prefix.token_ids)
    firsts = heads.first[np.asarray(rows)]
    ids = [encoded.input_ids[s][skip : heads.length] for s in firsts]
    batch = pad_batch(ids, [heads.pooled[s][: heads.length] for s in firsts], pad, past=skip)
    return batch | {name: np.broadcast_to(array, (len(rows), *array.shape[1:])) for name, array in prefix.states.items()}


def check_prefix(encoded: Encoded, prefix: Prefix) -> None:
    """Refuse sentences that go on after the prefix's length without starting with it:
    the prefix's precomputed states would be wrong for them."""
    n = len(prefix.token_ids)
    for ids in encoded.input_ids:
        if len(ids) > n and tuple(ids[:n]) != prefix.token_ids:
            raise InputError(f"this model's export expects every sentence to start with the tokens {list(prefix.token_ids)}")


# Per graph input that takes what earlier tokens left, the output of a head's run that feeds it.
_FED_BACK = ((PAST_INPUT, PRESENT_OUTPUT), (PAST_NEURONS, TOKEN_NEURONS), (PAST_HIDDEN, TOKEN_HIDDEN))


def fed_back(session) -> dict[str, str]:
    """Per output of a head's run that a later run reads, the graph input it feeds:
    ``present.*`` → ``past_key_values.*``, ``token_neurons.*`` → ``past_neurons.*``,
    ``token_hidden`` → ``past_hidden``."""
    return {
        output + value.name[len(past) :]: value.name
        for value in session.get_inputs()
        for past, output in _FED_BACK
        if value.name.startswith(past)
    }


def is_fed_back(output: str) -> bool:
    """Whether a later run reads the graph output ``output`` of a head's run (:func:`fed_back`)."""
    return output.startswith(tuple(prefix for _, prefix in _FED_BACK))


@dataclass
class HeadStates:
    """What every head's run left for the sentences that go on after it, by graph
    input name: ``past_key_values.*`` ``[heads, kv_heads, length, head_dim]``,
    ``past_neurons.*`` ``[heads, length, d_mlp]`` and ``past_hidden``."""

    arrays: dict[str, np.ndarray]

    @classmethod
    def empty(cls, session, n_heads: int, length: int, prefix: Prefix | None = None) -> HeadStates:
        """States for ``n_heads`` heads of ``length`` tokens, the constant ``prefix`` filled in."""
        arrays = {}
        for value in session.get_inputs():
            dims = value.shape
            if value.name.startswith(PAST_INPUT):
                arrays[value.name] = np.zeros((n_heads, dims[1], length, dims[3]), dtype=np.float32)
            elif value.name.startswith((PAST_NEURONS, PAST_HIDDEN)):
                arrays[value.name] = np.zeros((n_heads, length, dims[2]), dtype=np.float32)
        states = cls(arrays)
        if prefix is not None:
            states.store(np.arange(n_heads), prefix.states, 0)
        return states

    @staticmethod
    def bytes_per_head(session, length: int) -> int:
        """Memory each head's states take."""
        return sum(array.nbytes for array in HeadStates.empty(session, 1, length).arrays.values())

    def store(self, rows: np.ndarray, outputs: dict[str, np.ndarray], start: int) -> None:
        """Keep, for the heads ``rows``, ``outputs`` by the input they feed (:func:`fed_back`):
        keys and values from position 0, neurons and hidden states from ``start`` (the
        prefix's are there already), as far as the batch was long."""
        for name, value in outputs.items():
            target = self.arrays[name]
            if name.startswith(PAST_INPUT):
                target[rows, :, : value.shape[2]] = value
            else:
                target[rows, start : start + value.shape[1]] = value

    def rest_batch(self, encoded: Encoded, heads: Heads, rows: Sequence[int], pad: int) -> dict[str, np.ndarray]:
        """Inputs that run sentences ``rows`` from the token after their head, the head as past."""
        of = heads.of_sentence[np.asarray(rows)]
        batch = pad_batch([encoded.input_ids[s][heads.length :] for s in rows], [heads.pooled[s] for s in rows], pad, past=heads.length)
        return batch | {name: array[of] for name, array in self.arrays.items()}


__all__ = ["HeadStates", "Heads", "check_prefix", "fed_back", "group_heads", "head_batch", "is_fed_back"]
