"""Third-party chatter silenced in a block, and the process's settings put back after.

Warning filters, transformers' logging and its progress bars are settings of the
whole process. Two threads in such blocks at once (two exports, runs from threads)
could exit in the wrong order and restore each other's silence for good (with
``warnings.catch_warnings``: the first to leave restores the filters from before
both, the second then the first one's "ignore everything"). So the blocks here take
turns, one lock for all of them, and always nest; until Python 3.14's context-local
warning filters there is no other way.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_TURNS = threading.RLock()  # re-entrant: a silenced block may call another


@contextmanager
def warnings_silenced() -> Iterator[None]:
    """Every warning ignored in the block (other threads' too, as with any filter)."""
    with _TURNS, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings and progress bars off in the block. What they say there is
    noise to a user of this tool: Llama's tokenizer class warns, in a paragraph, about
    its "legacy" default (which the warning itself says to ignore for a tokenizer read
    from a GGUF file, and which matters only when adding tokens); a sharded checkpoint
    draws a bar per load, and the GGUF loader one of its own (through ``tqdm`` itself,
    which transformers' switch does not reach); weights left out of the checkpoint are
    checked by :func:`~expertlens_lite.export.exporter.load_pretrained` itself, in one
    line."""
    import transformers.modeling_gguf_pytorch_utils as gguf_loader
    from transformers.utils import logging as transformers_logging

    with _TURNS:
        verbosity = transformers_logging.get_verbosity()
        bars = transformers_logging.is_progress_bar_enabled()
        gguf_tqdm = gguf_loader.tqdm
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        gguf_loader.tqdm = functools.partial(gguf_tqdm, disable=True)
        try:
            yield
        finally:
            gguf_loader.tqdm = gguf_tqdm
            transformers_logging.set_verbosity(verbosity)
            if bars:
                transformers_logging.enable_progress_bar()
