"""``elens-lite models``: the bundled models and the supported architectures."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..errors import ModelError
from ..models import supported_model_types
from ..models.sources import BUNDLED_MODELS
from .main import command_help, main, verbose_option


@main.command("models", help=command_help("models"))
@verbose_option
def models_command() -> None:
    table = Table(title="Bundled models")
    for column in ("name", "model", "size (MB)", "layers", "MLP neurons"):
        table.add_column(column)
    for model in BUNDLED_MODELS.values():
        try:
            info = model.describe()
            table.add_row(model.name, model.description, str(info["size_mb"]), str(info["layers"]), f"{info['neurons']:,}")
        except ModelError as exc:
            table.add_row(model.name, model.description, "not installed", "–", str(exc).split(";")[-1].strip())
    console = Console()
    console.print(table)
    console.print(f"Supported architectures (config.model_type): {', '.join(supported_model_types())}")
