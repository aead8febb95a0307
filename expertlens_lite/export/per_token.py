"""Per-token int8 for the MLP down-projections, with their outlier channels in fp32.

A down-projection reads the neuron layer itself, which in LLMs is heavy-tailed in
two ways: a few channels run 10-1,000x larger than the median one, and a few tokens
(the first ones, some punctuation) carry "massive activations" (Sun et al., 2024).
ONNX Runtime's dynamic quantization gives the whole input tensor one scale
(``DynamicQuantizeLinear``), so either kind of outlier leaves every other neuron one
or two int8 levels: on SmolLM2 that took the top-1% expert sets of fp32 and int8 to a
mean Jaccard of 0.37. ORT's quantizer has no per-token mode for dynamic quantization,
hence this graph rewrite of each down-projection ``y = x @ W``:

- one scale per token: ``QuantizeLinear`` with a per-row scale (``max|x_row| / 127``,
  symmetric, stored as uint8 around 128), then ``MatMulIntegerToFloat`` (ORT's fused
  kernel, which takes a per-row activation scale ``[M, 1]`` and per-column weight
  scales) for the product and the rescaling in one pass; the weights, symmetric too,
  are int8, or uint8 around 128 where the CPU's int8 products saturate
  (:func:`.quantize.int8_weights`);
- the outlier channels, found on calibration sentences (channel max above
  ``OUTLIER_FACTOR`` x the layer's median channel max, at most ``MAX_OUTLIERS``), are
  zeroed in the int8 input and multiplied in fp32 instead, as LLM.int8() does
  (Dettmers et al., 2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers
  at Scale").

Measured on SmolLM2 (BENCHMARKS.md), top-1% Jaccard with fp32: per-token alone
0.735, with the outlier channels 0.791; keeping the first layers' down-projections
fp32 as well (an error there runs through every later layer) 0.811. int8 went from
1.58x to 1.74-2.35x (three runs, export format 4) the speed of ORT fp32 with it. The neuron tensors
themselves are not touched: they are the inputs of these MatMuls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .surgery import drop_unused_initializers

OUTLIER_FACTOR = 8.0
MAX_OUTLIERS = 32
MS_DOMAIN = "com.microsoft"


def outlier_channels(maxima: np.ndarray, factor: float = OUTLIER_FACTOR, limit: int = MAX_OUTLIERS) -> np.ndarray:
    """Sorted indices of the (at most ``limit`` largest) channels whose ``max|x|`` exceeds
    ``factor`` x the median channel's."""
    candidates = np.flatnonzero(maxima > factor * np.median(maxima))
    largest = candidates[np.argsort(-maxima[candidates], kind="stable")][:limit]
    return np.sort(largest).astype(np.int64)


