"""A family a user registers (the README's recipe): it exports and runs like a built-in
one; one whose export cannot take past keys and values runs whole sentences instead;
an entry that does not name a down-projection, or a model type Optimum cannot export,
is refused with a one-line :class:`ModelError` before anything is traced."""

from __future__ import annotations

import json
import logging

import onnx
import pytest
from transformers import AutoConfig

from expertlens_lite.errors import ModelError
from expertlens_lite.export import export_model, exporter
from expertlens_lite.export.surgery import PAST_INPUT
from expertlens_lite.models import Architecture, register, registry
from expertlens_lite.runtime import create_session

from .test_heads import OPTIONS, alike_sentences, assert_equals_whole_forward
from .test_parity import tiny_source

SMALL = {"vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 160}


@pytest.fixture(autouse=True)
def _own_registry(monkeypatch):
    """Each test registers into a copy of the registry, which the built-in one outlives."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


# The tests that register another entry for a built-in model type export into their own
# folder: the session's cache (``elens_home``) holds the tiny models of the built-in entries.


def takes_past(exported) -> bool:
    return any(i.name.startswith(PAST_INPUT) for i in create_session(exported.onnx_path(), "cpu").get_inputs())


def test_the_readme_recipe_adds_a_family_that_shares_heads(tmp_path, elens_home):
    register(Architecture("cohere", model_types=("cohere",), mlp_down="layers.{layer}.mlp.down_proj", causal=True))
    config = AutoConfig.for_model("cohere", num_key_value_heads=2, max_position_embeddings=128, **SMALL)
    source = tiny_source("cohere", tmp_path / "cohere", bos=True, config=config)
    exported = export_model(source, elens_home)
    assert takes_past(exported)
    assert exported.manifest.prefix_token_ids == [992]
    assert_equals_whole_forward(source, exported, alike_sentences(), OPTIONS[0], tmp_path)


def test_a_family_that_cannot_take_past_runs_whole_sentences(tmp_path, monkeypatch, caplog):
    def fails(onnx_config):
        raise RuntimeError("the trace failed\nmore detail")

    monkeypatch.setattr(exporter, "_with_past_mask", fails)
    source = tiny_source("llama", tmp_path / "llama", bos=True)
    with caplog.at_level(logging.WARNING, logger="expertlens_lite"):
        exported = export_model(source, tmp_path / "home")
    assert "llama cannot be exported with past keys and values (RuntimeError: the trace failed); its sentences will run whole" in caplog.text
    assert not takes_past(exported)
    assert exported.manifest.prefix_token_ids == []  # no past to feed a prefix's states to
    for options in OPTIONS[:2]:
        assert_equals_whole_forward(source, exported, alike_sentences(), options, tmp_path)


def test_a_family_whose_past_is_traced_wrong_runs_whole_sentences(tmp_path, monkeypatch, caplog):
    """A trace that runs but computes the past otherwise than the model (MPT, in an
    audit) was refused for its parity, though the export without past matches."""
    parity = exporter._parity

    def wrong_with_past(onnx_path, *args):
        diff, scaled = parity(onnx_path, *args)
        graph = onnx.load(onnx_path, load_external_data=False).graph
        return (0.7, 0.7) if any(i.name.startswith(PAST_INPUT) for i in graph.input) else (diff, scaled)

    monkeypatch.setattr(exporter, "_parity", wrong_with_past)
    source = tiny_source("llama", tmp_path / "llama", bos=True)
    with caplog.at_level(logging.WARNING, logger="expertlens_lite"):
        exported = export_model(source, tmp_path / "home")
    assert "llama exported with past keys and values differs from PyTorch by 7.00e-01 (scaled 7.00e-01 > 1e-04); exporting it without them" in caplog.text
    assert not takes_past(exported) and exported.manifest.prefix_token_ids == []
    assert exported.manifest.parity_max_abs_diff < 1e-4
    assert_equals_whole_forward(source, exported, alike_sentences(), OPTIONS[0], tmp_path)


def test_a_graph_without_past_that_differs_is_refused_once(tmp_path, monkeypatch):
    """The fallback to no past is for a with-past graph that differs; one exported without
    past (its trace failed) that differs is refused, not exported again."""
    def fails(onnx_config):
        raise RuntimeError("the trace failed")

    attempts = []
    export_into = exporter._export_into
    monkeypatch.setattr(exporter, "_with_past_mask", fails)
    monkeypatch.setattr(exporter, "_parity", lambda *args: (0.5, 0.5))
    monkeypatch.setattr(exporter, "_export_into", lambda *args, **kwargs: attempts.append(kwargs) or export_into(*args, **kwargs))
    with pytest.raises(exporter.ParityError, match="differs from PyTorch by 5.00e-01"):
        export_model(tiny_source("llama", tmp_path / "llama", bos=True), tmp_path / "home")
    assert len(attempts) == 1


def test_a_model_type_optimum_cannot_export_is_refused(tmp_path, elens_home):
    register(Architecture("persimmon", model_types=("persimmon",), mlp_down="layers.{layer}.mlp.dense_4h_to_h", causal=True))
    config = AutoConfig.for_model("persimmon", max_position_embeddings=128, **SMALL)
    source = tiny_source("persimmon", tmp_path / "persimmon", bos=True, config=config)
    with pytest.raises(ModelError, match=r"^Optimum's ONNX exporter, which expertlens-lite exports through, does not support model type 'persimmon'$"):
        export_model(source, elens_home)
    assert not (elens_home / "models").exists() or not any("persimmon" in p.name for p in (elens_home / "models").iterdir())


@pytest.mark.parametrize(
    "mlp_down,message",
    [
        ("layers.{layer}.mlp.down", r"^family 'mine': the model has no module 'layers.0.mlp.down' \(its mlp_down entry\)$"),
        ("layers.{layer}.mlp", r"^family 'mine': 'layers.0.mlp' is a LlamaMLP, not a linear layer$"),
        ("layers.{layer}.mlp.up_proj", r"^family 'mine': 'layers.0.mlp.up_proj' maps 64 to 160 units, but an MLP down-projection maps onto the hidden size 64$"),
        ("layers.{layer}.self_attn.o_proj",  # maps onto the hidden size too, and was taken (seen in an audit)
         r"^family 'mine': 'layers.0.self_attn.o_proj' reads 64 units, but the model's MLP has 160: its mlp_down entry must name the MLP's down-projection$"),
    ],
)
def test_an_entry_that_names_no_down_projection_is_refused(mlp_down, message, tmp_path, monkeypatch):
    registry._REGISTRY.pop("llama")
    register(Architecture("mine", model_types=("llama",), mlp_down=mlp_down, causal=True))
    monkeypatch.setattr(exporter, "_onnx_export", lambda *args, **kwargs: pytest.fail("refused only after tracing"))
    with pytest.raises(ModelError, match=message):
        export_model(tiny_source("llama", tmp_path / "llama", bos=True), tmp_path / "home")


def test_an_export_made_with_another_entry_for_its_model_type_is_made_again(tmp_path, caplog):
    """The cache key is the model's: an entry corrected to name another module kept the
    neurons the old entry had read (seen in an audit)."""
    register(Architecture("cohere", model_types=("cohere",), mlp_down="layers.{layer}.mlp.down_proj", causal=False))
    config = AutoConfig.for_model("cohere", num_key_value_heads=2, max_position_embeddings=128, **SMALL)
    source = tiny_source("cohere", tmp_path / "cohere", config=config)
    assert not export_model(source, tmp_path / "home").manifest.causal
    registry._REGISTRY["cohere"] = Architecture("cohere", ("cohere",), "layers.{layer}.mlp.down_proj", causal=True)
    with caplog.at_level(logging.WARNING, logger="expertlens_lite"):
        again = export_model(source, tmp_path / "home")
    assert "is of another entry for 'cohere' (layers.{layer}.mlp.down_proj, causal=False); exporting it again" in caplog.text
    assert again.manifest.causal and again.manifest.mlp_down == "layers.{layer}.mlp.down_proj"


def test_the_command_line_takes_families_from_a_file(tmp_path, monkeypatch):
    """The README's recipe worked only from Python: the CLI could not register a family."""
    from click.testing import CliRunner

    from expertlens_lite.cli import main

    config = AutoConfig.for_model("cohere", num_key_value_heads=2, max_position_embeddings=128, **SMALL)
    folder = tiny_source("cohere", tmp_path / "cohere", config=config).path
    families = tmp_path / "families.py"
    families.write_text(
        "from expertlens_lite.models import Architecture, register\n\n"
        'register(Architecture("cohere", model_types=("cohere",), mlp_down="layers.{layer}.mlp.down_proj", causal=True))\n'
    )
    monkeypatch.setenv("ELENS_HOME", str(tmp_path / "home"))
    refused = CliRunner().invoke(main, ["export", "--model", folder, "--out", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "unsupported model architecture 'cohere'" in refused.stderr
    result = CliRunner().invoke(main, ["--families", str(families), "export", "--model", folder, "--out", str(tmp_path / "x")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "x" / "manifest.json").read_text())["units_per_layer"] == [160, 160]


@pytest.mark.parametrize(
    "text, message",
    [
        ("def f(:\n", "families.py:1: SyntaxError: invalid syntax"),
        ("from expertlens_lite.models import Architecture, register\n\nregister(Architecture('x', ('llama',), 'a.{layer}', causal=True))\n",
         "families.py:3: ValueError: model type 'llama' is already registered by 'llama'"),
        (None, "families.py: no such file"),
        ("import sys\nsys.exit(3)\n", "families.py:2: SystemExit: 3"),
    ],
)
def test_a_families_file_that_fails_is_one_line(text, message, tmp_path):
    from click.testing import CliRunner

    from expertlens_lite.cli import main

    if text is not None:
        (tmp_path / "families.py").write_text(text)
    result = CliRunner().invoke(main, ["--families", str(tmp_path / "families.py"), "models"])
    assert result.exit_code == 2 and result.stderr.startswith(f"error: --families {tmp_path}/{message}") and result.stderr.count("\n") == 1, result.stderr


def test_an_encoder_decoder_family_is_refused_before_its_trace(tmp_path):
    """Registered by a user, T5's export was traced and then failed with a traceback in
    the PyTorch check, which gives no decoder inputs (an audit)."""
    register(Architecture("t5", model_types=("t5",), mlp_down="encoder.block.{layer}.layer.1.DenseReluDense.wo", causal=False))
    config = AutoConfig.for_model("t5", vocab_size=1000, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    source = tiny_source("t5", tmp_path / "t5", config=config)
    with pytest.raises(ModelError, match=r"^model 't5' is an encoder-decoder \(t5\); only encoder or decoder stacks are studied$"):
        export_model(source, tmp_path / "home")
    assert not (tmp_path / "home" / "models").exists() or not any((tmp_path / "home" / "models").iterdir())


def test_a_model_type_transformers_does_not_know_is_named_as_unsupported(tmp_path):
    """It was transformers' "does not recognize this architecture", with the hint that the
    folder lacked files (an audit)."""
    (tmp_path / "frob").mkdir()
    (tmp_path / "frob" / "config.json").write_text(json.dumps({"model_type": "frobnicator"}))
    with pytest.raises(ModelError, match=r"^unsupported model architecture 'frobnicator'; supported: "):
        export_model(str(tmp_path / "frob"), tmp_path / "home")
