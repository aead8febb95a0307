"""The kernels' threads and forked processes (expertlens_lite/kernels/threads.py).

Each case runs in a fresh interpreter: numba picks its threading layer once per
process, at the first parallel loop, so it cannot be chosen again inside pytest's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

# Runs a kernel, forks, runs it again in the child; prints the child's exit code.
# 0: same values; 3: different values; 4: an error (printed); negative: killed.
_FORK_AFTER_KERNELS = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import torch
    from expertlens_lite.kernels.average_precision import average_precision
    from expertlens_lite.kernels.bitsets import pack_masks, jaccard_matrix

    torch_threads = torch.get_num_threads()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 40)).astype(np.float32)
    y = rng.random(300) < 0.3
    bits = pack_masks(rng.random((5, 200)) < 0.5)
    ap, jac = average_precision(x, y), jaccard_matrix(bits)
    print("torch threads kept:", torch.get_num_threads() == torch_threads, flush=True)
    pid = os.fork()
    if pid == 0:
        try:
            same = np.array_equal(average_precision(x, y), ap) and np.array_equal(jaccard_matrix(bits), jac)
        except BaseException as exc:
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            os._exit(4)
        os._exit(0 if same else 3)
    _, status = os.waitpid(pid, 0)
    print("child:", os.waitstatus_to_exitcode(status))
    """
)


def _run(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_THREADING")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", _FORK_AFTER_KERNELS], env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and os.uname().machine == "x86_64"),
    reason="tbb is a dependency on x86-64 Linux only",
)
def test_a_child_forked_after_the_kernels_ran_runs_them():
    """multiprocessing's default start on Linux (and torch's DataLoader workers) fork:
    with numba's OpenMP layer, such a child was killed at its first kernel."""
    done = _run({})
    assert done.returncode == 0, done.stderr
    assert "child: 0" in done.stdout, done.stdout + done.stderr
    # OpenMP's start also changed what torch reports as its thread count.
    assert "torch threads kept: True" in done.stdout, done.stdout


def test_a_child_forked_after_openmp_kernels_gets_a_clear_error():
    """Where numba runs on OpenMP anyway (asked for, or no TBB), the child is told
    what to do instead of being killed."""
    done = _run({"NUMBA_THREADING_LAYER": "omp"})
    assert done.returncode == 0, done.stderr
    assert "child: 4" in done.stdout, done.stdout + done.stderr
    assert "ProcessError: " in done.stderr and "'spawn' or 'forkserver'" in done.stderr, done.stderr
