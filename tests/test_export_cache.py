"""A cached export damaged from outside (a file deleted or cut short, an unreadable
manifest) is exported again, with a warning, instead of failing a run with a traceback."""

from __future__ import annotations

import pytest

from expertlens_lite.export import export_model
from expertlens_lite.export.manifest import MANIFEST, damage

from .test_parity import tiny_source


def cut_short(path):
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize(
    "harm, problem",
    [
        (lambda d: cut_short(d / "model.onnx_data"), "model.onnx_data has"),
        (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json is missing"),
        (lambda d: (d / MANIFEST).write_text("{cut"), f"{MANIFEST} cannot be read"),
    ],
)
def test_a_damaged_export_is_made_again(harm, problem, tmp_path, caplog):
    source = tiny_source("bert", tmp_path / "bert")
    exported = export_model(source, tmp_path / "home")
    assert damage(exported.directory) is None
    sizes = exported.manifest.sizes
    assert {"model.onnx", "model.onnx_data", "tokenizer.json", "embeddings.npy"} <= set(sizes)
    harm(exported.directory)
    assert problem in damage(exported.directory)
    again = export_model(source, tmp_path / "home")
    assert f"the cached export {exported.directory} is damaged ({problem}" in caplog.text
    assert damage(again.directory) is None
    assert again.manifest.sizes == sizes and again.manifest.files == exported.manifest.files  # the same export, whole


def test_a_quantized_variant_is_covered_too(tmp_path):
    exported = export_model(tiny_source("bert", tmp_path / "bert"), tmp_path / "home", "int8")
    int8 = [name for name in exported.manifest.sizes if "int8" in name]
    assert int8, exported.manifest.sizes
    cut_short(exported.directory / int8[0])
    assert damage(exported.directory).startswith(f"{int8[0]} has")
