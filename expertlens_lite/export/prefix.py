"""The constant special tokens a causal model's tokenizer puts before every sentence.

A Llama-style tokenizer starts every sentence with BOS. In a causal model nothing
at that position can see the sentence, so its keys and values, its neurons and its
last hidden state are the same constants in every sentence of every run. The export
computes them once, with PyTorch, and saves them (``prefix.npz``, by the name of the
graph input that takes each one); every run then starts every sentence after them,
and the sentences that go on alike share their next token too (:mod:`expertlens_lite.heads`).

Why PyTorch rather than the ONNX graph: SmolLM2's BOS holds activations in the
thousands, and float rounding there reaches every later token through attention;
taking the prefix from the reference keeps the graph's difference from it at what
the tokens after the prefix add (on 80 corpus sentences, scaled by max(1, |x|):
7.9e-5 with the prefix from PyTorch, 1.01e-4 with the graph computing it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..models import Architecture
from .reference import torch_activations
from .surgery import PAST_HIDDEN, PAST_INPUT, past_neurons

PREFIX_STATES = "prefix.npz"


@dataclass(frozen=True)
class Prefix:
    """The constant tokens every sentence starts with, and what they leave for later
    tokens by the graph input that takes it: ``past_key_values.*``
    ``[1, kv_heads, len(token_ids), head_dim]``, ``past_neurons.*`` ``[1, len(token_ids), d_mlp]``,
    ``past_hidden`` ``[1, len(token_ids), hidden]`` (empty when there is no prefix)."""

    token_ids: tuple[int, ...] = ()
    states: dict[str, np.ndarray] = field(default_factory=dict)


def constant_prefix(tokenizer, architecture: Architecture, probes: Sequence[str]) -> tuple[int, ...]:
    """The leading special tokens that the tokenizer puts before every one of ``probes``
    (empty for encoders, whose every token sees the whole sentence)."""
    if not architecture.causal:
        return ()
    encoded = tokenizer(list(probes), add_special_tokens=True, return_special_tokens_mask=True)
    prefix: list[int] = []
    for ids, special in zip(zip(*encoded["input_ids"]), zip(*encoded["special_tokens_mask"])):  # position by position
        if len(set(ids)) != 1 or not all(special):
            break
        prefix.append(ids[0])
    return tuple(prefix)


def compute_prefix(model, architecture: Architecture, token_ids: tuple[int, ...]) -> Prefix:
    """Run the prefix alone through the PyTorch model and keep what later tokens read."""
    n = len(token_ids)
    batch = {
        "input_ids": np.array([token_ids], dtype=np.int64),
        "attention_mask": np.ones((1, n), dtype=np.int64),
        "position_ids": np.arange(n, dtype=np.int64)[None],
    }
    neurons, hidden, cache = torch_activations(model, architecture, batch, use_cache=True)
    legacy = cache.to_legacy_cache() if hasattr(cache, "to_legacy_cache") else cache
    states = {PAST_HIDDEN: hidden.astype(np.float32)}
    for layer, (key, value, *_) in enumerate(legacy):  # GPT-BigCode adds (empty) cross-attention entries
        states[f"{PAST_INPUT}{layer}.key"] = key.float().numpy()
        states[f"{PAST_INPUT}{layer}.value"] = value.float().numpy()
        states[past_neurons(layer)] = neurons[layer].astype(np.float32)
    return Prefix(token_ids, states)


def save_prefix(directory: Path, prefix: Prefix) -> None:
    """Save the states (the token ids go into the manifest)."""
    np.savez(directory / PREFIX_STATES, **prefix.states)


def load_prefix(directory: Path, token_ids: Sequence[int]) -> Prefix:
    """The prefix :func:`save_prefix` saved in an export folder (empty if none)."""
    path = directory / PREFIX_STATES
    if not path.exists():
        return Prefix()
    with np.load(path) as saved:
        return Prefix(tuple(token_ids), {name: saved[name] for name in saved.files})


__all__ = ["PREFIX_STATES", "Prefix", "compute_prefix", "constant_prefix", "load_prefix", "save_prefix"]
