"""Model knowledge: architecture registry, bundled models and model sources."""

from . import families  # noqa: F401  (registers the built-in families)
from .registry import (
    Architecture,
    get_architecture,
    register,
    register_from_file,
    supported_model_types,
)

__all__ = ["Architecture", "get_architecture", "register", "register_from_file", "supported_model_types"]
