"""Optimum ONNX export with pooled MLP neurons exposed, quantization and a manifest."""

from .exporter import ExportedModel, ParityError, export_model, load_pretrained
from .manifest import Manifest
from .quantize import QUANTIZATIONS

__all__ = ["ExportedModel", "Manifest", "ParityError", "QUANTIZATIONS", "export_model", "load_pretrained"]
