"""Big models (weights as ONNX external data) and the CUDA provider (skipped without one)."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from expertlens_lite.batching import PoolingOptions, encode, make_batch, pad_id
from expertlens_lite.devices import CUDA, cuda_available, onnxruntime_module, resolve_device
from expertlens_lite.errors import InputError
from expertlens_lite.export import export_model, load_pretrained
from expertlens_lite.export.exporter import prepare_graph
from expertlens_lite.export.quantize import onnx_sha256, quantize_model, uses_external_data
from expertlens_lite.export.reference import torch_responses
from expertlens_lite.export.surgery import neuron_output
from expertlens_lite.models import get_architecture, supported_model_types
from expertlens_lite.models.sources import ModelSource, resolve_model
from expertlens_lite.runtime import compute_responses, create_session, feed_for, inference_session, run_bound

from .test_parity import ATOL, tiny_sentences, tiny_source


def test_external_data_survives_surgery_and_quantization(tmp_path, elens_home):
    """A model whose weights live in an external file (as Optimum saves models over
    2 GB) gets its pooled outputs without loading the weights, and quantizes."""
    from optimum.exporters.onnx import onnx_export_from_model

    source = resolve_model("minilm", None, elens_home)
    architecture, model, tokenizer = load_pretrained(source)
    onnx_export_from_model(model, tmp_path, task="feature-extraction", do_validation=False)
    path = tmp_path / "model.onnx"
    onnx.save(onnx.load(path), path, save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx_data", size_threshold=0)
    assert uses_external_data(path) and path.stat().st_size < 2_000_000  # the graph only
    n_layers = model.config.num_hidden_layers
    prepare_graph(path, [architecture.onnx_scope(i) for i in range(n_layers)], [1536] * n_layers)
    assert uses_external_data(path)

    batch = make_batch(encode(tokenizer, ["Birds sing at dawn.", "Soup."]), [0, 1], pad_id(tokenizer), PoolingOptions())
    expected, _ = torch_responses(model, architecture, batch)
    session = create_session(path)
    names = [neuron_output(i, "max") for i in range(n_layers)]
    got = np.concatenate(session.run(names, feed_for(session, batch)), axis=1)
    assert np.abs(got - expected).max() <= ATOL
    pruned = create_session(path, keep=set(names).__contains__)  # the graph from memory, the weights from their file
    np.testing.assert_array_equal(np.concatenate(pruned.run(names, feed_for(pruned, batch)), axis=1), got)
    int8 = quantize_model(path, "int8", [architecture.onnx_scope(i) for i in range(n_layers)])
    assert uses_external_data(int8)
    session = create_session(int8)
    got8 = np.concatenate(session.run([neuron_output(i, "max") for i in range(n_layers)], feed_for(session, batch)), axis=1)
    assert np.corrcoef(got8.ravel(), expected.ravel())[0, 1] > 0.98


def test_every_export_keeps_its_weights_beside_the_graph_and_hashes_both(minilm, tmp_path):
    """Weights live in an external file whatever the model's size (a run's session then
    loads a cut-down graph of a few MB, :func:`keep_outputs`), and the manifest's hash
    of an ONNX file covers its weights, so responses cached for other weights are not reused."""
    path = minilm.onnx_path()
    assert uses_external_data(path) and path.stat().st_size < 2_000_000
    assert minilm.manifest.files["model.onnx"] == onnx_sha256(path)
    copy = tmp_path / "copy"
    shutil.copytree(minilm.directory, copy)
    with (copy / "model.onnx_data").open("r+b") as data:  # one bit of the last weight
        data.seek(-1, 2)
        last = data.read(1)[0]
        data.seek(-1, 2)
        data.write(bytes([last ^ 1]))
    assert onnx_sha256(copy / "model.onnx") != onnx_sha256(path)


@pytest.mark.parametrize("quantize", ["int8", "fp16"])
def test_quantized_variants_keep_neurons_exposed_and_close(minilm, quantize, tmp_path):
    exported = export_model(ModelSource("minilm", "", None, minilm.manifest.fingerprint), minilm.directory.parent.parent, quantize)
    assert exported.directory == minilm.directory and exported.onnx_path(quantize).exists()
    outputs = {o.name for o in onnx.load(exported.onnx_path(quantize), load_external_data=False).graph.output}
    assert {neuron_output(i, "max") for i in range(6)} <= outputs
    sentences = ["Birds sing at dawn.", "The soup was far too salty.", "A red kitchen door."]
    fp32 = np.asarray(compute_responses(exported, sentences, tmp_path, device="cpu").neurons)
    quant = np.asarray(compute_responses(exported, sentences, tmp_path, device="cpu", quantize=quantize).neurons)
    assert quant.shape == fp32.shape
    # Measured: per-channel int8 0.989 (down-projections quantized too), fp16 > 0.9999;
    # per-tensor int8 would give 0.956.
    assert np.corrcoef(quant.ravel(), fp32.ravel())[0, 1] > {"int8": 0.98, "fp16": 0.999}[quantize]


needs_cuda = pytest.mark.skipif(not cuda_available(), reason="needs onnxruntime-gpu, its CUDA libraries and an NVIDIA GPU")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("quantize", ["none", "fp16"])
def test_cuda_matches_cpu(minilm, elens_home, tmp_path, quantize):
    sentences = ["Birds sing at dawn.", "The soup was far too salty.", "A red kitchen door."]
    cpu = np.asarray(compute_responses(minilm, sentences, tmp_path, device="cpu").neurons)
    exported = export_model(resolve_model("minilm", None, elens_home), elens_home, quantize)  # adds the variant
    gpu = np.asarray(compute_responses(exported, sentences, tmp_path / "gpu", device="cuda", quantize=quantize).neurons)
    assert np.abs(gpu - cpu).max() <= (ATOL if quantize == "none" else 2e-2)


def test_a_cuda_provider_that_does_not_start_is_not_used(monkeypatch):
    """The onnxruntime-gpu build lists CUDA among its providers also where CUDA cannot
    start (no GPU, no CUDA libraries): there ``auto`` must run on the CPU and ``cuda``
    be a clear error. The CPU build is made to list CUDA here, as that build does."""
    if cuda_available():
        pytest.skip("CUDA starts on this machine")
    ort = onnxruntime_module()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, "CPUExecutionProvider"])
    cuda_available.cache_clear()
    try:
        assert resolve_device("auto") == "cpu"
        with pytest.raises(InputError, match="CUDA provider does not start here"):
            resolve_device("cuda")
    finally:
        cuda_available.cache_clear()


@pytest.mark.parametrize("model_type", supported_model_types())
def test_int8_keeps_every_family_close(model_type, tmp_path, elens_home):
    """SmoothQuant folding and per-token down-projections rewrite graph patterns that
    differ between families; on a tiny random model of each, int8 responses must still
    follow fp32 (the bundled models' expert-set quality is in BENCHMARKS.md)."""
    architecture = get_architecture(model_type)
    source = tiny_source(model_type, tmp_path / model_type, bos=architecture.causal)
    sentences = tiny_sentences(40, seed=3)
    fp32, quant = (
        np.asarray(compute_responses(export_model(source, elens_home, q), sentences, tmp_path, quantize=q, device="cpu").neurons)
        for q in ("none", "int8")
    )
    assert np.corrcoef(quant.ravel(), fp32.ravel())[0, 1] > 0.98


def test_the_io_binding_path_that_cuda_runs_gives_the_same_outputs(tmp_path, elens_home):
    """CUDA runs batches through I/O binding (:func:`run_bound`); bound to the CPU, the
    same code must give what ``session.run`` gives, output for output, on a graph that
    takes past inputs (a causal family with a BOS)."""
    exported = export_model(tiny_source("llama", tmp_path / "llama", bos=True), elens_home)
    tokenizer = exported.tokenizer()
    names = [neuron_output(i, "max") for i in range(exported.manifest.n_layers)]
    session = inference_session(exported.onnx_path(), "cpu", 1, names)
    batch = make_batch(encode(tokenizer, tiny_sentences()), range(10), pad_id(tokenizer), PoolingOptions())
    expected = session.run(names, feed_for(session, batch))
    got = run_bound(session, names, batch, "cpu")
    assert len(got) == len(names)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)
