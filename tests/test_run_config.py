"""A RunConfig as library users write it: strings for paths, lists or single numbers for
rules; values of the wrong type are one-line InputErrors, not tracebacks."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from expertlens_lite import RunConfig
from expertlens_lite.batching import PoolingOptions
from expertlens_lite.cli.run_cmd import run_command
from expertlens_lite.errors import InputError


def test_strings_lists_and_single_numbers_become_what_the_cli_passes():
    config = RunConfig(out="results", corpus="corpus.txt", taus=[0.5, 0.3], lifts=None, topks=100)
    assert config.out == Path("results") and config.corpus == Path("corpus.txt")
    assert (config.taus, config.lifts, config.topks) == ((0.5, 0.3), (), (100,))
    assert hash(config) == hash(RunConfig(out=Path("results"), corpus=Path("corpus.txt"), taus=(0.5, 0.3), lifts=(), topks=(100,)))
    config.validate()  # "results" does not exist yet: a fresh folder


def test_numpy_values_paths_and_repeats_become_plain_values():
    """A NumPy count passed every check and then failed the JSON summary after the slow
    stages; a repeated τ made two result columns of one name."""
    config = RunConfig(
        model=Path("my-export"), n_pos=np.int64(12), seed=np.int32(3), taus=np.array([0.5, 0.5, 0.3]),
        topks=[100, np.int64(100), 100.0], lifts=np.float32(10), top_fracs=(f for f in [0.01]), overwrite=np.True_,
        pooling=PoolingOptions(keep_special_tokens=np.True_),
    )
    assert config.model == "./my-export"
    assert (config.n_pos, config.seed, config.taus, config.topks, config.lifts, config.top_fracs) == (12, 3, (0.5, 0.3), (100,), (10.0,), (0.01,))
    for value in (config.n_pos, config.seed, *config.taus, *config.topks, *config.lifts, config.overwrite, config.pooling.keep_special_tokens):
        assert type(value) in (int, float, bool)
    assert len({s.label for s in config.selections()}) == len(config.selections())


def test_rule_parameters_take_the_types_the_cli_gives_them(tmp_path):
    """topks=[50.0] and lifts=(2, 3) went so into summary.json, where the CLI writes 50 and
    [2.0, 3.0] (an audit)."""
    config = RunConfig(out=tmp_path / "r", taus=[1, 0.5], topks=[50.0, 50], lifts=(2, 3), top_fracs=np.float32(0.5))
    config.validate()
    assert (config.taus, config.topks, config.lifts, config.top_fracs) == ((1.0, 0.5), (50,), (2.0, 3.0), (0.5,))
    assert [type(v) for v in (*config.taus, *config.topks, *config.lifts, *config.top_fracs)] == [float, float, int, float, float, float]
    assert [s.label for s in config.selections()] == ["tau=1", "tau=0.5", "lift=2", "lift=3", "topk=50", "topfrac=0.5"]


def test_a_path_object_as_model_is_that_path_never_a_bundled_name(tmp_path, monkeypatch):
    """``Path("minilm")`` ran the bundled MiniLM even with no such folder (an audit)."""
    from expertlens_lite.errors import ModelError
    from expertlens_lite.models.sources import resolve_model

    monkeypatch.chdir(tmp_path)
    assert RunConfig(model=Path("minilm")).model == "./minilm"
    assert RunConfig(model=tmp_path / "minilm").model == str(tmp_path / "minilm")
    assert RunConfig(model="minilm").model == "minilm"
    with pytest.raises(ModelError, match=r"^model path not found: \./minilm$"):
        resolve_model(Path("minilm"), None, tmp_path / "home")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model", None, "model must be a bundled name, a model folder, a .gguf file or a hub id; got None"),
        ("revision", 3, "revision must be a string; got 3"),
        ("concepts", ["cat", "dog"], "concepts must be a path (a str or os.PathLike); got list \"['cat', 'dog']\""),
        ("out", 5, "out must be a path (a str or os.PathLike); got int '5'"),
        ("out", "/tmp/x\0y", "out '/tmp/x\\x00y' has a NUL character, which no path can have"),
        ("taus", "0.5", "taus must be numbers; got '0.5'"),
        ("topks", [[100]], "topks must be a number or a list of numbers; got [[100]]"),
        ("overwrite", "yes", "overwrite must be True or False; got 'yes'"),
        ("pooling", PoolingOptions, "keep_special_tokens must be True or False; got 'no'"),
    ],
)
def test_values_of_the_wrong_kind_are_refused_when_the_config_is_made(field, value, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        RunConfig(**{field: value(keep_special_tokens="no") if value is PoolingOptions else value})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_pos", 4.0, "--n-pos must be a whole number; got 4.0"),
        ("seed", 1.5, "--seed must be a whole number; got 1.5"),
        ("n_bootstrap", 150.5, "--n-bootstrap must be a whole number; got 150.5"),
        ("batch_size", "8", "--batch-size must be a whole number; got '8'"),
        ("batch_size", True, "--batch-size must be a whole number; got True"),
        ("pooling", "mean", "--pooling must be 'max' or 'mean' (in a RunConfig: PoolingOptions('max') or PoolingOptions('mean'))"),
        ("bootstrap_unit", "sentences", "--bootstrap-unit must be one of pairs, concepts; got 'sentences'"),
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


@pytest.mark.parametrize(
    "args, message",
    [
        (("minilm",), "run takes a RunConfig, e.g. run(RunConfig(model='minilm')); got str"),
        ((None,), "run takes a RunConfig"),
        ((RunConfig(model="minilm"), "x"), "progress must be a function"),
    ],
)
def test_run_refuses_what_is_no_config_or_progress_before_any_work(args, message):
    """``run("minilm")`` was an AttributeError; a progress that cannot be called failed
    only after the inputs were read."""
    from expertlens_lite import run

    with pytest.raises(InputError, match=re.escape(message)):
        run(*args)
    assert list(Path.cwd().iterdir()) == []


def test_each_field_is_the_run_option_the_docstring_says():
    """RunConfig's docstring maps its fields to ``elens-lite run``'s options, whose
    names the errors use: an option added, renamed or left without a field fails here."""
    options = {param.name: param.opts[0] for param in run_command.params if param.name != "verbose"}
    pooling = {field.name: options.pop(field.name) for field in fields(PoolingOptions)}
    assert pooling == {"pooling": "--pooling", "keep_special_tokens": "--keep-special-tokens", "skip_first_token": "--skip-first-token"}
    rules = {"taus": "--tau", "lifts": "--lift", "topks": "--topk", "top_fracs": "--top-frac"}
    assert options == {field.name: rules.get(field.name, "--" + field.name.replace("_", "-")) for field in fields(RunConfig) if field.name != "pooling"}


def test_the_lazy_names_are_listed():
    """Imported on first use, they were missing from dir(), so no tab completion offered them."""
    import expertlens_lite

    assert {"RunConfig", "RunResult", "run", "__version__"} <= set(dir(expertlens_lite))
