"""The ``elens-lite`` click group: user errors become one line and exit status 2."""

from __future__ import annotations

import logging
import sys

import click

from .. import __version__
from ..errors import ElensError


class _Group(click.Group):
    """Turns library errors into ``error: …`` on stderr with exit status 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ElensError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; finished work is cached and a rerun resumes", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="elens-lite")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Find expert neurons of word concepts and measure their alignment with human similarity."""
    # Other libraries (ONNX Runtime's quantizer logs to the root logger) stay at warnings.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("expertlens_lite").setLevel(logging.WARNING - 10 * min(verbose, 2))


from . import export_cmd, models_cmd, run_cmd  # noqa: E402,F401  (register subcommands)
