"""SmoothQuant for the int8 variant: move activation outliers into the weights first.

Dynamic int8 quantizes a MatMul's input with one scale per tensor, so the few
input channels that run far larger than the rest (LLMs have them right after
their normalization layers) leave every other channel only a handful of int8
levels. SmoothQuant (Xiao et al., 2023, "SmoothQuant: Accurate and Efficient
Post-Training Quantization for Large Language Models") divides input channel j by

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

and multiplies row j of every weight that reads it by s_j: the fp32 function is
unchanged and the int8 error shrinks. The division is folded into the per-channel
scale (and bias) of the node that produces the input, so it costs nothing at run
time. That fold is exact only where this tensor feeds nothing but those MatMuls
(shape queries aside): the normalizations of pre-norm blocks (Llama-style and
GPT-NeoX attention and MLP inputs, OPT's attention input; OPT's MLP input is
reshaped first and GPT-2's projections are Gemm, not MatMul, so those stay). In
post-norm models (BERT) the normalized tensor is also the residual, so they are
left as they are. ``max|X_j|`` comes from running the fp32 graph on a fixed
sample of sentences.

ONNX Runtime's quantizer offers SmoothQuant only for static quantization and only
through Intel Neural Compressor, which is outside this stack; hence this module.
Measured on SmolLM2 (BENCHMARKS.md): mean per-concept Jaccard of fp32 and int8
top-1% expert sets 0.70 unsmoothed, 0.79 / 0.83 / 0.83 with alpha = 0.5 / 0.7 / 0.85.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .surgery import drop_unused_initializers

ALPHA = 0.8
PROBE_PREFIX = ".calibration-probe-"  # the graph that reads the activations, beside the model while it runs
# Shape queries of the normalized tensor do not read its values.
_VALUE_FREE_READERS = ("Shape",)


@dataclass(frozen=True)
class SmoothGroup:
    """One tensor that can be smoothed: ``activation``, the output of node ``node``
    whose per-channel scale (and bias) inputs ``scale_inputs`` are divided by s, is
    read only by MatMuls whose ``weights`` rows are multiplied by s."""

    node: str
    scale_inputs: tuple[int, ...]
    activation: str
    weights: tuple[str, ...]


def find_groups(graph: onnx.GraphProto, exclude_nodes: Iterable[str] = ()) -> list[SmoothGroup]:
    """Every tensor of ``graph`` where the fold is exact; ``exclude_nodes``: MatMuls whose
    weights must stay as they are (the down-projections, which int8 treats its own way)."""
    initializers = {init.name: init for init in graph.initializer}
    constants = _constants(graph, initializers)
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    excluded = set(exclude_nodes)
    outputs = {o.name for o in graph.output}
    groups = []
    for node in graph.node:
        scale_inputs = _channel_scales(node, constants)
        activation = node.output[0]
        users = readers[activation]
        matmuls = [n for n in users if n.op_type == "MatMul"]
        if (
            not scale_inputs
            or activation in outputs
            or not matmuls
            or any(n.op_type not in ("MatMul", *_VALUE_FREE_READERS) for n in users)
        ):
            continue
        channels = constants[node.input[scale_inputs[0]]].dims[0]
        if all(
            n.name not in excluded
            and n.input[0] == activation
            and n.input[1] in initializers
            and len(readers[n.input[1]]) == 1  # a weight shared elsewhere cannot change
            and list(initializers[n.input[1]].dims) == [channels, initializers[n.input[1]].dims[-1]]
            for n in matmuls
        ):
            groups.append(SmoothGroup(node.name, scale_inputs, activation, tuple(n.input[1] for n in matmuls)))
    return groups


def _constants(graph: onnx.GraphProto, initializers: dict) -> dict[str, onnx.TensorProto]:
    """Initializers by name, also under the names ``Identity`` nodes give them (the
    exporter turns equal initializers, e.g. freshly initialized norm scales, into one)."""
    constants = dict(initializers)
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            constants[node.output[0]] = initializers[node.input[0]]
    return constants


def _channel_scales(node: onnx.NodeProto, constants: dict) -> tuple[int, ...]:
    """Which inputs of ``node`` scale its output per channel, or () if none do."""
    if node.op_type == "LayerNormalization":
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        indices = tuple(i for i in (1, 2) if i < len(node.input) and node.input[i])
        if axis == -1 and all(node.input[i] in constants and len(constants[node.input[i]].dims) == 1 for i in indices):
            return indices
    elif node.op_type == "Mul":
        indices = tuple(i for i, name in enumerate(node.input) if name in constants)
        if len(indices) == 1 and len(dims := constants[node.input[indices[0]]].dims) == 1 and dims[0] > 1:
            return indices
    return ()


def channel_maxima(model_path: Path, tensors: Sequence[str], feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``max |x|`` per channel (last axis) of each of ``tensors``, over all positions of ``feeds``.

    The fp32 graph is run once more with those tensors as extra outputs. The probe
    file sits next to ``model_path`` so that external weight files still resolve.
    """
    from ..runtime import create_session, feed_for  # runtime imports this package

    probe = onnx.load(model_path, load_external_data=False)
    for name in tensors:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    probe_path = model_path.with_name(f"{PROBE_PREFIX}{os.getpid()}.onnx")
    onnx.save(probe, probe_path)
    try:
        session = create_session(probe_path, "cpu")
        maxima: dict[str, np.ndarray] = {}
        for feed in feeds:
            values = session.run(list(tensors), feed_for(session, feed))
            for name, value in zip(tensors, values):
                batch_max = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
                maxima[name] = np.maximum(maxima[name], batch_max) if name in maxima else batch_max
    finally:
        probe_path.unlink(missing_ok=True)
    return maxima


def smooth(model: onnx.ModelProto, groups: list[SmoothGroup], maxima: dict[str, np.ndarray], alpha: float = ALPHA) -> None:
    """Fold the SmoothQuant factors into ``model``'s initializers, in place.

    Each smoothed node gets scale (and bias) initializers of its own, so a value it
    shared with other nodes stays as it was for them.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    constants = _constants(graph, initializers)
    nodes = {node.name: node for node in graph.node}
    for group in groups:
        weights = [numpy_helper.to_array(initializers[name]) for name in group.weights]
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0).astype(np.float64)
        x_max = maxima[group.activation].astype(np.float64)
        s = np.ones_like(x_max)
        live = (x_max > 0) & (w_max > 0)  # a dead channel or weight row gives no factor
        s[live] = x_max[live] ** alpha / w_max[live] ** (1 - alpha)
        node = nodes[group.node]
        for index in group.scale_inputs:
            own = f"{group.activation}.smoothquant.{index}"
            graph.initializer.append(_cast_like(numpy_helper.to_array(constants[node.input[index]]) / s, constants[node.input[index]], own))
            node.input[index] = own
        for name, w in zip(group.weights, weights):
            initializers[name].CopyFrom(_cast_like(w * s[:, None], initializers[name], name))
    drop_unused_initializers(graph)


def _cast_like(values: np.ndarray, like: onnx.TensorProto, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(values.astype(onnx.helper.tensor_dtype_to_np_dtype(like.data_type), copy=False), name)
