"""The inputs of a run (:class:`RunConfig`) and the values each may take.

Kept apart from :mod:`.pipeline` and light to import (no ONNX, SciPy or Numba): the
``elens-lite run`` and ``export`` commands build their options, defaults and choices
from here, so their ``--help`` and their option errors come in a fraction of a second
instead of after the 2 s those libraries take to load.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .batching import PoolingOptions
from .devices import resolve_device
from .errors import InputError, whole_number
from .paths import (
    MANIFEST,
    RESULT_FILES,
    SUMMARY,
    check_writable,
    expanded,
    model_path_spec,
)
from .selection import Selection

DEFAULT_MODEL = "smollm2"
QUANTIZATIONS = ("none", "int8", "fp16")  # --quantize: see export.quantize
BOOTSTRAP_UNITS = ("pairs", "concepts")  # --bootstrap-unit: what alignment.Bootstrap resamples


# The fields of the selection rules' parameters, and their rules.
_RULE_FIELDS = {"taus": "tau", "lifts": "lift", "topks": "topk", "top_fracs": "topfrac"}


@dataclass(frozen=True)
class RunConfig:
    """Every input of a run. Paths left as None mean the bundled default.

    Each field is the ``elens-lite run`` option of the same name (``n_pos`` is
    ``--n-pos``; the rule lists ``taus``, ``lifts``, ``topks``, ``top_fracs`` are the
    repeatable ``--tau``, ``--lift``, ``--topk``, ``--top-frac``; ``pooling``'s fields
    are ``--pooling``, ``--keep-special-tokens``, ``--skip-first-token``). A model,
    revision, path, rule or ``overwrite`` of the wrong type is refused by its field's
    name when the config is made; the other fields' types and every value are checked
    by :meth:`validate` (as :func:`~.pipeline.run` starts, before anything slow) and
    the stages, naming the option, as the command's users see it. The cache folder is
    not a field: it is ``ELENS_HOME`` (default ``~/.cache/expertlens-lite``), read
    when a run starts."""

    model: str = DEFAULT_MODEL
    revision: str | None = None
    corpus: Path | None = None
    concepts: Path | None = None
    human: Path | None = None
    taus: tuple[float, ...] = (0.5,)
    lifts: tuple[float, ...] = (10.0,)
    topks: tuple[int, ...] = (200,)
    top_fracs: tuple[float, ...] = (0.01,)
    n_pos: int = 30
    n_neg: int = 1000
    min_pos: int = 20
    seed: int = 0
    quantize: str = "none"
    device: str = "auto"
    batch_size: int = 32
    pooling: PoolingOptions = field(default_factory=PoolingOptions)
    n_bootstrap: int = 1000
    bootstrap_unit: str = "pairs"
    out: Path = Path("elens-results")
    overwrite: bool = False

    def __post_init__(self) -> None:
        """Values as library users write them become what the CLI passes: a path as a
        string or any path-like, a rule as a list, an array, one number or None (no such
        rule), NumPy numbers as Python ones. A model, path, rule or ``overwrite`` of the
        wrong kind is refused here, when the config is made (the other fields by
        :meth:`validate`). (A NumPy count used to pass every check and then fail
        the JSON summary after the slow stages; a Path as ``model``, and a list of words
        as ``concepts``, failed with AttributeError and TypeError.)"""
        if isinstance(self.model, os.PathLike):
            object.__setattr__(self, "model", model_path_spec(self.model))
        if not isinstance(self.model, str):
            raise InputError(f"model must be a bundled name, a model folder, a .gguf file or a hub id; got {self.model!r}")
        if self.revision is not None and not isinstance(self.revision, str):
            raise InputError(f"revision must be a string; got {self.revision!r}")
        for name in ("corpus", "concepts", "human", "out"):
            value = getattr(self, name)
            if value is None and name != "out":
                continue
            if not isinstance(value, (str, os.PathLike)):
                raise InputError(f"{name} must be a path (a str or os.PathLike); got {type(value).__name__} {str(value)[:40]!r}")
            if not os.fspath(value):  # Path("") is ".": --out "" wrote into the current folder
                raise InputError(f"{name} is empty; give a path")
            if "\0" in os.fsdecode(value):  # no file name has one; out's was a ValueError from the lock (an audit)
                raise InputError(f"{name} {os.fsdecode(value)[:40]!r} has a NUL character, which no path can have")
            object.__setattr__(self, name, expanded(value))  # ~ too: --out=~/r reaches us unexpanded
        for name in _RULE_FIELDS:
            object.__setattr__(self, name, _rule_values(name, getattr(self, name)))
        for name in ("n_pos", "n_neg", "min_pos", "seed", "batch_size", "n_bootstrap"):
            if (whole := whole_number(getattr(self, name))) is not None:  # others are refused by validate
                object.__setattr__(self, name, whole)
        if isinstance(self.overwrite, np.bool_):
            object.__setattr__(self, "overwrite", bool(self.overwrite))
        if not isinstance(self.overwrite, bool):
            raise InputError(f"overwrite must be True or False; got {self.overwrite!r}")

    def headline(self) -> str:
        """The measure a run leads with: Jaccard of the first top-fraction rule, chosen by
        measurement on two models and three corpora (RESULTS.md); the paper's τ-Jaccard
        when no top fraction is asked for."""
        first = Selection("topfrac", self.top_fracs[0]) if self.top_fracs else Selection("tau", self.taus[0])
        return f"{first.label} jaccard"

    def selections(self) -> list[Selection]:
        """Every selection rule of the run; the paper's τ comes first."""
        return [Selection(rule, value) for name, rule in _RULE_FIELDS.items() for value in getattr(self, name)]

    def validate(self) -> None:
        """Checks of option values and of the results folder, before anything slow starts."""
        for name in ("n_pos", "n_neg", "min_pos", "seed", "batch_size", "n_bootstrap"):
            if whole_number(value := getattr(self, name)) is None:
                raise InputError(f"--{name.replace('_', '-')} must be a whole number; got {value!r}")
        if not self.taus:
            raise InputError("give at least one --tau")
        for name, rule in _RULE_FIELDS.items():  # each rule checks its parameter, and gives it the CLI's type
            object.__setattr__(self, name, tuple(dict.fromkeys(Selection(rule, value).parameter for value in getattr(self, name))))
        if self.quantize not in QUANTIZATIONS:
            raise InputError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}")
        resolve_device(self.device)  # --device cuda without CUDA fails now, not after the export
        if not isinstance(self.pooling, PoolingOptions):  # whose own check names the poolings
            raise InputError("--pooling must be 'max' or 'mean' (in a RunConfig: PoolingOptions('max') or PoolingOptions('mean'))")
        if self.batch_size < 1:
            raise InputError("--batch-size must be a positive integer")
        if self.n_bootstrap < 100:
            raise InputError("--n-bootstrap must be at least 100")
        if self.bootstrap_unit not in BOOTSTRAP_UNITS:
            raise InputError(f"--bootstrap-unit must be one of {', '.join(BOOTSTRAP_UNITS)}; got {self.bootstrap_unit!r}")
        if self.seed < 0:
            raise InputError("--seed must be a non-negative integer")
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"--out {self.out} exists and is not a directory")
        for name in RESULT_FILES:  # found now, not when the results are written after the slow stages
            if (self.out / name).is_dir():
                raise InputError(f"--out {self.out} holds a folder named {name}, where a result file goes; move it, or choose another --out")
        if (self.out / MANIFEST).is_file():  # export --force there deleted the results (an audit)
            raise InputError(f"--out {self.out} holds a model export (its {MANIFEST}); choose another --out")
        if (self.out / SUMMARY).exists() and not self.overwrite:
            raise InputError(f"--out {self.out} holds the results of an earlier run; pass --overwrite (overwrite=True) to replace them, or choose another --out")
        check_writable(self.out, f"--out {self.out}")


def _rule_values(name: str, value: object) -> tuple:
    """The parameters of one selection rule as a tuple of Python numbers, each once
    (a repeated τ made two columns of the same name)."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)):
        raise InputError(f"{name} must be numbers; got {value!r}")
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()  # Python numbers, one for a 0-d array
    if isinstance(value, numbers.Number):
        value = [value]
    try:  # not iterable, or of unhashable items: no list of numbers
        return tuple(dict.fromkeys(v.item() if isinstance(v, np.generic) else v for v in value))
    except TypeError:
        raise InputError(f"{name} must be a number or a list of numbers; got {value!r}") from None
