"""The int8 variant's weight type follows the CPU: uint8 where ORT's int8 products
saturate (x86 without VNNI), int8 elsewhere; both are exact integer products, and an
export folder with the other type is used, with a warning."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest

from expertlens_lite.errors import ModelError
from expertlens_lite.export import export_model
from expertlens_lite.export.per_token import quantize_per_token
from expertlens_lite.export.quantize import (
    int8_weights,
    int8_weights_for,
    onnx_filename,
)

from .test_parity import tiny_source
from .test_per_token import _matmul_model, _run


@pytest.mark.parametrize(
    ("machine", "flags", "weights"),
    [
        ("x86_64", {"avx2", "fma"}, "u8"),  # AVX2 only (Zen 2, Haswell): VPMADDUBSW saturates
        ("x86_64", {"avx2", "avx512f", "avx512bw"}, "u8"),  # AVX-512 without VNNI (Skylake-X) too
        ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, "s8"),
        ("AMD64", {"avx2", "avx_vnni"}, "s8"),
        ("x86_64", None, "u8"),  # flags unknown: the type that is exact everywhere
        ("aarch64", None, "s8"),
        ("arm64", set(), "s8"),
    ],
)
def test_int8_weights_follow_the_cpu(machine, flags, weights):
    assert int8_weights_for(machine, flags) == weights


def _worst_case(k: int = 64, n: int = 8):
    """Weights and inputs at the top of their int8 range, with the same sign, so that
    every pair of products is 255 x 127 x 2 > 32,767: where VPMADDUBSW multiplies them,
    its int16 sums saturate."""
    weight = np.ones((k, n), np.float32)
    x = np.ones((2, 3, k), np.float32)
    return weight, x


@pytest.mark.parametrize("unsigned_weights", [True, False])
def test_per_token_int8_products_are_exact_with_the_weights_this_cpu_gets(unsigned_weights, tmp_path):
    """uint8 weights are exact on every CPU; int8 weights only where this CPU gets them."""
    if not unsigned_weights and int8_weights() == "u8":
        pytest.skip("this CPU's int8 products saturate: it gets uint8 weights")
    weight, x = _worst_case()
    model = _matmul_model(weight)
    quantize_per_token(model, ["/down/MatMul"], {}, unsigned_weights)
    weights = [init for init in model.graph.initializer if init.name.endswith("/weight")]
    assert [init.data_type for init in weights] == [onnx.TensorProto.UINT8 if unsigned_weights else onnx.TensorProto.INT8]
    np.testing.assert_allclose(_run(model, x, tmp_path, "worst"), x @ weight, rtol=1e-6)


@pytest.mark.parametrize("weights", ["u8", "s8"])
def test_the_int8_variant_has_the_weights_asked_for(weights, tmp_path):
    """Both of the quantizer's paths (ORT's dynamic MatMuls, the per-token
    down-projections) store the type of the variant's name."""
    exported = export_model(tiny_source("llama", tmp_path / "llama", bos=True), tmp_path / "home", "int8", int8_weights=weights)
    path = exported.directory / onnx_filename("int8", weights)
    assert path.name in exported.manifest.files
    graph = onnx.load(path, load_external_data=False).graph
    initializers = {init.name: init.data_type for init in graph.initializer}
    integer_matmuls = [node for node in graph.node if node.op_type in ("MatMulInteger", "MatMulIntegerToFloat")]
    assert {node.op_type for node in integer_matmuls} == {"MatMulInteger", "MatMulIntegerToFloat"}
    wanted = onnx.TensorProto.UINT8 if weights == "u8" else onnx.TensorProto.INT8
    assert {initializers[node.input[1]] for node in integer_matmuls} == {wanted}


def test_an_export_with_the_other_int8_weights_is_used_with_a_warning(tmp_path, caplog):
    """A folder exported on a CPU of the other kind runs as it is (a run never adds to a
    user's export), and says how to get this CPU's variant; the cache makes it."""
    other = "s8" if int8_weights() == "u8" else "u8"
    source = tiny_source("bert", tmp_path / "bert")
    made_elsewhere = export_model(source, tmp_path / "home", "int8", int8_weights=other)
    with caplog.at_level(logging.WARNING, logger="expertlens_lite"):
        assert made_elsewhere.onnx_path("int8").name == onnx_filename("int8", other)
    assert f"the int8 variant in {made_elsewhere.directory} has" in caplog.text
    assert "again here with --quantize int8" in caplog.text
    again = export_model(source, tmp_path / "home", "int8")
    assert again.onnx_path("int8").name == onnx_filename("int8", int8_weights())
    assert {onnx_filename("int8", "s8"), onnx_filename("int8", "u8")} <= set(again.manifest.files)


def test_an_unknown_int8_weight_type_is_refused_before_any_work(tmp_path):
    with pytest.raises(ModelError, match="int8_weights must be one of s8, u8"):
        export_model(tiny_source("bert", tmp_path / "bert"), tmp_path / "home", "int8", int8_weights="int4")
    assert not (tmp_path / "home").exists()


_QUANTIZE_TINY = """
import sys
from onnx import TensorProto, helper, numpy_helper
import numpy as np
from expertlens_lite.export.quantize import quantize_model
w = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])
graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
path = sys.argv[1] + "/model.onnx"
with open(path, "wb") as f:
    f.write(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
before = list(sys.path)
for quantize in sys.argv[2:]:
    quantize_model(__import__("pathlib").Path(path), quantize, [])
print(sys.path == before)
"""


@pytest.mark.parametrize("order", [("int8", "fp16"), ("fp16", "int8")])
def test_quantizing_leaves_sys_path_as_it_was(order, tmp_path):
    """onnxruntime.transformers appends its folder to sys.path on import, which made its
    modules (benchmark, optimizer, ...) importable by bare name in the caller's program.
    Taken away after the first import, it was missing for the int8 quantizer's modules
    after an fp16 conversion in the same process ("No module named 'fusion_utils'")."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _QUANTIZE_TINY, str(tmp_path), *order], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "True", done.stdout + done.stderr