def quantize_per_token(
    model: onnx.ModelProto, matmuls: Sequence[str], maxima: Mapping[str, np.ndarray], unsigned_weights: bool = False,
) -> list[str]:
    """Rewrite the MatMul nodes named ``matmuls`` of ``model`` (in place) into per-token int8.

    ``maxima``: ``max|x|`` per input channel, keyed by each MatMul's input tensor; a
    MatMul without an entry gets no outlier channels. ``unsigned_weights``: store the
    weights as uint8 around 128 rather than int8 (same values). Returns the names of
    the fp32 MatMuls added for the outlier channels, which a later quantizer must leave
    alone.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    wanted = set(matmuls)
    nodes: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = []
    outlier_matmuls: list[str] = []
    for node in graph.node:
        if node.name not in wanted:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
        maxima_of_x = maxima.get(node.input[0])
        outliers = outlier_channels(maxima_of_x) if maxima_of_x is not None else np.zeros(0, np.int64)
        rewritten = _Rewrite(node.name, added)
        x = node.input[0]
        if outliers.size:
            keep = np.ones(weight.shape[0], np.float32)
            keep[outliers] = 0.0
            outlier_matmuls.append(f"{node.name}/outliers/MatMul")
            nodes += [
                rewritten.node("Gather", [x, rewritten.const("outlier_channels", outliers)], axis=-1),
                helper.make_node("MatMul", [rewritten.last, rewritten.const("outlier_weight", weight[outliers])],
                                 [f"{node.name}/outliers/output"], name=outlier_matmuls[-1]),
                rewritten.node("Mul", [x, rewritten.const("inlier_mask", keep)]),
            ]
            x = rewritten.last
            weight = weight * keep[:, None]
        nodes += rewritten.int8_matmul(x, weight, unsigned_weights)
        if outliers.size:
            nodes.append(rewritten.node("Add", [rewritten.last, f"{node.name}/outliers/output"]))
        nodes[-1].output[0] = node.output[0]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    drop_unused_initializers(graph)
    if wanted and not any(opset.domain == MS_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return outlier_matmuls


class _Rewrite:
    """Names and builds the nodes and constants that replace one MatMul."""

    def __init__(self, prefix: str, initializers: list[onnx.TensorProto]):
        self.prefix = f"{prefix}/per_token"
        self.initializers = initializers
        self.last = ""
        self._count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        full = f"{self.prefix}/{name}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value), full))
        return full

    def node(self, op_type: str, inputs: list[str], domain: str = "", **attributes) -> onnx.NodeProto:
        self._count += 1
        name = f"{self.prefix}/{op_type}_{self._count}"
        self.last = f"{name}/output"
        return helper.make_node(op_type, inputs, [self.last], name=name, domain=domain, **attributes)

    def int8_matmul(self, x: str, weight: np.ndarray, unsigned_weights: bool) -> list[onnx.NodeProto]:
        """``x @ weight`` with ``x`` quantized per row (of its 2-D view) and ``weight`` per
        column; the weights int8, or (``unsigned_weights``) the same levels + 128 as uint8."""
        k, n = weight.shape
        weight_scale = np.abs(weight).max(axis=0) / 127.0
        weight_scale[weight_scale == 0] = 1.0  # an all-zero column quantizes to zeros either way
        levels = np.clip(np.round(weight / weight_scale), -127, 127)
        quantized_weight = (levels + 128).astype(np.uint8) if unsigned_weights else levels.astype(np.int8)
        weight_zero_point = [self.const("weight_zero_point", np.array(128, np.uint8))] if unsigned_weights else []
        nodes = [self.node("Shape", [x])]
        shape = self.last
        nodes.append(self.node("Slice", [shape, self.const("start", np.array([0], np.int64)), self.const("end", np.array([-1], np.int64))]))
        nodes.append(self.node("Concat", [self.last, self.const("columns", np.array([n], np.int64))], axis=0))
        output_shape = self.last
        nodes.append(self.node("Reshape", [x, self.const("rows", np.array([-1, k], np.int64))]))
        rows = self.last
        nodes.append(self.node("Abs", [rows]))
        nodes.append(self.node("ReduceMax", [self.last, self.const("axis", np.array([1], np.int64))], keepdims=0))
        # A row of zeros would get scale 0 (and 0/0 in QuantizeLinear): floor it.
        nodes.append(self.node("Max", [self.last, self.const("tiny", np.array(np.finfo(np.float32).tiny, np.float32))]))
        nodes.append(self.node("Mul", [self.last, self.const("inv127", np.array(1 / 127, np.float32))]))
        row_scale = self.last
        nodes.append(self.node("Shape", [row_scale]))
        nodes.append(self.node("Expand", [self.const("zero_point", np.array(128, np.uint8)), self.last]))
        nodes.append(self.node("QuantizeLinear", [rows, row_scale, self.last], axis=0))
        quantized = self.last
        nodes.append(self.node("Unsqueeze", [row_scale, self.const("column_axis", np.array([1], np.int64))]))
        nodes.append(self.node(
            "MatMulIntegerToFloat",
            [quantized, self.const("weight", quantized_weight), self.last,
             self.const("weight_scale", weight_scale.astype(np.float32)), self.const("scalar_zero_point", np.array(128, np.uint8)),
             *weight_zero_point],
            domain=MS_DOMAIN,
        ))
        nodes.append(self.node("Reshape", [self.last, output_shape]))
        return nodes
