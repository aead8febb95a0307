"""Pooled ONNX responses equal a PyTorch forward with hooks on the same padded batch.

Real MiniLM and a tiny random model of every registered family (built from a
config, since nothing can be downloaded): max abs diff ≤ 1e-4 in fp32, for max and
mean pooling, with and without special tokens.
"""

from __future__ import annotations

import numpy as np
import pytest

from expertlens_lite.batching import PoolingOptions, encode, make_batch, pad_id
from expertlens_lite.concepts import read_corpus
from expertlens_lite.export import export_model, load_pretrained
from expertlens_lite.export.reference import torch_responses
from expertlens_lite.export.surgery import SENTENCE_EMBEDDING, neuron_output
from expertlens_lite.models import get_architecture, supported_model_types
from expertlens_lite.models.sources import ModelSource, resolve_model
from expertlens_lite.paths import bundled
from expertlens_lite.runtime import create_session, feed_for

ATOL = 1e-4


def onnx_responses(exported, batch, pooling="max"):
    session = create_session(exported.onnx_path(), "cpu")
    names = [neuron_output(i, pooling) for i in range(exported.manifest.n_layers)] + [SENTENCE_EMBEDDING]
    out = session.run(names, feed_for(session, batch))
    return np.concatenate(out[:-1], axis=1), out[-1]


def sample_batch(tokenizer, n=12, seed=0, options=PoolingOptions()):
    corpus = read_corpus(bundled("corpus.txt"))
    rng = np.random.default_rng(seed)
    sentences = [corpus[i] for i in rng.choice(len(corpus), n, replace=False)]
    return make_batch(encode(tokenizer, sentences), range(n), pad_id(tokenizer), options)


def assert_parity(exported, source, options):
    architecture, model, tokenizer = load_pretrained(source)
    batch = sample_batch(tokenizer, options=options)
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    expected, expected_emb = torch_responses(model, architecture, batch, options.pooling)
    got, got_emb = onnx_responses(exported, batch, options.pooling)
    assert got.shape == (len(batch["input_ids"]), exported.manifest.n_neurons)
    assert np.abs(got - expected).max() <= ATOL
    assert np.abs(got_emb - expected_emb).max() <= ATOL


@pytest.mark.parametrize(
    "options", [PoolingOptions("max"), PoolingOptions("mean"), PoolingOptions("max", keep_special_tokens=True)]
)
def test_minilm_parity(minilm, elens_home, options):
    assert_parity(minilm, resolve_model("minilm", None, elens_home), options)


def _tiny(model_type: str):
    from transformers import AutoConfig

    common = {"vocab_size": 1000, "max_position_embeddings": 128}
    configs = {
        "gpt_neox": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256},
        "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 192, "n_positions": 128},
        "llama": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 160},
        "mistral": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 160},
        "qwen2": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 160},
        "opt": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 256, "word_embed_proj_dim": 64},
        "bert": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256},
        "roberta": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256, "pad_token_id": 1},
        "xlm-roberta": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256, "pad_token_id": 1},
        "electra": {"hidden_size": 64, "embedding_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256},
        "distilbert": {"dim": 64, "n_layers": 2, "n_heads": 4, "hidden_dim": 256},
        "gpt_bigcode": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 256, "n_positions": 128},
        "gptj": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 256, "rotary_dim": 8, "n_positions": 128},
        "codegen": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 256, "rotary_dim": 8, "n_positions": 128},
        "phi": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256},
        "bloom": {"hidden_size": 64, "n_layer": 2, "n_head": 4},
        "falcon": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "new_decoder_architecture": False, "multi_query": True},
        "qwen3": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 160, "head_dim": 16},
        "granite": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 160},
        "gemma": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 160, "head_dim": 16},
        "gemma2": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 160, "head_dim": 16},
        "olmo": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 160, "pad_token_id": 991},
        "olmo2": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 160, "pad_token_id": 991},
        "phi3": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 160, "pad_token_id": 991},
        "stablelm": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 160},
    }
    no_max_positions = {"gpt2", "gpt_bigcode", "gptj", "codegen", "bloom"}
    params = {**common, **configs[model_type]}
    if model_type in no_max_positions:  # their configs name it otherwise, or have none
        params.pop("max_position_embeddings")
    return AutoConfig.for_model(model_type, **params)


def tiny_source(model_type: str, folder, edit=None, bos: bool = False, config=None) -> ModelSource:
    """A tiny random model of ``model_type`` (from ``config`` if given) with a word-level
    tokenizer (words ``w0``..``w989``), saved to ``folder``; ``edit(model)`` may change its
    weights first; with ``bos`` the tokenizer starts every sentence with ``[BOS]``, as
    Llama's does."""
    import torch
    from transformers import AutoModel, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    torch.manual_seed(0)
    model = AutoModel.from_config(config or _tiny(model_type))
    if edit is not None:
        edit(model)
    model.save_pretrained(folder)
    vocab = {f"w{i}": i for i in range(990)} | {"[UNK]": 990, "[PAD]": 991, "[BOS]": 992}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 992)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]")
    tokenizer.save_pretrained(folder)
    return ModelSource(model_type, str(folder), None, f"tiny-{model_type}-{edit.__name__ if edit else 'random'}-bos{int(bos)}")


def tiny_sentences(n: int = 10, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{j}" for j in rng.integers(0, 990, size=rng.integers(2, 14))) for _ in range(n)]


@pytest.mark.parametrize("model_type", supported_model_types())
def test_tiny_random_family_parity(model_type, tmp_path, elens_home):
    """Every registered model type. A causal family's sentences start with a BOS, as
    Llama's tokenizer does, so the export's own parity check also runs the baked prefix
    through the graph's past inputs (:mod:`expertlens_lite.export.prefix`)."""
    architecture = get_architecture(model_type)
    source = tiny_source(model_type, tmp_path / model_type, bos=architecture.causal)
    exported = export_model(source, elens_home)
    assert exported.manifest.prefix_token_ids == ([992] if architecture.causal else [])
    assert exported.manifest.model_type == model_type
    architecture, model, tok = load_pretrained(source)
    sentences = tiny_sentences()
    for pooling in ("max", "mean"):
        batch = make_batch(encode(tok, sentences), range(10), pad_id(tok), PoolingOptions(pooling))
        expected, expected_emb = torch_responses(model, architecture, batch, pooling)
        got, got_emb = onnx_responses(exported, batch, pooling)
        assert np.abs(got - expected).max() <= ATOL
        assert np.abs(got_emb - expected_emb).max() <= ATOL


def test_constant_prefix_not_for_encoders_or_tokenizers_without_one(tmp_path, elens_home):
    from expertlens_lite.export.prefix import constant_prefix

    with_bos = load_pretrained(tiny_source("llama", tmp_path / "a", bos=True))[2]
    without = load_pretrained(tiny_source("llama", tmp_path / "b"))[2]
    probes = tiny_sentences(3)
    assert constant_prefix(with_bos, get_architecture("llama"), probes) == (992,)
    assert constant_prefix(without, get_architecture("llama"), probes) == ()
    assert constant_prefix(with_bos, get_architecture("bert"), probes) == ()
