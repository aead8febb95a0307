"""Embedded in someone else's program, an export leaves that program's process as it was."""

from __future__ import annotations

import logging

import pytest

from expertlens_lite.export import export_model

from .test_parity import tiny_source


def test_an_int8_export_gives_the_root_logger_no_handler(tmp_path, monkeypatch):
    """ORT's quantizer logs with ``logging.warning``, which calls ``basicConfig`` on a root
    logger without handlers: the caller's warnings then all went to stderr, and its own
    ``basicConfig`` did nothing. (pytest gives the root logger handlers of its own, so
    they are set aside here.)"""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    export_model(tiny_source("bert", tmp_path / "bert"), tmp_path / "home", "int8")
    assert root.handlers == []


_SEEDED_EXPORT = """
import random, sys
from pathlib import Path
import numpy as np
import torch
from expertlens_lite.export import export_model
tmp = Path(sys.argv[1])
random.seed(1); np.random.seed(1); torch.manual_seed(1)
states = random.getstate(), np.random.get_state()[1].tobytes(), torch.random.get_rng_state()
export_model(sys.argv[2], tmp / "home", "int8")
print(random.getstate() == states[0], np.random.get_state()[1].tobytes() == states[1],
      torch.equal(torch.random.get_rng_state(), states[2]))
"""


@pytest.mark.parametrize("model", ["minilm", "llama"])
def test_an_export_leaves_the_global_random_generators_where_they_were(model, tmp_path):
    """Optimum draws its dummy inputs from them (NumPy's for a causal model's past, found
    by an audit), and a library the first export imports draws from Python's, so a
    seeded caller got other numbers after a cold export than after a warm one. In a
    fresh interpreter: those imports happen once per process."""
    import subprocess
    import sys

    if model == "llama":
        model = tiny_source("llama", tmp_path / "llama", bos=True).path
    done = subprocess.run(
        [sys.executable, "-c", _SEEDED_EXPORT, str(tmp_path), model],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True", "True"], done.stdout


def test_importing_the_package_leaves_the_umask_alone():
    """It set the umask to 022 and back at import, so that a file another thread of the
    importing program made meanwhile got the wrong mode (noted in a review)."""
    import subprocess
    import sys

    probe = (
        "import os; calls = []; real = os.umask\n"
        "os.umask = lambda mask: calls.append(mask) or real(mask)\n"
        "import expertlens_lite, expertlens_lite.pipeline, expertlens_lite.cli\n"
        "print(calls)"
    )
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_exports_in_two_threads_leave_the_warning_filters_as_they_were(tmp_path, monkeypatch):
    """Each export ignores warnings while it traces, in a ``catch_warnings`` block; two
    threads' blocks that overlapped without nesting left "ignore everything" behind,
    silencing the program's warnings for good (noted in a review). The stub export lets
    the second thread in while the first one is inside, if it can get in."""
    import threading
    import types
    import warnings

    import optimum.exporters.onnx
    import optimum.exporters.tasks  # the export's imports, done before the filters are noted
    import torch  # noqa: F401

    from expertlens_lite.export.exporter import _optimum_export

    first_inside, second_inside, first_out = threading.Event(), threading.Event(), threading.Event()

    def export(model, folder, **kwargs) -> None:
        if model.name == "first":
            first_inside.set()
            second_inside.wait(1)  # it comes in now, or after this export's block is over
        else:
            second_inside.set()
            first_out.wait(30)

    def run(name: str) -> None:
        _optimum_export(types.SimpleNamespace(name=name, config=types.SimpleNamespace(_name_or_path="m")), tmp_path, False)
        if name == "first":
            first_out.set()

    monkeypatch.setattr(optimum.exporters.onnx, "onnx_export_from_model", export)
    before = list(warnings.filters)
    first = threading.Thread(target=run, args=("first",))
    first.start()
    assert first_inside.wait(30)
    run("second")
    first.join()
    assert warnings.filters == before


_INTERRUPTED_IMPORT = """
import builtins, signal, sys
from expertlens_lite.export import export_model
real, fired = builtins.__import__, []

def hook(name, globals=None, *args, **kwargs):
    if globals and globals.get("__name__") == "torch" and "torch._C" in sys.modules and not fired:  # inside torch's, past its core
        fired.append(name)
        signal.raise_signal(signal.SIGINT)
    return real(name, globals, *args, **kwargs)

builtins.__import__ = hook
try:
    export_model(sys.argv[1], sys.argv[2])
except KeyboardInterrupt:
    print("interrupted", bool(fired))
builtins.__import__ = real
print(export_model(sys.argv[1], sys.argv[2]).manifest.n_neurons)
"""


def test_a_ctrl_c_during_the_pytorch_import_leaves_the_process_able_to_export(tmp_path):
    """Raised inside PyTorch's import, the KeyboardInterrupt left it half made: every later
    export in the process failed, "partially initialized module 'torch'" (an audit). Now
    it comes right after the import. In a fresh interpreter, which has not imported it."""
    import subprocess
    import sys

    folder = tiny_source("bert", tmp_path / "bert").path
    done = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_IMPORT, folder, str(tmp_path / "home")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["interrupted", "True", str(2 * 256)], done.stdout
