"""The model families expertlens-lite knows, one declarative entry each.

Every entry is checked by an export of a tiny random model of each of its model
types against a PyTorch forward (``tests/test_parity.py``).
"""

from __future__ import annotations

from .registry import Architecture, register

# Encoders.
BERT = register(Architecture("bert", ("bert", "roberta", "xlm-roberta", "electra"), "encoder.layer.{layer}.output.dense", causal=False))
DISTILBERT = register(Architecture("distilbert", ("distilbert",), "transformer.layer.{layer}.ffn.lin2", causal=False))

# Decoders with a plain MLP (up, activation, down).
GPT_NEOX = register(Architecture("gpt_neox", ("gpt_neox",), "layers.{layer}.mlp.dense_4h_to_h", causal=True))
GPT2 = register(Architecture("gpt2", ("gpt2",), "h.{layer}.mlp.c_proj", causal=True))
GPT_BIGCODE = register(Architecture("gpt_bigcode", ("gpt_bigcode",), "h.{layer}.mlp.c_proj", causal=True))
GPTJ = register(Architecture("gptj", ("gptj", "codegen"), "h.{layer}.mlp.fc_out", causal=True))
OPT = register(Architecture("opt", ("opt",), "decoder.layers.{layer}.fc2", causal=True))
PHI = register(Architecture("phi", ("phi",), "layers.{layer}.mlp.fc2", causal=True))
BLOOM = register(Architecture("bloom", ("bloom",), "h.{layer}.mlp.dense_4h_to_h", causal=True))
FALCON = register(Architecture("falcon", ("falcon",), "h.{layer}.mlp.dense_4h_to_h", causal=True))

# Decoders with a gated MLP: the neuron is act(gate) * up, the input of down_proj.
LLAMA = register(Architecture("llama", ("llama", "mistral", "qwen2", "qwen3", "granite"), "layers.{layer}.mlp.down_proj", causal=True))
GEMMA = register(Architecture("gemma", ("gemma", "gemma2"), "layers.{layer}.mlp.down_proj", causal=True))
OLMO = register(Architecture("olmo", ("olmo", "olmo2"), "layers.{layer}.mlp.down_proj", causal=True))
PHI3 = register(Architecture("phi3", ("phi3",), "layers.{layer}.mlp.down_proj", causal=True))
STABLELM = register(Architecture("stablelm", ("stablelm",), "layers.{layer}.mlp.down_proj", causal=True))
