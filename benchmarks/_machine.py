"""What machine a benchmark ran on, a same-run yardstick to compare against, and the
``elens-lite`` command of the Python that runs the benchmark."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def machine() -> dict[str, str | int]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count() or 0, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


def elens_lite() -> str:
    """The ``elens-lite`` console script beside this Python (its venv's), not the first one on PATH."""
    return str(Path(sys.executable).parent / "elens-lite")


def gemm_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 GEMM rate of this machine through NumPy's BLAS (all cores)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b  # warm up threads and caches
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
