"""The ``elens-lite`` command line: parses options and calls the library, nothing more."""

from .main import main

__all__ = ["main"]
