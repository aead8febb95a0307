"""Sentences that start alike run their first tokens once (``expertlens_lite.heads``),
yet pool exactly what a PyTorch forward over each whole sentence pools; a run that
does not have the memory for the heads' states shares the constant prefix only; an
interrupted run resumes; quantized graphs keep the past inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from expertlens_lite import runtime
from expertlens_lite.batching import PoolingOptions, encode, make_batch, pad_id
from expertlens_lite.export import export_model, load_pretrained
from expertlens_lite.export.reference import torch_responses
from expertlens_lite.export.surgery import keep_outputs, response_outputs
from expertlens_lite.heads import HeadStates, group_heads
from expertlens_lite.models import get_architecture, supported_model_types
from expertlens_lite.runtime import (
    compute_responses,
    create_session,
    inference_session,
    plan_batches,
    pooled_batches,
    shared_heads,
)

from .test_parity import ATOL, tiny_source
from .test_runtime import count_batches_run, interrupt_after

OPTIONS = [
    PoolingOptions("max"),
    PoolingOptions("mean"),
    PoolingOptions("max", keep_special_tokens=True),
    PoolingOptions("mean", keep_special_tokens=True),
    PoolingOptions("max", skip_first_token=True),
]


def alike_sentences(n: int = 40, seed: int = 3, empty: bool = True) -> list[str]:
    """Sentences of 1 to 8 words drawn from 5, so that many share their first word, and
    with ``empty`` one that a tokenizer with a prefix turns into the prefix alone."""
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{j}" for j in rng.integers(0, 5, size=rng.integers(1, 9))) for _ in range(n)] + [""] * empty


def assert_equals_whole_forward(source, exported, sentences, options, home):
    architecture, model, tokenizer = load_pretrained(source)
    got = compute_responses(exported, sentences, home, options=options, batch_size=7, device="cpu")
    batch = make_batch(encode(tokenizer, sentences), range(len(sentences)), pad_id(tokenizer), options)
    expected, expected_embedding = torch_responses(model, architecture, batch, options.pooling)
    assert np.abs(np.asarray(got.neurons) - expected).max() <= ATOL
    assert np.abs(np.asarray(got.sentence_embeddings) - expected_embedding).max() <= ATOL


CAUSAL = [t for t in supported_model_types() if get_architecture(t).causal]


@pytest.mark.parametrize("model_type,bos", [(t, True) for t in CAUSAL] + [("llama", False)])
def test_shared_heads_pool_what_a_whole_forward_pools(model_type, bos, tmp_path, elens_home):
    """Every causal family: the heads feed back keys and values whose layout, position
    ids and attention (rotary, ALiBi, learned positions) differ between families."""
    source = tiny_source(model_type, tmp_path / model_type, bos=bos)
    exported = export_model(source, elens_home)
    assert exported.manifest.prefix_token_ids == ([992] if bos else [])
    sentences = alike_sentences(empty=bos)
    session = create_session(exported.onnx_path(), "cpu")
    encoded = encode(exported.tokenizer(), sentences)
    heads = shared_heads(session, encoded, PoolingOptions(), len(exported.manifest.prefix_token_ids))
    assert heads.length == len(exported.manifest.prefix_token_ids) + 1
    assert len(heads.first) <= 6  # 41 sentences: 5 first words, the empty one
    for options in OPTIONS:
        assert_equals_whole_forward(source, exported, sentences, options, tmp_path)


def test_a_head_differs_where_pooling_does(tmp_path):
    """With --skip-first-token a one-word sentence pools its word and a longer one does
    not: the same tokens are then two heads, or the short one would pool nothing."""
    tokenizer = load_pretrained(tiny_source("llama", tmp_path / "llama", bos=True))[2]
    encoded = encode(tokenizer, ["w1", "w1 w2", "w1 w3"])
    assert group_heads(encoded, PoolingOptions(), 2).of_sentence.tolist() == [0, 0, 0]
    assert group_heads(encoded, PoolingOptions(skip_first_token=True), 2).of_sentence.tolist() == [0, 1, 1]


def test_a_sentence_without_the_prefix_is_refused(tmp_path, elens_home):
    from expertlens_lite.errors import InputError
    from expertlens_lite.heads import check_prefix

    exported = export_model(tiny_source("llama", tmp_path / "llama", bos=True), elens_home)
    encoded = encode(exported.tokenizer(), ["w1 w2", "w3 w4"])
    check_prefix(encoded, exported.prefix())
    encoded.input_ids[1][0] = 5
    with pytest.raises(InputError, match=r"start with the tokens \[992\]"):
        check_prefix(encoded, exported.prefix())


def test_without_memory_for_the_heads_only_the_prefix_is_shared(tmp_path, elens_home, monkeypatch):
    source = tiny_source("llama", tmp_path / "llama", bos=True)
    exported = export_model(source, elens_home)
    session = create_session(exported.onnx_path(), "cpu")
    encoded = encode(exported.tokenizer(), alike_sentences())
    heads = len(group_heads(encoded, PoolingOptions(), 2).first)
    monkeypatch.setattr(runtime, "HEADS_MEMORY", heads * HeadStates.bytes_per_head(session, 2) - 1)
    assert shared_heads(session, encoded, PoolingOptions(), 1).length == 1
    assert_equals_whole_forward(source, exported, alike_sentences(), PoolingOptions(), tmp_path)


def test_interrupted_run_with_heads_resumes(tmp_path, elens_home, monkeypatch):
    """The heads run again (their states are not saved), the finished batches after them do not."""
    exported = export_model(tiny_source("llama", tmp_path / "llama", bos=True), elens_home)
    sentences = alike_sentences()
    interrupt_after(exported, sentences, tmp_path, 5)
    ran = count_batches_run(monkeypatch)
    progress = {"resumed": [], "fresh": []}
    resumed = compute_responses(exported, sentences, tmp_path, batch_size=4, device="cpu", progress=lambda d, t: progress["resumed"].append(d))
    resumed_ran = len(ran)
    fresh = compute_responses(exported, sentences, tmp_path / "fresh", batch_size=4, device="cpu", progress=lambda d, t: progress["fresh"].append(d))
    # 5 heads in 2 batches, then the prefix alone (the empty sentence), then the rests
    assert resumed_ran == len(ran) - resumed_ran - 3
    assert progress["resumed"] == progress["fresh"] and progress["fresh"][-1] == len(sentences)
    np.testing.assert_array_equal(np.asarray(resumed.neurons), np.asarray(fresh.neurons))


@pytest.mark.parametrize("quantize", ["int8", "fp16"])
def test_quantized_variants_keep_the_past_inputs(quantize, tmp_path, elens_home):
    """Quantization rewrites the graph; the past inputs and the outputs a head's run
    leaves must survive it, and the heads must still be shared."""
    exported = export_model(tiny_source("llama", tmp_path / "llama", bos=True), elens_home, quantize)
    session = create_session(exported.onnx_path(quantize), "cpu")
    assert {"past_key_values.0.key", "past_neurons.0", "past_hidden"} <= {i.name for i in session.get_inputs()}
    assert {"present.0.key", "token_neurons.0", "token_hidden"} <= {o.name for o in session.get_outputs()}
    sentences = alike_sentences()
    got = compute_responses(exported, sentences, tmp_path, quantize=quantize, batch_size=7, device="cpu")
    reference = compute_responses(exported, sentences, tmp_path, batch_size=7, device="cpu")
    assert np.corrcoef(np.ravel(got.neurons), np.ravel(reference.neurons))[0, 1] > 0.99


@pytest.mark.parametrize("pooling,other", [("max", "mean"), ("mean", "max")])
def test_a_run_computes_only_the_outputs_it_reads(pooling, other, tmp_path, elens_home):
    """ONNX Runtime runs every node of a graph whichever outputs are asked for, so a
    run's session keeps only its own: the other pooling's nodes are gone, the outputs a
    head's run leaves stay (as the graph's own tensors, not copies), and the result is
    bit-identical to the whole graph's."""
    exported = export_model(tiny_source("llama", tmp_path / "llama", bos=True), elens_home)
    names = response_outputs(exported.manifest.n_layers, pooling)
    model = onnx.load(exported.onnx_path())
    assert not any(node.op_type == "Identity" and node.output[0].startswith("token_") for node in model.graph.node)
    keep_outputs(model, set(names).__contains__)
    assert [o.name for o in model.graph.output] == names
    other_nodes = {"mean": ("_masked", "_sum", "_mean"), "max": ("_where", "_max")}[other]  # per layer, /elens/l{i}...
    layer_nodes = [node.name for node in model.graph.node if node.name.startswith("/elens/l")]
    assert layer_nodes and not [name for name in layer_nodes if name.endswith(other_nodes)]
    pruned = inference_session(exported.onnx_path(), "cpu", 1, names)
    kept = {o.name for o in pruned.get_outputs()}
    assert set(names) <= kept and not any(name.endswith(f".{other}") for name in kept)
    assert {"present.0.key", "token_neurons.0", "token_hidden"} <= kept
    encoded = encode(exported.tokenizer(), alike_sentences())
    pad = pad_id(exported.tokenizer())

    def run(session) -> list[np.ndarray]:
        return [o for _, outputs in pooled_batches(session, names, encoded, plan_batches(session, encoded, PoolingOptions(pooling), 7, exported.prefix()), PoolingOptions(pooling), pad, "cpu", 1, exported.prefix()) for o in outputs]

    for got, want in zip(run(pruned), run(create_session(exported.onnx_path(), "cpu")), strict=True):
        np.testing.assert_array_equal(got, want)
