"""expertlens-lite: expert neurons of word concepts in transformer LMs (ExpertLens).

The whole pipeline is :func:`expertlens_lite.run` with a :class:`RunConfig`; the
stages are importable on their own (``concepts``, ``export``, ``runtime``,
``kernels``, ``selection``, ``similarity``, ``alignment``).
"""

__version__ = "0.1.0"

from .pipeline import RunConfig, RunResult, run  # noqa: E402

__all__ = ["RunConfig", "RunResult", "__version__", "run"]
