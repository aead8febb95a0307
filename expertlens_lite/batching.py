"""Tokenize once, then cut length-bucketed, right-padded batches with a pool mask.

Shared by the ONNX runtime and the PyTorch reference so that parity tests compare
the two on exactly the same padded batch. Right padding is correct for causal
models too: a real token never attends to the padding after it, and position ids
are simply ``0..T-1``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError

POOLINGS = ("max", "mean")  # how a neuron's responses over a sentence's tokens become one


@dataclass(frozen=True)
class PoolingOptions:
    """Which tokens a neuron's pooled response is taken over.

    Attributes:
        pooling: ``"max"`` (the method's default) or ``"mean"`` over tokens.
        keep_special_tokens: include special tokens (BOS, CLS, SEP, EOS) in pooling.
            Off by default: a causal model's BOS is a constant context that carries
            no sentence information and often holds outlier activations.
        skip_first_token: also leave out the first non-special token.
    """

    pooling: str = "max"
    keep_special_tokens: bool = False
    skip_first_token: bool = False

    def __post_init__(self) -> None:
        # Checked here, where every stage gets its options, rather than failing as a
        # missing graph output of ONNX Runtime.
        if self.pooling not in POOLINGS:
            raise InputError(f"pooling must be one of {', '.join(POOLINGS)}; got {self.pooling!r}")
        for name in ("keep_special_tokens", "skip_first_token"):
            if not isinstance(value := getattr(self, name), (bool, np.bool_)):
                raise InputError(f"{name} must be True or False; got {value!r}")
            object.__setattr__(self, name, bool(value))

    def key(self) -> str:
        return f"{self.pooling}-special{int(self.keep_special_tokens)}-skipfirst{int(self.skip_first_token)}"


@dataclass(frozen=True)
class Encoded:
    """Token ids and special-token flags of each sentence, unpadded."""

    input_ids: tuple[np.ndarray, ...]
    special: tuple[np.ndarray, ...]

    def lengths(self) -> np.ndarray:
        return np.array([len(ids) for ids in self.input_ids], dtype=np.int64)


def encode(tokenizer, sentences: Sequence[str]) -> Encoded:
    """Tokenize ``sentences`` with the model's special tokens, no padding or truncation."""
    out = tokenizer(list(sentences), add_special_tokens=True, return_special_tokens_mask=True)
    return Encoded(
        tuple(np.asarray(ids, dtype=np.int64) for ids in out["input_ids"]),
        tuple(np.asarray(mask, dtype=bool) for mask in out["special_tokens_mask"]),
    )


def pad_id(tokenizer) -> int:
    """The id used for padding; models without a pad token (Llama) pad with EOS."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if token_id is not None:
            return int(token_id)
    raise AssertionError("unreachable")


def pooled_tokens(ids: np.ndarray, special: np.ndarray, options: PoolingOptions) -> np.ndarray:
    """Which of one sentence's tokens its responses are pooled over (bool ``[len(ids)]``)."""
    take = np.ones(len(ids), dtype=bool) if options.keep_special_tokens else ~special
    if options.skip_first_token:
        first = np.flatnonzero(~special)
        if len(first) > 1:
            take[first[0]] = False
    if not take.any():  # a sentence of special tokens only: pool over everything real
        take[:] = True
    return take


def pad_batch(token_ids: Sequence[np.ndarray], pooled: Sequence[np.ndarray], pad: int, past: int = 0) -> dict[str, np.ndarray]:
    """Right-padded model inputs plus ``pool_mask`` (float32) for token sequences that
    follow ``past`` tokens already run (:mod:`.heads`): ``attention_mask`` and
    ``pool_mask`` cover those too, so ``pooled[i]`` has ``past + len(token_ids[i])`` entries."""
    width = max(len(ids) for ids in token_ids)
    input_ids = np.full((len(token_ids), width), pad, dtype=np.int64)
    attention = np.zeros((len(token_ids), past + width), dtype=np.int64)
    pool = np.zeros((len(token_ids), past + width), dtype=np.float32)
    for i, (ids, take) in enumerate(zip(token_ids, pooled)):
        input_ids[i, : len(ids)] = ids
        attention[i, : past + len(ids)] = 1
        pool[i, : len(take)] = take
    positions = np.broadcast_to(np.arange(past, past + width, dtype=np.int64), (len(token_ids), width)).copy()
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "token_type_ids": np.zeros_like(input_ids),
        "position_ids": positions,
        "pool_mask": pool,
    }


def make_batch(encoded: Encoded, rows: Sequence[int], pad: int, options: PoolingOptions) -> dict[str, np.ndarray]:
    """Right-padded model inputs plus ``pool_mask`` (float32) for the given whole sentences."""
    ids = [encoded.input_ids[r] for r in rows]
    return pad_batch(ids, [pooled_tokens(encoded.input_ids[r], encoded.special[r], options) for r in rows], pad)


def length_buckets(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length (sorted, stable).

    Sorting by length keeps padding, and so wasted compute, to a minimum.
    """
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def iter_batches(
    encoded: Encoded, batch_size: int, pad: int, options: PoolingOptions
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(rows, inputs)`` for every length bucket."""
    for rows in length_buckets(encoded.lengths(), batch_size):
        yield rows, make_batch(encoded, rows, pad, options)
