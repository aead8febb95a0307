"""How long ``elens-lite`` commands that load no model take, from the exec to the exit.

Each command runs in a fresh process, as a user's does; the best of ``--repeats`` runs
is taken (start-up time only grows with load). ``--baseline DIR`` runs the same commands
with another checkout of the package first on ``PYTHONPATH`` (the code before a change),
interleaved with this one's, so that both see the same machine load; the ratio is the
figure to compare.

    python benchmarks/bench_startup.py --baseline /path/to/old/checkout
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine

COMMANDS = [["--help"], ["--version"], ["models"], ["cache", "ls"], ["run", "--help"], ["export", "--help"]]


def seconds(command: list[str], pythonpath: str | None) -> float:
    env = os.environ | ({"PYTHONPATH": pythonpath} if pythonpath else {})
    start = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "elens-lite"), *command], env=env, capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="a checkout whose expertlens_lite to time beside this one")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    rows = []
    for command in COMMANDS:
        times: dict[str, list[float]] = {"this": [], "baseline": []}
        for _ in range(args.repeats):
            times["this"].append(seconds(command, None))
            if args.baseline:
                times["baseline"].append(seconds(command, args.baseline))
        row = {"command": " ".join(command), "this_s": round(min(times["this"]), 3)}
        if args.baseline:
            row |= {"baseline_s": round(min(times["baseline"]), 3), "speed-up": round(min(times["baseline"]) / min(times["this"]), 1)}
        rows.append(row)
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
