"""``elens-lite cache ls|rm``: what the cache holds, and removing parts of it."""

from __future__ import annotations

import time

import click
from rich.console import Console
from rich.table import Table

from ..atomic import reported_write_failures
from ..cache import cache_entries, remove_cache_entries
from ..errors import InputError, size_text
from ..paths import cache_dir, cache_path
from .main import command_help, main, verbose_option


@main.group("cache", help=command_help("cache"))
def cache_group() -> None:
    pass  # the group itself does nothing: ls and rm do


@cache_group.command("ls")
@verbose_option
def ls_command() -> None:
    """List the cache's entries (exports, responses, GGUF copies) with their sizes."""
    cache = cache_path()
    entries = cache_entries(cache)
    console = Console()
    if not entries:
        console.print(f"the cache {cache} holds nothing")
        return
    table = Table(title=f"Cache {cache}")
    # Long names fold too: unfolded, they left "made from" no width at all (an audit).
    table.add_column("entry", overflow="fold", min_width=20)
    table.add_column("made from", overflow="fold", min_width=16)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("written", no_wrap=True)
    for entry in entries:
        about = entry.about or "–"
        if entry.state != "complete":
            about = f"{_STATES[entry.state]}; {about}"
        elif entry.scratch:
            about = f"{size_text(entry.scratch)} of it left by an interrupted run (cache rm --unfinished); {about}"
        table.add_row(entry.name, about, size_text(entry.size), time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.modified)))
    console.print(table)
    console.print(f"{_count(len(entries))}, {size_text(sum(e.size for e in entries))}; remove with `elens-lite cache rm ENTRY...`")


_STATES = {"being made": "being made by a running elens-lite", "interrupted": "unfinished: left by an interrupted run"}


@cache_group.command("rm")
@verbose_option
@click.argument("names", nargs=-1, metavar="ENTRY...")
@click.option("--all", "everything", is_flag=True, help="Remove every entry.")
@click.option("--unfinished", is_flag=True, help="Remove what interrupted runs left (responses to resume, scratch folders).")
def rm_command(names: tuple[str, ...], everything: bool, unfinished: bool) -> None:
    """Remove cache entries, named as `elens-lite cache ls` prints them; a later run
    makes again what it needs. Refused, and nothing removed, while a run uses the cache."""
    if bool(names) + everything + unfinished != 1:
        raise InputError("give entry names, --all or --unfinished (one of them)")
    cache = cache_dir()
    entries = [] if names else cache_entries(cache)
    chosen = list(names) or [e.name for e in entries if everything or e.state == "interrupted"]
    scratch = [e.name for e in entries if unfinished and e.scratch]
    with reported_write_failures(f"removing from the cache {cache}"):
        freed, removed = remove_cache_entries(cache, chosen, scratch)
    cleared = f" and the scratch interrupted runs left in {_count(len(scratch))}" if scratch else ""
    click.echo(f"removed {_count(removed)}{cleared}, {size_text(freed)} freed")


def _count(n: int) -> str:
    return f"{n} {'entry' if n == 1 else 'entries'}"
