"""The ``elens-lite`` console script, kept apart from :mod:`.cli` so that it starts
before the commands' imports (NumPy, Numba, ONNX: over a second), and a Ctrl-C
meanwhile ends the command with one line instead of a traceback of whichever import
it interrupted (seen in an audit)."""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    try:
        from .cli import main as group
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        # Not sys.exit: an extension module whose import was cut short can crash the
        # interpreter's shutdown (a segmentation fault was seen), and nothing needs it.
        os._exit(130)
    try:
        group()
    except SystemExit:
        # The command is over, its status set: a Ctrl-C during the interpreter's
        # shutdown (a third of a second) would turn a finished run's 0 into 130.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise
