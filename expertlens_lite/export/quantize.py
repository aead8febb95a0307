"""Quantized variants of an exported model, made from the fp32 graph with the pooled outputs.

``int8``: ONNX Runtime's dynamic quantization of MatMul weights (activations are
quantized on the fly), for the CPU. Weights are quantized per output channel: on
MiniLM, per-tensor scales let the pooled responses of later layers drift to a
correlation of 0.94-0.96 with fp32, per-channel keeps them at 0.98-0.99. Before
quantizing, the inputs of the MatMuls that read a normalization are smoothed
(:mod:`.smoothing`), calibrated on sample sentences. The MLP down-projections,
whose input is the heavy-tailed neuron layer itself, get per-token int8 with their
outlier channels in fp32 instead of ORT's per-tensor scale (:mod:`.per_token`),
except in the first ``FP32_DOWN_FRACTION`` of the layers, which stay fp32: an error
there runs through every later layer. That is done for the causal (pre-norm) models
only: on SmolLM2 it keeps the top-1% expert sets at a mean Jaccard of 0.81 with fp32
and takes int8 from 1.58x to 1.74-2.35x (three runs, export format 4) the speed of ORT fp32, while on
the post-norm MiniLM it lowered that Jaccard from 0.800 to 0.791 and moved one
alignment rho by 0.032, past the 0.03 target, so encoders keep every down-projection
fp32 (BENCHMARKS.md). Only MatMul is quantized: the embedding table stays fp32, so the
word-embedding baseline reads the same numbers.
The int8 weights' type depends on the CPU that quantizes (:func:`int8_weights`), as
Optimum's ``AutoQuantizationConfig`` picks it by instruction set: int8 (ORT's default)
where the CPU has VNNI or is not x86, uint8 on other x86 CPUs, where ORT multiplies
uint8 activations by int8 weights with ``VPMADDUBSW``, whose int16 sum of two products
saturates. On an AVX2-only AMD EPYC (Zen 2) that took the int8 responses of tiny
random GPT-J, Gemma 2 and CodeGen models to a correlation of 0.93-0.96 with fp32;
uint8 weights (ORT's ``U8U8`` kernels widen to int16 before multiplying) give
0.997-0.998 there, and a model exported on one CPU and run on another is warned about.
``fp16``: weights and activations in half precision with float32 inputs and
outputs, for the CUDA provider. The neuron tensors keep their names and feed the
same pooling nodes, so they stay exposed after either conversion.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import platform
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from ..atomic import as_if_created, atomic_path
from ..models.sources import file_sha256
from .per_token import quantize_per_token
from .smoothing import channel_maxima, find_groups, smooth

INT8_WEIGHTS = ("s8", "u8")  # the int8 variant's weight type: int8 or uint8 (see int8_weights)
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni"}  # /proc/cpuinfo names of AVX512-VNNI and AVX-VNNI
SCRATCH_PREFIX = ".quantize-"  # the int8 quantizer's scratch folder, beside the model
# SmolLM2 top-1% Jaccard fp32 vs int8 (BENCHMARKS.md): 0.791 with no layer kept, 0.811 with 3 of 30.
FP32_DOWN_FRACTION = 0.1


def onnx_filename(quantize: str, weights: str | None = None) -> str:
    """The ONNX file of the ``quantize`` variant; for int8, of the one with ``weights``
    (default: this CPU's, :func:`int8_weights`). The int8-weight file keeps the name it
    had before uint8 weights existed, so caches made on CPUs with VNNI stay valid."""
    if quantize == "none":
        return "model.onnx"
    if quantize == "int8" and (weights or int8_weights()) == "u8":
        return "model.int8u8.onnx"
    return f"model.{quantize}.onnx"


@functools.cache
def int8_weights() -> str:
    """The weight type of the int8 variant for this CPU (:func:`int8_weights_for`)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo if line.startswith("flags")), None)
    except OSError:
        flags = None
    return int8_weights_for(platform.machine(), flags)


