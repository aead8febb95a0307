"""Per-token int8 down-projections: right outlier channels, close to fp32 where
ORT's per-tensor scale is not, and wired into the int8 export."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from expertlens_lite.export import export_model
from expertlens_lite.export.per_token import outlier_channels, quantize_per_token
from expertlens_lite.export.quantize import FP32_DOWN_FRACTION
from expertlens_lite.models import get_architecture
from expertlens_lite.runtime import create_session

from .test_parity import tiny_source


def test_outlier_channels_are_the_largest_above_the_factor():
    maxima = np.ones(100)
    maxima[[7, 3, 50]] = [9.0, 100.0, 20.0]
    maxima[60] = 7.9  # under 8 x the median
    assert outlier_channels(maxima).tolist() == [3, 7, 50]
    assert outlier_channels(maxima, limit=2).tolist() == [3, 50]
    assert outlier_channels(np.ones(10)).size == 0


def _matmul_model(weight: np.ndarray) -> onnx.ModelProto:
    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/down/MatMul")],
        "down",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", n])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _heavy_tailed(rng, shape=(4, 12, 256)):
    """Neuron-like input: one channel 500x the rest everywhere, one token 300x in every channel."""
    x = rng.standard_normal(shape).astype(np.float32)
    x[..., 17] *= 500
    x[1, 0] *= 300
    return x


def _run(model: onnx.ModelProto, x: np.ndarray, tmp_path, name: str) -> np.ndarray:
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return create_session(path, "cpu").run(["y"], {"x": x})[0]


def _relative_error(got, want, rows):
    """Error of the ordinary tokens (all but the massive one), relative to their scale."""
    mask = np.ones(want.shape[:2], bool)
    mask[rows] = False
    return np.abs(got - want)[mask].mean() / np.abs(want[mask]).mean()


def test_per_token_int8_stays_close_where_per_tensor_does_not(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((256, 64)).astype(np.float32) / 16
    x = _heavy_tailed(rng)
    want = x @ weight
    maxima = np.abs(_heavy_tailed(np.random.default_rng(1))).reshape(-1, 256).max(axis=0)

    per_token = _matmul_model(weight)
    added = quantize_per_token(per_token, ["/down/MatMul"], {"x": maxima})
    assert added == ["/down/MatMul/outliers/MatMul"]
    assert {node.op_type for node in per_token.graph.node} >= {"QuantizeLinear", "MatMulIntegerToFloat", "Gather"}
    assert [init.name for init in per_token.graph.initializer if init.name == "w"] == []  # the fp32 weight is gone
    no_outliers = _matmul_model(weight)
    quantize_per_token(no_outliers, ["/down/MatMul"], {})
    onnx.save(_matmul_model(weight), tmp_path / "fp32.onnx")
    quantize_dynamic(tmp_path / "fp32.onnx", tmp_path / "per_tensor.onnx", weight_type=QuantType.QInt8, per_channel=True)
    per_tensor = create_session(tmp_path / "per_tensor.onnx", "cpu").run(["y"], {"x": x})[0]

    errors = {
        "per_token_outliers": _relative_error(_run(per_token, x, tmp_path, "a"), want, (1, 0)),
        "per_token": _relative_error(_run(no_outliers, x, tmp_path, "b"), want, (1, 0)),
        "per_tensor": _relative_error(per_tensor, want, (1, 0)),
    }
    # Measured: per-token with the outlier channel in fp32 0.0004, per-token alone 0.026,
    # ORT per-tensor 0.43; the massive token itself 0.0003 per-token with outliers.
    assert errors["per_token_outliers"] < 0.002
    assert errors["per_token_outliers"] * 20 < errors["per_token"] < errors["per_tensor"] / 5
    massive = _run(per_token, x, tmp_path, "a")[1, 0]
    assert np.abs(massive - want[1, 0]).mean() / np.abs(want[1, 0]).mean() < 0.002


def test_a_row_of_zeros_quantizes_to_zeros(tmp_path):
    weight = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    model = _matmul_model(weight)
    quantize_per_token(model, ["/down/MatMul"], {})
    x = np.zeros((2, 3, 32), np.float32)
    x[1, 2] = 1.0
    got = _run(model, x, tmp_path, "zeros")
    assert np.isfinite(got).all()
    assert np.array_equal(got[0], np.zeros((3, 8), np.float32))


@pytest.mark.parametrize("model_type", ["llama", "bert"])
def test_int8_export_quantizes_the_later_down_projections_per_token(model_type, tmp_path, elens_home):
    """Causal models: all but the first FP32_DOWN_FRACTION of the layers; encoders: none."""
    exported = export_model(tiny_source(model_type, tmp_path / model_type), elens_home, "int8")
    architecture = get_architecture(exported.manifest.model_type)
    n_layers = exported.manifest.n_layers
    graph = onnx.load(exported.onnx_path("int8"), load_external_data=False).graph
    n_fp32 = int(np.ceil(FP32_DOWN_FRACTION * n_layers)) if architecture.causal else n_layers
    for layer in range(n_layers):
        ops = {node.op_type for node in graph.node if node.name.startswith(architecture.onnx_scope(layer))}
        assert ("MatMulIntegerToFloat" in ops) == (layer >= n_fp32), (layer, ops)
        assert ("MatMul" in ops) == (layer < n_fp32 or "Gather" in ops), (layer, ops)  # fp32: itself, or its outlier channels
