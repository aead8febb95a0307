"""The model families expertlens-lite knows, one declarative entry each."""

from __future__ import annotations

from .registry import Architecture, register

BERT = register(Architecture("bert", ("bert", "roberta", "xlm-roberta"), "encoder.layer.{layer}.output.dense", causal=False))
GPT_NEOX = register(Architecture("gpt_neox", ("gpt_neox",), "layers.{layer}.mlp.dense_4h_to_h", causal=True))
GPT2 = register(Architecture("gpt2", ("gpt2",), "h.{layer}.mlp.c_proj", causal=True))
LLAMA = register(Architecture("llama", ("llama", "mistral", "qwen2"), "layers.{layer}.mlp.down_proj", causal=True))
# Optimum's with-past export of OPT traces a causal mask one column wider than its keys.
OPT = register(Architecture("opt", ("opt",), "decoder.layers.{layer}.fc2", causal=True, takes_past=False))
