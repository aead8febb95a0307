"""Time ``elens-lite run`` on the bundled default: cold (empty cache: GGUF conversion,
export and inference included) and warm (export and responses cached).

Usage::

    python benchmarks/bench_default_run.py [--model smollm2] [--json out.json]

Targets (issues 2 and 9): cold < 180 s, warm < 60 s on the 2-core machine. Each run
is a fresh ``elens-lite`` process, as a user would start it. A float32 GEMM rate
measured in the same run is printed as a yardstick for the machine's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import elens_lite, gemm_peak_gflops, machine  # noqa: E402


def timed_run(home: Path, out: Path, model: str | None) -> tuple[float, dict]:
    command = [elens_lite(), "run", "--out", str(out)] + (["--model", model] if model else [])
    env = {**os.environ, "ELENS_HOME": str(home)}
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return seconds, json.loads((out / "summary.json").read_text())["timings"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="--model for elens-lite run (default: the tool's default)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    gemm = gemm_peak_gflops()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        cold, cold_stages = timed_run(home, Path(tmp) / "cold", args.model)
        warm, warm_stages = timed_run(home, Path(tmp) / "warm", args.model)
    result = {"machine": machine(), "gemm_gflops": round(gemm, 1), "model": args.model or "default",
              "cold_s": round(cold, 1), "warm_s": round(warm, 1), "cold_stages": cold_stages, "warm_stages": warm_stages}
    print(f"machine: {result['machine']}, float32 GEMM {gemm:.0f} GFLOP/s")
    print(f"cold run: {cold:.1f} s (target < 180 s)  stages: {cold_stages}")
    print(f"warm run: {warm:.1f} s (target < 60 s)   stages: {warm_stages}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
