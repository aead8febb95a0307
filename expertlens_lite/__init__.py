"""expertlens-lite: expert neurons of word concepts in transformer LMs (ExpertLens).

The whole pipeline is :func:`expertlens_lite.run` with a :class:`RunConfig`; the
stages are importable on their own (``concepts``, ``export``, ``runtime``,
``kernels``, ``selection``, ``similarity``, ``alignment``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .config import RunConfig
    from .pipeline import RunResult, run

__all__ = ["RunConfig", "RunResult", "__version__", "run"]


def __getattr__(name: str):
    """The pipeline's names, imported when first asked for (PEP 562): importing the
    package, as ``elens-lite`` does first, then costs no NumPy, Numba or ONNX import,
    so a Ctrl-C in the command's first second meets its handler, not a traceback."""
    if name == "RunConfig":  # without the pipeline's ONNX and SciPy, as ``run --help``
        from .config import RunConfig

        return RunConfig
    if name in ("RunResult", "run"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy names too, so that tab completion offers them (an audit)."""
    return sorted({*globals(), *__all__})
