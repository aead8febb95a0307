"""A RunConfig as library users write it: strings for paths, lists or single numbers for
rules; values of the wrong type are one-line InputErrors, not tracebacks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from expertlens_lite import RunConfig
from expertlens_lite.errors import InputError


def test_strings_lists_and_single_numbers_become_what_the_cli_passes():
    config = RunConfig(out="results", corpus="corpus.txt", taus=[0.5, 0.3], lifts=None, topks=100)
    assert config.out == Path("results") and config.corpus == Path("corpus.txt")
    assert (config.taus, config.lifts, config.topks) == ((0.5, 0.3), (), (100,))
    assert hash(config) == hash(RunConfig(out=Path("results"), corpus=Path("corpus.txt"), taus=(0.5, 0.3), lifts=(), topks=(100,)))
    config.validate()  # "results" does not exist yet: a fresh folder


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_pos", 4.0, "--n-pos must be a whole number; got 4.0"),
        ("seed", 1.5, "--seed must be a whole number; got 1.5"),
        ("n_bootstrap", 150.5, "--n-bootstrap must be a whole number; got 150.5"),
        ("batch_size", "8", "--batch-size must be a whole number; got '8'"),
        ("batch_size", True, "--batch-size must be a whole number; got True"),
        ("pooling", "mean", "--pooling must be 'max' or 'mean' (in a RunConfig: PoolingOptions('max') or PoolingOptions('mean'))"),
    ],
)
def test_values_of_the_wrong_type_are_one_line_errors(field, value, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        RunConfig(**{field: value}).validate()


def test_a_leading_tilde_is_the_home_folder(tmp_path, monkeypatch):
    """The shell leaves ``--out=~/r`` as it is; it used to make a folder named ``~``."""
    from expertlens_lite.concepts import read_corpus

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "corpus.txt").write_text("A cat sat.\n")
    assert read_corpus("~/corpus.txt") == ["A cat sat."]
    assert RunConfig(out="~/r", corpus=Path("~/corpus.txt")).out == tmp_path / "r"
