"""How long ``elens-lite`` commands that load no model take, from the exec to the exit.

Each command runs in a fresh process, as a user's does; the best of ``--repeats`` runs
is taken (start-up time only grows with load). ``--baseline DIR`` runs the same commands
with another checkout of the package first on ``PYTHONPATH`` (the code before a change),
interleaved with this one's, so that both see the same machine load; the ratio is the
figure to compare. A baseline whose ``expertlens_lite`` is not the one imported from it is
refused, and its path and git commit are written to ``--json``.

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
from _machine import elens_lite, machine

COMMANDS = [["--help"], ["--version"], ["models"], ["cache", "ls"], ["run", "--help"], ["export", "--help"]]


def seconds(command: list[str], pythonpath: str | None) -> float:
    env = os.environ | ({"PYTHONPATH": pythonpath} if pythonpath else {})
    start = time.perf_counter()
    subprocess.run([elens_lite(), *command], env=env, capture_output=True, check=True)
    return time.perf_counter() - start


def checked_baseline(parser: argparse.ArgumentParser, directory: str) -> dict[str, str | None]:
    """The baseline's path and git commit, once ``expertlens_lite`` imports from it with
    it first on ``PYTHONPATH`` (else this checkout would be timed twice, ~1.0x)."""
    path = Path(directory).resolve()
    probe = subprocess.run([sys.executable, "-c", "import expertlens_lite; print(expertlens_lite.__file__)"],
                           env=os.environ | {"PYTHONPATH": str(path)}, capture_output=True, text=True, check=False)
    imported = Path(probe.stdout.strip()).resolve() if probe.returncode == 0 else None
    if imported != path / "expertlens_lite" / "__init__.py":
        where = imported or "nowhere (" + (probe.stderr.strip().splitlines() or ["the import failed"])[-1] + ")"
        parser.error(f"--baseline {directory} is not a checkout of the package: with it first on PYTHONPATH, "
                     f"expertlens_lite imports from {where}")
    # The commit only where the baseline is a repository's root, not a folder inside another one.
    git = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True, check=False)
    top, commit = (git.stdout.split() + [None, None])[:2] if git.returncode == 0 else (None, None)
    return {"path": str(path), "git_commit": commit if top and Path(top).resolve() == path else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="a checkout whose expertlens_lite to time beside this one")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    baseline = checked_baseline(parser, args.baseline) if args.baseline else None
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
        Path(args.json).write_text(json.dumps({"machine": machine(), "baseline": baseline, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
