"""The ``elens-lite`` click group: user errors become one line and exit status 2."""

from __future__ import annotations

import errno
import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from .. import __version__
from ..errors import ElensError
from ..paths import shown as path_shown

# What click (8.2 on) raises, to print the help, for a group called without a command.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())

# Each command: its module, imported only when the command is called, and its help, here
# for the list that ``elens-lite --help`` prints. ``run`` and ``export`` load NumPy,
# Numba, SciPy and ONNX (2-3 s) as they start (:class:`_Command`'s ``loads``), which
# ``--help``, ``models``, ``cache`` and their own help and option errors do not need.
_COMMANDS = {
    "cache": ("cache_cmd", "List (ls) or remove (rm) what runs left in the cache (ELENS_HOME)."),
    "export": ("export_cmd", "Export --model to ONNX (pooled MLP neurons as outputs), validated against PyTorch."),
    "models": ("models_cmd", "List the bundled models (usable offline as --model NAME) and supported architectures."),
    "run": ("run_cmd", "Find expert neurons and measure their alignment with human similarity."),
}


def command_help(name: str) -> str:
    """The help of the command ``name`` (its module's decorator takes it from here)."""
    return _COMMANDS[name][1]


class Terminated(KeyboardInterrupt):
    """Raised by the console script's SIGTERM handler (``timeout``, ``kill``, a batch
    scheduler, ``docker stop``): stopped as by a Ctrl-C, so the run's clean-ups run
    (SIGTERM's default action ends the process at once, as SIGKILL does); exit status 143."""


class _Command(click.Command):
    """A command of ``elens-lite``. Its slow imports, ``loads`` (module names), are made
    when it is invoked, so that its ``--help`` and option errors come without them; and
    only then are the signals handed over to it (see :mod:`.._entry`): a Ctrl-C or
    SIGTERM raised into an import can leave an extension module half made."""

    def __init__(self, *args, loads: tuple[str, ...] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loads = loads

    def invoke(self, ctx: click.Context):
        for module in self.loads:
            importlib.import_module(module)
        root = ctx.find_root().command
        if isinstance(root, _Group) and root.when_started is not None:
            root.when_started()
        return super().invoke(ctx)


class _Subgroup(click.Group):
    """A group of commands under ``elens-lite`` (``cache``)."""

    command_class = _Command


class _Group(click.Group):
    """Every user mistake — a bad option or a library :class:`ElensError` — becomes one
    ``error: …`` line on stderr and exit status 2, never a traceback or a usage dump.
    Commands are imported when called (see ``_COMMANDS``)."""

    command_class = _Command
    group_class = _Subgroup
    when_started: Callable[[], None] | None = None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS and cmd_name not in self.commands:
            importlib.import_module(f"{__package__}.{_COMMANDS[cmd_name][0]}")  # its decorator adds it
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's list of commands, from ``_COMMANDS`` rather than from the commands
        themselves, which would import them all."""
        limit = formatter.width - 6 - max(map(len, _COMMANDS))  # click's own limit
        shown = [(name, click.Command(name, help=command_help(name)).get_short_help_str(limit)) for name in sorted(_COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(shown)

    def invoke(self, ctx: click.Context):
        """The group's and the command's work; a Ctrl-C or SIGTERM in it becomes the
        :class:`click.Abort` that :meth:`main` reports. Caught here, before click's own
        handler, which first prints an empty line (for the ``^C`` a terminal echoes): in a
        log, or after a SIGTERM, that was a stray line before the one that says why."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise click.Abort() from exc

    def main(self, *args, when_started: Callable[[], None] | None = None, **kwargs):
        """click's ``main``, with the errors reported as the class says. ``when_started``
        is called as the command starts, once its imports are made: the console
        script's cue to hand the signals over to the command (see :mod:`.._entry`)."""
        self.when_started = when_started
        try:
            status = super().main(*args, standalone_mode=False, **kwargs)
        except _NO_ARGS_IS_HELP as exc:  # a bare ``elens-lite`` asks for the help, no mistake
            click.echo(exc.format_message())
            sys.exit(0)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except ElensError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:
            click.echo(f"error: {_path_trouble(exc)}", err=True)
            sys.exit(2)
        except click.Abort as exc:
            stopped, status = ("terminated", 143) if isinstance(exc.__cause__, Terminated) else ("interrupted", 130)
            if status == 130 and sys.stderr.isatty():  # after the ^C the terminal echoed, on a line of its own
                click.echo(err=True)
            click.echo(f"{stopped}; a rerun resumes from what was finished", err=True)
            sys.exit(status)
        sys.exit(status if isinstance(status, int) else 0)


# What a path the user gave, or the cache folder, can be found to be wherever it is first
# used: one line for each, here, rather than a check at every use (a file where the cache
# keeps a folder, an entry made unreadable, were tracebacks: an audit).
_PATH_TROUBLE = {
    errno.EEXIST: "is there but is not a folder",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "is on a read-only file system",
}


def _path_trouble(exc: OSError) -> str:
    """The one line that says what is wrong with the path in ``exc``; an OSError of
    another kind, or naming no path, is a bug and keeps its traceback."""
    if exc.errno == errno.ENAMETOOLONG:  # pathlib's exists() raises it, for any option or ELENS_HOME
        longest = max(Path(str(exc.filename)).parts, key=lambda part: len(os.fsencode(part)), default="")
        shown = longest[:40] + ("…" if len(longest) > 40 else "")
        return f"a file name is too long ({len(os.fsencode(longest))} bytes): {shown}"
    if exc.errno in _PATH_TROUBLE and exc.filename is not None:
        return f"{path_shown(exc.filename)}: {_PATH_TROUBLE[exc.errno]}"
    raise exc


def _set_verbosity(ctx: click.Context, _param: click.Parameter, verbose: int) -> None:
    """The group's ``-v`` sets the package's log level; a command's can only raise it."""
    # Other libraries (ONNX Runtime's quantizer logs to the root logger) stay at warnings.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger("expertlens_lite")
    level = logging.WARNING - 10 * min(verbose, 2)
    logger.setLevel(level if ctx.parent is None else min(level, logger.getEffectiveLevel()))


def verbose_option(command):
    """``-v`` / ``-vv``, taken before the command or after it (``elens-lite run -v``)."""
    return click.option(
        "-v", "--verbose", count=True, expose_value=False, callback=_set_verbosity, show_default=False,
        help="More log output (-v info, -vv debug).",
    )(command)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="elens-lite")
@verbose_option
@click.option(
    "--families", "family_files", multiple=True, envvar="ELENS_FAMILIES", metavar="FILE",
    help="A Python file of expertlens_lite.models.register calls, run first: model families of your own (repeatable; "
    "or ELENS_FAMILIES, files separated by spaces).",
)
def main(family_files: tuple[str, ...]) -> None:
    """Find expert neurons of word concepts and measure their alignment with human similarity."""
    if family_files:
        from ..models import register_from_file

        for path in family_files:
            register_from_file(path)

