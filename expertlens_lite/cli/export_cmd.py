"""``elens-lite export``: export a model to ONNX with pooled MLP neurons, into a folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from ..atomic import atomic_dir
from ..errors import InputError
from ..export import QUANTIZATIONS, export_model
from ..models.sources import BUNDLED_MODELS, resolve_model
from ..paths import cache_dir, check_writable
from .main import main


@main.command("export")
@click.option("--model", required=True, help=f"Bundled name ({', '.join(BUNDLED_MODELS)}), Hugging Face id, local folder or .gguf file.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit).")
@click.option("--quantize", type=click.Choice(QUANTIZATIONS), default="none", help="Also write this quantized variant.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder to write the export to.")
@click.option("--force", "--overwrite", "force", is_flag=True, help="Replace --out if it exists.")
def export_command(model: str, revision: str | None, quantize: str, out: Path, force: bool) -> None:
    """Export MODEL to ONNX (pooled MLP neurons as outputs), validated against PyTorch."""
    if out.exists() and not force:
        raise InputError(f"--out {out} exists; pass --force (or --overwrite) to replace it")
    check_writable(out, f"--out {out}")
    cache = cache_dir()
    exported = export_model(resolve_model(model, revision, cache), cache, quantize)
    with atomic_dir(out) as tmp:
        shutil.copytree(exported.directory, tmp, dirs_exist_ok=True)
    manifest = exported.manifest
    click.echo(
        f"exported {model}: {manifest.n_layers} layers, {manifest.n_neurons:,} neurons, "
        f"parity {manifest.parity_max_abs_diff:.1e} → {out}/ ({', '.join(manifest.files)})"
    )
