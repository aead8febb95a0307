"""Which ONNX Runtime device a run uses, and how many batches it runs at once there.

``onnxruntime.get_available_providers()`` lists the providers the installed build
contains, not the ones that work: the ``onnxruntime-gpu`` build lists CUDA on a
machine without an NVIDIA GPU or without the CUDA and cuDNN libraries, and its
sessions then print errors and fall back to the CPU. So whether CUDA can be used is
found by starting a one-node session on it (:func:`cuda_available`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os

from .errors import InputError
from .quiet import warnings_silenced

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
_ORT_DEFAULT_LOG_SEVERITY = 2  # warnings and up


def onnxruntime_module():
    """``onnxruntime`` (CPU or GPU build: they install the same module), or a clear error."""
    try:
        import onnxruntime
    except ImportError as exc:
        # A Ctrl-C or SIGTERM while its extension module initialises comes as an
        # ImportError (pybind11 turns any error of a module's init into one): it was
        # reported as "not installed" (seen in a test).
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, KeyboardInterrupt):
            raise cause from None
        raise InputError(
            "ONNX Runtime is not installed; pip install 'expertlens-lite[cpu]' (or '[gpu]' for CUDA)"
        ) from None
    return onnxruntime


@functools.cache
def cuda_available() -> bool:
    """Whether ONNX Runtime's CUDA provider starts on this machine.

    The CUDA and cuDNN libraries that the ``gpu`` extra installs as pip packages are
    loaded first (``onnxruntime.preload_dlls``, as ONNX Runtime asks of pip installs),
    then a session of one Identity node is started on CUDA with ONNX Runtime's
    logging and warnings silenced (a failed start is no error here, only an answer)
    and its providers read back.
    """
    ort = onnxruntime_module()
    if CUDA not in ort.get_available_providers():
        return False
    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(io.StringIO()):  # it prints each library it cannot find
            ort.preload_dlls()
    ort.set_default_logger_severity(4)
    try:
        with warnings_silenced():
            session = ort.InferenceSession(_identity_model(), providers=[CUDA])
        return session.get_providers()[0] == CUDA
    except Exception:  # noqa: BLE001 - whatever stops the provider from starting means "no"
        return False
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_LOG_SEVERITY)


def _identity_model() -> bytes:
    from onnx import TensorProto, helper

    tensor = (TensorProto.FLOAT, [1])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", *tensor)],
        [helper.make_tensor_value_info("y", *tensor)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when ONNX Runtime's CUDA provider starts here, else ``cpu``;
    ``cuda`` where it does not start is an error."""
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return device
    if cuda_available():
        return "cuda"
    if device == "cuda":
        raise InputError(
            "--device cuda needs onnxruntime-gpu with its CUDA libraries (the 'gpu' extra) and an NVIDIA GPU, "
            "and ONNX Runtime's CUDA provider does not start here; use --device cpu"
        )
    return "cpu"


def batches_at_once(device: str) -> int:
    """How many batches :func:`.runtime.run_batches` runs at once on ``device``: on the
    CPU one per core this process may run on, on CUDA one."""
    if device == "cuda":
        return 1
    return usable_cpus()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: ``taskset``, a container's
    cpuset), which can be fewer than the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def confined_threads() -> int | None:
    """An ONNX Runtime session's intra-op thread count when this process may not run
    on every CPU, else None (ONNX Runtime's default). The default is one thread per
    physical core of the machine, each pinned to its core: under ``taskset`` or in a
    cpuset it starts threads on CPUs the process was kept off (found by an audit)."""
    cpus = usable_cpus()
    return cpus if cpus < (os.cpu_count() or cpus) else None
