"""Quantized variants of an exported model, made from the fp32 graph with the pooled outputs.

``int8``: ONNX Runtime's dynamic quantization of MatMul weights (activations are
quantized on the fly), for the CPU. Weights are quantized per output channel: on
MiniLM, per-tensor scales let the pooled responses of later layers drift to a
correlation of 0.94-0.96 with fp32, per-channel keeps them at 0.98-0.99. The MLP
down-projections stay fp32: their input is the neuron layer itself, whose rare
massive activations (LLMs have them) ruin a per-tensor int8 activation scale; on
SmolLM2 this raises the agreement of fp32 and int8 top-1% expert sets (mean
Jaccard) from 0.37 to 0.70, at 1.7x the int8 inference time (BENCHMARKS.md).
Before quantizing, the inputs of the other MatMuls are smoothed
(:mod:`.smoothing`), calibrated on sample sentences: 0.70 -> 0.83 on SmolLM2.
Only MatMul is quantized: the embedding table stays fp32, so the word-embedding
baseline reads the same numbers.
``fp16``: weights and activations in half precision with float32 inputs and
outputs, for the CUDA provider. The neuron tensors keep their names and feed the
same pooling nodes, so they stay exposed after either conversion.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from ..atomic import atomic_path
from .smoothing import SmoothGroup, channel_maxima, find_groups, smooth

QUANTIZATIONS = ("none", "int8", "fp16")


def onnx_filename(quantize: str) -> str:
    return "model.onnx" if quantize == "none" else f"model.{quantize}.onnx"


def uses_external_data(path: Path) -> bool:
    """Whether the ONNX file keeps its weights in a separate file (models over 2 GB)."""
    model = onnx.load(path, load_external_data=False)
    return any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)


def quantize_model(
    fp32_path: Path,
    quantize: str,
    keep_fp32_scopes: list[str],
    calibration: Sequence[dict[str, np.ndarray]] = (),
) -> Path:
    """Write the ``quantize`` variant of ``fp32_path`` next to it (atomically) and return its path.

    A model with external data gets a quantized variant with external data too
    (``<name>.data`` beside it), since it may still exceed protobuf's 2 GB limit.
    ``keep_fp32_scopes``: node-name scopes (the down-projections) left unquantized by int8.
    ``calibration``: input batches for int8's smoothing (none: no smoothing).
    """
    target = fp32_path.with_name(onnx_filename(quantize))
    external = uses_external_data(fp32_path)
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        graph = onnx.load(fp32_path, load_external_data=False).graph
        keep = [node.name for node in graph.node if node.name.startswith(tuple(keep_fp32_scopes))]
        groups = find_groups(graph, keep) if calibration else []
        # Work in a scratch folder beside the target: the quantizer names an external
        # data file after its output (``<output>.data``), so the output gets the
        # target's name there and both files are then renamed into place, graph last.
        with tempfile.TemporaryDirectory(prefix=".quantize-", dir=fp32_path.parent) as scratch:
            source = _smoothed(fp32_path, Path(scratch), groups, calibration, external) if groups else fp32_path
            quantized = Path(scratch) / target.name
            quantize_dynamic(
                source,
                quantized,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
                nodes_to_exclude=keep,
                use_external_data_format=external,
            )
            data = quantized.with_name(f"{quantized.name}.data")
            if data.exists():
                os.replace(data, target.with_name(data.name))
            quantized.chmod(0o644)
            os.replace(quantized, target)
    elif quantize == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(fp32_path), keep_io_types=True)
        with atomic_path(target, suffix=".onnx") as tmp:
            onnx.save(model, tmp, save_as_external_data=external, all_tensors_to_one_file=True, location=f"{target.name}.data")
    else:
        raise ValueError(f"unknown quantization {quantize!r}")
    return target


def _smoothed(
    fp32_path: Path, scratch: Path, groups: list[SmoothGroup], calibration: Sequence[dict[str, np.ndarray]], external: bool
) -> Path:
    """A smoothed copy of ``fp32_path`` in ``scratch`` (the model is not kept in memory
    past this call, so the quantizer can load it next)."""
    maxima = channel_maxima(fp32_path, groups, calibration)
    model = onnx.load(fp32_path)
    smooth(model, groups, maxima)
    path = scratch / "smoothed.onnx"
    onnx.save(model, path, save_as_external_data=external, all_tensors_to_one_file=True, location="smoothed.onnx.data")
    return path
