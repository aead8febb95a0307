"""Compute a causal model's constant first tokens once, at export, instead of in every sentence.

A Llama-style tokenizer starts every sentence with the same special token (BOS;
OPT's tokenizer does the same). In a causal model nothing at that position can
see the sentence, so its keys and values, its neurons and its last hidden state
are the same constants in every sentence of every run. The export computes them
once with PyTorch and bakes them into the graph:

- the graph is exported *with past* (Optimum's ``use_past_in_inputs``), and each
  ``past_key_values.{i}.key/value`` input becomes a constant broadcast over the
  batch, so the model runs on the tokens after the prefix only, with
  ``attention_mask`` and ``pool_mask`` still covering the prefix;
- the prefix's neurons and hidden state join the pooling as constants (see
  :func:`.surgery.add_pooled_outputs`), so ``--keep-special-tokens`` still pools
  over them.

This is exact up to float rounding (the export's parity check compares the result
with a PyTorch forward over the whole sentence) and on SmolLM2, whose sentences
average 14.4 tokens, it removes one token in 14 from every forward pass. The
token ids are written into the ONNX file's metadata, so whoever runs it
(:func:`expertlens_lite.runtime.feed_for`) knows to strip them from the batch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelError
from ..models import Architecture
from .reference import torch_activations

METADATA_KEY = "expertlens.prefix_token_ids"
PAST_INPUT = "past_key_values."


@dataclass(frozen=True)
class Prefix:
    """What a causal model computes at the constant tokens every sentence starts with.

    Attributes:
        token_ids: the prefix (usually just BOS).
        past: per layer, the key and value cache ``[1, kv_heads, len(token_ids), head_dim]``.
        neurons: per layer, the neuron activations ``[len(token_ids), d_mlp]``.
        hidden: the last hidden state ``[len(token_ids), hidden]``.
    """

    token_ids: tuple[int, ...]
    past: list[tuple[np.ndarray, np.ndarray]]
    neurons: list[np.ndarray]
    hidden: np.ndarray


def constant_prefix(tokenizer, architecture: Architecture, probes: Sequence[str]) -> tuple[int, ...]:
    """The leading special tokens that the tokenizer puts before every one of ``probes``
    (empty for encoders, whose every token sees the whole sentence, and for families
    that cannot take it as past keys and values)."""
    if not (architecture.causal and architecture.prefix_as_past):
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
    past = [(k.float().numpy(), v.float().numpy()) for k, v in legacy]
    return Prefix(token_ids, past, [x[0] for x in neurons], hidden[0])


def bake_prefix(model: onnx.ModelProto, prefix: Prefix) -> None:
    """Replace the graph's ``past_key_values`` inputs by ``prefix.past``, broadcast over the
    batch, and record the prefix's token ids in the model's metadata (in place)."""
    graph = model.graph
    past_inputs = [i for i in graph.input if i.name.startswith(PAST_INPUT)]
    if len(past_inputs) != 2 * len(prefix.past):
        raise ModelError(
            f"the with-past export has {len(past_inputs)} past key/value inputs for {len(prefix.past)} cached layers; "
            "set prefix_as_past=False in this family's Architecture entry"
        )
    rank = prefix.past[0][0].ndim
    nodes = [
        helper.make_node("Shape", ["input_ids"], ["/elens/prefix/batch"], name="/elens/prefix/batch", start=0, end=1),
        helper.make_node(
            "Concat", ["/elens/prefix/batch", "/elens/prefix/ones"], ["/elens/prefix/shape"], name="/elens/prefix/shape", axis=0
        ),
    ]
    graph.initializer.append(numpy_helper.from_array(np.ones(rank - 1, dtype=np.int64), "/elens/prefix/ones"))
    for layer, pair in enumerate(prefix.past):
        for kind, array in zip(("key", "value"), pair):
            name = f"{PAST_INPUT}{layer}.{kind}"
            graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), f"/elens/prefix/{name}"))
            nodes.append(helper.make_node("Expand", [f"/elens/prefix/{name}", "/elens/prefix/shape"], [name], name=f"/elens/prefix/{name}"))
    for graph_input in past_inputs:
        graph.input.remove(graph_input)
    for node in reversed(nodes):
        graph.node.insert(0, node)
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, METADATA_KEY: json.dumps(list(prefix.token_ids))})


def baked_prefix(metadata: dict[str, str]) -> tuple[int, ...]:
    """The prefix token ids recorded in an ONNX model's metadata (empty if none)."""
    return tuple(json.loads(metadata.get(METADATA_KEY, "[]")))


__all__ = ["METADATA_KEY", "Prefix", "bake_prefix", "baked_prefix", "compute_prefix", "constant_prefix"]
