"""The ``elens-lite`` console script, kept apart from :mod:`.cli` so that it starts
before the commands' imports (NumPy, Numba, ONNX: over a second), and a Ctrl-C
meanwhile ends the command with one line instead of a traceback of whichever import
it interrupted (seen in an audit)."""

from __future__ import annotations

import os
import signal


def _stop_while_starting(signum: int, frame: object) -> None:
    """Ends the process on the spot, with one line. Nothing is written or held yet, so
    nothing needs cleaning up; and an exception raised into an import instead could
    leave an extension module half made, whose unwinding crashed the interpreter
    (SIGSEGV or SIGABRT in 4 of 250 SIGTERMs sent 0.15-0.35 s into the start; none
    of 250 since). Written with ``os.write``: a ``print`` could re-enter a write to
    stderr under way."""
    terminated = signum == signal.SIGTERM
    try:
        os.write(2, b"terminated\n" if terminated else b"interrupted\n")
    except OSError:  # stderr closed: the status says it
        pass
    os._exit(143 if terminated else 130)


def main() -> None:
    # An ignored SIGINT (a background job) or SIGTERM stays ignored.
    watched = [
        number
        for number, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL))
        if signal.getsignal(number) is default
    ]
    for number in watched:
        signal.signal(number, _stop_while_starting)
    from .cli import main as group
    from .cli.main import Terminated

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    def hand_over() -> None:
        """As the command starts, once its imports are made (the group calls this then):
        from here on it may hold locks and write files, and its own handlers clean up."""
        if signal.SIGINT in watched:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if signal.SIGTERM in watched:
            signal.signal(signal.SIGTERM, terminate)

    try:
        group(when_started=hand_over)
    except SystemExit:
        # The command is over, its status set: a Ctrl-C or SIGTERM during the
        # interpreter's shutdown (a third of a second) would turn a finished run's 0
        # into 130 or 143.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise
