"""Optimum ONNX export with pooled MLP neurons exposed, quantization and a manifest."""

from .exporter import ExportedModel, ParityError, export_model, load_pretrained
from .manifest import Manifest

__all__ = ["ExportedModel", "Manifest", "ParityError", "export_model", "load_pretrained"]
