"""SmoothQuant folding for int8: exact in fp32, only where it is exact, and it helps int8."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from expertlens_lite.batching import PoolingOptions, encode, make_batch, pad_id
from expertlens_lite.export import export_model, load_pretrained
from expertlens_lite.export.quantize import quantize_model, uses_external_data
from expertlens_lite.export.smoothing import channel_maxima, find_groups, smooth
from expertlens_lite.export.surgery import neuron_output
from expertlens_lite.models import get_architecture
from expertlens_lite.runtime import create_session, feed_for

from .test_parity import tiny_source, tiny_sentences


def _batch(source, seed=1):
    _, _, tokenizer = load_pretrained(source)
    sentences = tiny_sentences(16, seed)
    return make_batch(encode(tokenizer, sentences), range(len(sentences)), pad_id(tokenizer), PoolingOptions())


def _neurons(path, n_layers, batch):
    session = create_session(path, "cpu")
    return np.concatenate(session.run([neuron_output(i, "max") for i in range(n_layers)], feed_for(session, batch)), axis=1)


# Pre-norm blocks: each normalization feeds only its MatMuls (attention input, MLP input);
# OPT reshapes the MLP input to 2-D first, so only its attention input folds. Post-norm
# BERT: the normalized tensor is also the residual, so nothing folds. GPT-2's projections
# export as Gemm, which int8 does not quantize (MatMul only), so none either.
@pytest.mark.parametrize("model_type, per_layer", [("llama", 2), ("gpt_neox", 2), ("opt", 1), ("bert", 0), ("gpt2", 0)])
def test_groups_only_where_the_fold_is_exact(model_type, per_layer, tmp_path, elens_home):
    exported = export_model(tiny_source(model_type, tmp_path / model_type), elens_home)
    graph = onnx.load(exported.onnx_path(), load_external_data=False).graph
    assert len(find_groups(graph)) == per_layer * exported.manifest.n_layers


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox", "opt"])
def test_smoothing_keeps_the_fp32_function(model_type, tmp_path, elens_home):
    source = tiny_source(model_type, tmp_path / model_type)
    exported = export_model(source, elens_home)
    batch = _batch(source)
    model = onnx.load(exported.onnx_path())
    groups = find_groups(model.graph)
    before = {init.name: onnx.numpy_helper.to_array(init).copy() for init in model.graph.initializer}
    smooth(model, groups, channel_maxima(exported.onnx_path(), [g.activation for g in groups], [batch]))
    changed = [i.name for i in model.graph.initializer
               if i.name in before and not np.array_equal(onnx.numpy_helper.to_array(i), before[i.name])]
    assert set(changed) == {name for g in groups for name in g.weights}
    assert all(model.graph.node[[n.name for n in model.graph.node].index(g.node)].input[i].endswith(f"smoothquant.{i}") for g in groups for i in g.scale_inputs)
    smoothed = tmp_path / "smoothed.onnx"
    onnx.save(model, smoothed)
    n_layers = exported.manifest.n_layers
    fp32, got = _neurons(exported.onnx_path(), n_layers, batch), _neurons(smoothed, n_layers, batch)
    assert np.abs(got - fp32).max() / np.abs(fp32).max() <= 1e-5


def _outlier_channels(model) -> None:
    """Same function, but input channel 3 of every attention and MLP projection runs
    200x larger (the norm's scale up, the weight rows that read it down), as LLMs'
    outlier channels do."""
    import torch

    with torch.no_grad():
        for layer in model.layers:
            for norm, projs in ((layer.input_layernorm, [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]),
                                (layer.post_attention_layernorm, [layer.mlp.gate_proj, layer.mlp.up_proj])):
                norm.weight[3] *= 200
                for proj in projs:
                    proj.weight[:, 3] /= 200


def test_smoothing_rescues_int8_from_an_outlier_channel(tmp_path, elens_home):
    source = tiny_source("llama", tmp_path / "llama", edit=_outlier_channels)
    exported = export_model(source, elens_home)
    n_layers = exported.manifest.n_layers
    down = [get_architecture("llama").onnx_scope(i) for i in range(n_layers)]
    calibration, test = _batch(source, seed=1), _batch(source, seed=2)
    fp32 = _neurons(exported.onnx_path(), n_layers, test)
    errors = {}
    for smoothed in (False, True):
        path = quantize_model(exported.onnx_path(), "int8", down, [calibration] if smoothed else [])
        errors[smoothed] = np.abs(_neurons(path, n_layers, test) - fp32).mean()
    # Measured: mean |int8 - fp32| 0.011 plain, 0.00026 smoothed.
    assert errors[True] < errors[False] / 3


def test_smoothing_with_external_data(tmp_path, elens_home):
    """Weights in an external file (models over 2 GB): the probe and the smoothed copy
    find them, and the int8 variant keeps its weights external too."""
    source = tiny_source("llama", tmp_path / "llama", edit=_outlier_channels)
    exported = export_model(source, elens_home)
    path = tmp_path / "external" / "model.onnx"
    path.parent.mkdir()
    onnx.save(onnx.load(exported.onnx_path()), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx_data")  # onnx's default threshold: tensors over 1 KiB
    assert uses_external_data(path)
    n_layers = exported.manifest.n_layers
    down = [get_architecture("llama").onnx_scope(i) for i in range(n_layers)]
    calibration, test = _batch(source, seed=1), _batch(source, seed=2)
    int8 = quantize_model(path, "int8", down, [calibration])
    assert uses_external_data(int8)
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(["model.onnx", "model.onnx_data", int8.name, f"{int8.name}.data"])
    fp32 = _neurons(exported.onnx_path(), n_layers, test)
    assert np.abs(_neurons(int8, n_layers, test) - fp32).mean() < 0.003  # plain int8: 0.011 (above)
