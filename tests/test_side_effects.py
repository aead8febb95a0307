"""Embedded in someone else's program, an export leaves that program's process as it was."""

from __future__ import annotations

import logging
import random

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


def test_an_export_leaves_the_global_random_generators_where_they_were(tmp_path):
    """Optimum draws its dummy inputs from them, so a seeded caller got other numbers after
    a cold export than after a warm one."""
    torch = pytest.importorskip("torch")
    source = tiny_source("bert", tmp_path / "bert")
    random.seed(1)
    torch.manual_seed(1)
    python_state, torch_state = random.getstate(), torch.random.get_rng_state()
    export_model(source, tmp_path / "home")
    assert random.getstate() == python_state
    assert torch.equal(torch.random.get_rng_state(), torch_state)


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
