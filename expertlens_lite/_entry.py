"""The ``elens-lite`` console script, kept apart from :mod:`.cli` so that it starts
before the commands' imports (NumPy, Numba, ONNX: over a second), and a Ctrl-C
meanwhile ends the command with one line instead of a traceback of whichever import
it interrupted (seen in an audit)."""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    interrupts: list[int] = []

    def interrupted(signum: int, frame: object) -> None:
        interrupts.append(signum)
        raise KeyboardInterrupt

    # Noted as well as raised: a KeyboardInterrupt raised while Python runs a callback
    # of its import machinery is printed as "Exception ignored" and dropped, and the
    # import goes on (seen once in 8 runs of the test). An ignored SIGINT (a background
    # job) or SIGTERM stays ignored.
    watched = [
        number
        for number, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL))
        if signal.getsignal(number) is default
    ]
    for number in watched:
        signal.signal(number, interrupted)
    try:
        from .cli import main as group
        from .cli.main import Terminated

        def terminate(signum: int, frame: object) -> None:
            raise Terminated

        # Swapped inside the try: a signal between the imports and the swap is one line too.
        if signal.SIGINT in watched:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if signal.SIGTERM in watched:
            signal.signal(signal.SIGTERM, terminate)
    except BaseException:
        # Whatever an interrupted import raised: the interrupt, an ImportError that an
        # extension's init made of it, or a later failure of a half-imported module.
        if not interrupts:
            raise
    if interrupts:
        terminated = interrupts[0] == signal.SIGTERM
        print("terminated" if terminated else "interrupted", file=sys.stderr, flush=True)
        # Not sys.exit: an extension module whose import was cut short can crash the
        # interpreter's shutdown (a segmentation fault was seen), and nothing needs it.
        os._exit(143 if terminated else 130)
    try:
        group()
    except SystemExit:
        # The command is over, its status set: a Ctrl-C or SIGTERM during the
        # interpreter's shutdown (a third of a second) would turn a finished run's 0
        # into 130 or 143.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise
