"""The architecture registry and the canonical names of the neuron outputs."""

import re

import pytest

from expertlens_lite.errors import ModelError
from expertlens_lite.export.surgery import neuron_output
from expertlens_lite.models import (
    Architecture,
    get_architecture,
    register,
    supported_model_types,
)


def test_supported_families_are_pinned():
    assert supported_model_types() == [
        "bert", "bloom", "codegen", "distilbert", "electra", "falcon", "gemma", "gemma2", "gpt2", "gpt_bigcode", "gpt_neox",
        "gptj", "granite", "llama", "mistral", "olmo", "olmo2", "opt", "phi", "phi3", "qwen2", "qwen3", "roberta", "stablelm",
        "xlm-roberta",
    ]


def test_unknown_architecture_lists_the_supported_ones():
    with pytest.raises(ModelError, match=r"unsupported model architecture 't5'; supported: bert, bloom, codegen, distilbert"):
        get_architecture("t5")


def test_onnx_scope_follows_the_torchscript_exporter():
    assert get_architecture("bert").onnx_scope(3) == "/encoder/layer.3/output/dense/"
    assert get_architecture("llama").onnx_scope(0) == "/layers.0/mlp/down_proj/"
    assert get_architecture("opt").onnx_scope(11) == "/decoder/layers.11/fc2/"


def test_canonical_neuron_output_names():
    assert [neuron_output(i, "max") for i in range(3)] == [
        "blocks.0.mlp.hook_post.max",
        "blocks.1.mlp.hook_post.max",
        "blocks.2.mlp.hook_post.max",
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model_types": "cohere"}, "model_types of 'cohere' must be a tuple of strings, e.g. ('llama',); got 'cohere'"),
        ({"model_types": ()}, "model_types of 'cohere' must be a tuple of strings"),
        ({"model_types": ("cohere", None)}, "model_types of 'cohere' must be a tuple of strings"),
        ({"mlp_down": None}, "mlp_down of 'cohere' must be a string containing '{layer}': None"),
        ({"mlp_down": "layers.{layer}.{sub}"}, "mlp_down of 'cohere' may hold no placeholder but '{layer}'"),
        ({"causal": "yes"}, "causal of 'cohere' must be True or False; got 'yes'"),
    ],
)
def test_an_architecture_a_registration_would_misread_is_refused(fields, message):
    """("cohere") is a string: its letters c, o, h, e, r were registered as model types."""
    given = {"model_types": ("cohere",), "mlp_down": "layers.{layer}.mlp.down_proj", "causal": True} | fields
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        Architecture("cohere", **given)
    assert "c" not in supported_model_types()


def test_model_types_given_as_a_list_are_a_tuple():
    assert Architecture("cohere", ["cohere"], "layers.{layer}.mlp.down_proj", causal=True).model_types == ("cohere",)


def test_register_rejects_a_claimed_type_and_a_template_without_layer():
    with pytest.raises(ValueError, match="already registered"):
        register(Architecture("other", ("llama",), "x.{layer}.y", causal=True))
    with pytest.raises(ValueError, match="{layer}"):
        Architecture("bad", ("bad",), "layers.mlp", causal=True)