def int8_weights_for(machine: str, flags: set[str] | None) -> str:
    """The weight type of the int8 variant for a CPU of architecture ``machine``
    (``platform.machine()``) with ``flags`` (``/proc/cpuinfo``'s; None: unknown):
    ``"u8"`` on x86 without VNNI, else ``"s8"``.

    Why: there ONNX Runtime multiplies uint8 activations by int8 weights with
    ``VPMADDUBSW``, which adds two products into a saturating int16 (255 x 127 x 2 >
    32,767), and with uint8 weights it widens to int16 first, exactly; with VNNI
    (``VPDPBUSD``, 32-bit sums) the int8 products are exact and the faster choice
    (Optimum's ``AutoQuantizationConfig.avx2`` uses uint8 weights, its ``avx512_vnni``
    int8). Other architectures (ARM) keep int8 weights, as before; not measured here. An
    x86 CPU whose flags are unknown (no ``/proc/cpuinfo``, as on macOS) gets ``"u8"``:
    exact everywhere, at worst slower.
    """
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686"):
        return "s8"
    return "s8" if flags and _VNNI_FLAGS & flags else "u8"


def uses_external_data(model: Path | onnx.ModelProto) -> bool:
    """Whether the ONNX model (a file or a graph loaded without its weights) keeps its
    weights in a separate file."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(model, load_external_data=False)
    return any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)


def onnx_sha256(path: Path) -> str:
    """SHA-256 of an ONNX file and of the external data files it names: a variant made
    again with other weights in the same graph gets another hash."""
    model = onnx.load(path, load_external_data=False)
    locations = sorted({entry.value for init in model.graph.initializer for entry in init.external_data if entry.key == "location"})
    digest = hashlib.sha256()
    for file in [path, *(path.parent / location for location in locations)]:
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def quantize_model(
    fp32_path: Path,
    quantize: str,
    down_scopes: list[str],
    calibration: Sequence[dict[str, np.ndarray]] = (),
    per_token_downs: bool = True,
    weights: str | None = None,
) -> Path:
    """Write the ``quantize`` variant of ``fp32_path`` next to it (atomically) and return its path.

    A model with external data (every export, :func:`.exporter.prepare_graph`) gets a
    variant with external data too (``<name>.data`` beside it): a model over 2 GB may
    still exceed protobuf's limit after quantization, and a run's session loads the
    graph apart from its weights.
    ``down_scopes``: node-name scopes of the down-projections, one per layer in order.
    ``calibration``: input batches for int8's smoothing and outlier channels (none:
    neither, just per-token int8 down-projections). ``per_token_downs``: False keeps
    every down-projection fp32 (for post-norm encoders, see the module docstring).
    ``weights``: int8's weight type (:data:`INT8_WEIGHTS`; default: this CPU's,
    :func:`int8_weights`).
    """
    weights = weights or int8_weights()
    if weights not in INT8_WEIGHTS:
        raise ValueError(f"unknown int8 weight type {weights!r}")
    target = fp32_path.with_name(onnx_filename(quantize, weights))
    external = uses_external_data(fp32_path)
    if quantize == "int8":
        with _ort_transformers_importable():
            from onnxruntime.quantization import QuantType, quantize_dynamic

        # Work in a scratch folder beside the target: the quantizer names an external
        # data file after its output (``<output>.data``), so the output gets the
        # target's name there and both files are then renamed into place, graph last.
        with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=fp32_path.parent) as scratch:
            prepared, keep_fp32 = _prepare_int8(
                fp32_path, Path(scratch), down_scopes, calibration, external, per_token_downs, weights == "u8",
            )
            quantized = Path(scratch) / target.name
            with _quiet_quantizer():
                quantize_dynamic(
                    prepared,
                    quantized,
                    weight_type=QuantType.QUInt8 if weights == "u8" else QuantType.QInt8,
                    per_channel=True,
                    op_types_to_quantize=["MatMul"],
                    nodes_to_exclude=keep_fp32,
                    use_external_data_format=external,
                )
            data = quantized.with_name(f"{quantized.name}.data")
            if data.exists():
                as_if_created(data)
                os.replace(data, target.with_name(data.name))
            as_if_created(quantized)
            os.replace(quantized, target)
    elif quantize == "fp16":
        with _ort_transformers_importable():
            from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(fp32_path), keep_io_types=True)
        with atomic_path(target, suffix=".onnx") as tmp:
            onnx.save(model, tmp, save_as_external_data=external, all_tensors_to_one_file=True, location=f"{target.name}.data")
        if external and (data := target.with_name(f"{target.name}.data")).exists():
            as_if_created(data)
    else:
        raise ValueError(f"unknown quantization {quantize!r}")
    return target


def _prepare_int8(
    fp32_path: Path,
    scratch: Path,
    down_scopes: list[str],
    calibration: Sequence[dict[str, np.ndarray]],
    external: bool,
    per_token_downs: bool,
    unsigned_weights: bool,
) -> tuple[Path, list[str]]:
    """A copy of ``fp32_path`` in ``scratch``, smoothed and with per-token int8
    down-projections, and the MatMuls that ORT's dynamic quantizer must then leave fp32.
    (The model is not kept in memory past this call, so the quantizer can load it next.)"""
    graph = onnx.load(fp32_path, load_external_data=False).graph
    weights = {init.name for init in graph.initializer if len(init.dims) == 2}
    downs = [[node for node in graph.node
              if node.op_type == "MatMul" and node.name.startswith(scope) and node.input[1] in weights]
             for scope in down_scopes]
    n_fp32 = math.ceil(FP32_DOWN_FRACTION * len(downs)) if per_token_downs else len(downs)
    fp32_downs = [node.name for layer in downs[:n_fp32] for node in layer]
    token_downs = {node.name: node.input[0] for layer in downs[n_fp32:] for node in layer}  # -> input tensor
    groups = find_groups(graph, [*fp32_downs, *token_downs]) if calibration else []
    tensors = [group.activation for group in groups] + list(token_downs.values())
    maxima = channel_maxima(fp32_path, tensors, calibration) if calibration else {}
    model = onnx.load(fp32_path)
    smooth(model, groups, maxima)
    outlier_matmuls = quantize_per_token(model, list(token_downs), maxima, unsigned_weights)
    path = scratch / "prepared.onnx"
    onnx.save(model, path, save_as_external_data=external, all_tensors_to_one_file=True, location="prepared.onnx.data")
    return path, fp32_downs + outlier_matmuls


@contextmanager
def _ort_transformers_importable() -> Iterator[None]:
    """ONNX Runtime's ``transformers`` folder on ``sys.path`` for the imports in the block,
    and ``sys.path`` as it was after them.

    The modules of ``onnxruntime.transformers`` (which the int8 quantizer imports too)
    import one another by bare name (``from fusion_utils import ...``), and the package's
    ``__init__`` appends its folder to ``sys.path`` for that, once. Left there, the folder
    made its modules (``benchmark``, ``optimizer``, ``metrics``, ...) importable by those
    names in the caller's program; taken away after the first import, it was missing for
    a module of the package imported later: the int8 quantizer's after an fp16 conversion
    failed with "No module named 'fusion_utils'" (found when the tests ran in another
    order). So it is put there for every import, not only the first.
    """
    import onnxruntime

    saved = list(sys.path)
    sys.path.append(os.path.join(os.path.dirname(onnxruntime.__file__), "transformers"))
    try:
        yield
    finally:
        sys.path[:] = saved


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drop the advice ORT's quantizer logs on the root logger ("consider pre-processing",
    and "already quantized", which the per-token down-projections trigger on purpose):
    it is about ORT's own workflow, not something a user of this tool can act on. It
    logs with ``logging.warning``, which gives a root logger without handlers one for
    stderr (``basicConfig``): removed again, or every later warning of the caller's
    program would print there and its own ``basicConfig`` would do nothing."""

    def not_from_quantizer(record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname or "quantization" not in record.pathname

    root = logging.getLogger()
    handlers = list(root.handlers)
    root.addFilter(not_from_quantizer)
    try:
        yield
    finally:
        root.removeFilter(not_from_quantizer)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
