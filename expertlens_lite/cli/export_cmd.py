"""``elens-lite export``: export a model to ONNX with pooled MLP neurons, into a folder."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import click

from ..atomic import atomic_dir, check_dir_name, reported_write_failures
from ..config import QUANTIZATIONS
from ..errors import InputError
from ..locks import using_cache
from ..models.sources import BUNDLED_MODELS, resolve_model
from ..paths import MANIFEST, cache_dir, check_openable_by_libraries, check_outside_cache, check_writable, expanded
from .main import command_help, main, verbose_option


@main.command("export", help=command_help("export"), loads=("expertlens_lite.export",))
@verbose_option
@click.option("--model", required=True, help=f"Bundled name ({', '.join(BUNDLED_MODELS)}), Hugging Face id, local folder or .gguf file.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit).")
@click.option("--quantize", type=click.Choice(QUANTIZATIONS), default="none", help="Also make this quantized variant. --out gets every variant the cache holds for the model.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder to write the export to.")
@click.option("--force", "--overwrite", "force", is_flag=True, help="Replace --out if it is an earlier export.")
def export_command(model: str, revision: str | None, quantize: str, out: Path, force: bool) -> None:
    # ONNX (1 s), loaded as the command starts (loads=): not for --help or an option error.
    from ..export import export_model

    cache = cache_dir()
    out = expanded(out)  # as run's --out: ~ in --out=~/x reaches us unexpanded
    _refuse_unsafe_out(out, cache)
    if out.exists() and not force:
        raise InputError(f"--out {out} exists; pass --force (or --overwrite) to replace it")
    check_writable(out, f"--out {out}")
    check_openable_by_libraries(out, f"--out {out}")  # a run could not read the export there
    check_dir_name(out, "--out")
    with using_cache(cache):  # until the copy is made: cache rm waits for it
        exported = export_model(resolve_model(model, revision, cache), cache, quantize)
        _copy_export(exported.directory, out)
    manifest = exported.manifest
    click.echo(
        f"exported {model}: {manifest.n_layers} layers, {manifest.n_neurons:,} neurons, "
        f"parity {manifest.parity_max_abs_diff:.1e} → {out}/ ({', '.join(manifest.files)})"
    )


def _refuse_unsafe_out(out: Path, cache: Path) -> None:
    """Refuse an ``--out`` whose replacement would delete what is not an export: the
    current folder or one holding it (``.``, ``..``, the root), a folder overlapping the
    cache (``ELENS_HOME``), which holds the very export being copied, and any other file or
    folder but an earlier export (it has a manifest) or an empty folder.

    Checked whether or not ``--force`` is given, so that the "pass --force" advice is never
    given for such a folder. Paths are resolved: ``.`` and ``/x/../x`` name the same folder.
    """
    target, cwd = out.resolve(), Path.cwd().resolve()
    if target == cwd:
        raise InputError(f"--out {out} is the current folder, which --force would delete; choose a new folder")
    if target in cwd.parents:
        raise InputError(f"--out {out} holds the current folder, which --force would delete; choose a new folder")
    check_outside_cache(out, cache)
    if out.exists() and not (out.is_dir() and ((out / MANIFEST).is_file() or not any(out.iterdir()))):
        raise InputError(f"--out {out} exists and is not an earlier export, the only folder --force replaces (or an empty one); choose a new folder")


def _copy_export(source: Path, out: Path) -> None:
    """Copy the export folder ``source`` to ``out`` atomically; a failed write (a full
    disk) is one line naming ``--out`` and leaves ``out`` as it was.

    Each file's failure is reported as it happens: ``copytree`` on its own would carry on
    past a full disk and raise one ``shutil.Error`` listing every file, without errno.
    """
    what = f"--out {out}"
    with reported_write_failures(what), atomic_dir(out) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True, copy_function=partial(_copy_file, what=what))


def _copy_file(source: str, target: str, what: str) -> None:
    """``shutil.copy2``, raising a failed write as the ResourceError that ``copytree``
    lets through (it collects OSErrors)."""
    with reported_write_failures(what):
        shutil.copy2(source, target)
