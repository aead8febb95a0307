"""A cached export or dequantized GGUF folder damaged from outside (a file deleted or
cut short, an unreadable manifest) is made again, with a warning, instead of failing a
run with a traceback."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from expertlens_lite.atomic import file_sizes, write_json
from expertlens_lite.errors import ModelError
from expertlens_lite.export import export_model
from expertlens_lite.export.exporter import export_dir
from expertlens_lite.export.manifest import MANIFEST, damage
from expertlens_lite.export.quantize import onnx_filename
from expertlens_lite.models import sources
from expertlens_lite.models.sources import file_sha256

from .test_parity import tiny_source


def edit_manifest(directory, **fields):
    data = json.loads((directory / MANIFEST).read_text())
    (directory / MANIFEST).write_text(json.dumps(data | fields))


def cut_short(path):
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize(
    "harm, problem",
    [
        (lambda d: cut_short(d / "model.onnx_data"), "model.onnx_data has"),
        (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json is missing"),
        (lambda d: (d / MANIFEST).write_text("{cut"), f"{MANIFEST} cannot be read"),
        (lambda d: edit_manifest(d, sizes=None, units_per_layer="six"), f"{MANIFEST} cannot be read: fields of the wrong type: units_per_layer, sizes"),
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


def test_a_manifest_field_of_a_later_version_is_kept_not_refused(tmp_path):
    source = tiny_source("bert", tmp_path / "bert")
    exported = export_model(source, tmp_path / "home")
    edit_manifest(exported.directory, field_of_a_later_version=[1, 2])
    assert damage(exported.directory) is None
    export_model(source, tmp_path / "home", "int8")  # adds a variant: saves the manifest again
    assert json.loads((exported.directory / MANIFEST).read_text())["field_of_a_later_version"] == [1, 2]


def test_a_quantized_variant_is_covered_too(tmp_path):
    exported = export_model(tiny_source("bert", tmp_path / "bert"), tmp_path / "home", "int8")
    int8 = [name for name in exported.manifest.sizes if "int8" in name]
    assert int8, exported.manifest.sizes
    cut_short(exported.directory / int8[0])
    assert damage(exported.directory).startswith(f"{int8[0]} has")


def _dequantized_copy(home, files: dict[str, bytes]):
    """A stand-in GGUF file (only its magic is real) and, in ``home``, the folder a
    dequantization of it would have written: ``files`` and their sizes."""
    gguf = home / "model.gguf"
    gguf.parent.mkdir(parents=True, exist_ok=True)
    gguf.write_bytes(b"GGUF" + bytes(60))
    folder = home / "gguf" / file_sha256(gguf)[:16]
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    write_json(folder / "sizes.json", file_sizes(folder, leave_out="sizes.json"))
    return gguf, folder


def test_a_dequantized_gguf_folder_is_reused_without_reading_the_gguf(tmp_path, monkeypatch):
    """A warm run does not parse the GGUF metadata (6 s for SmolLM2) or import PyTorch."""
    gguf, folder = _dequantized_copy(tmp_path, {"config.json": b"{}", "model.safetensors": bytes(100)})

    def unread(path):
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(sources, "gguf_architecture", unread)
    assert sources.gguf_to_folder(gguf, tmp_path) == folder


@pytest.mark.parametrize(
    "harm, problem",
    [
        (lambda d: cut_short(d / "model.safetensors"), "model.safetensors has 50 bytes, not 100"),
        (lambda d: (d / "config.json").unlink(), "config.json is missing"),
        (lambda d: (d / "sizes.json").unlink(), "no sizes.json"),
    ],
)
def test_a_damaged_dequantized_gguf_folder_is_made_again(harm, problem, tmp_path, caplog):
    """Detected, and dequantized again: here that fails on the stand-in file, which is
    no real GGUF model (the real one's dequantization is tested in test_smollm2)."""
    gguf, folder = _dequantized_copy(tmp_path, {"config.json": b"{}", "model.safetensors": bytes(100)})
    harm(folder)
    with pytest.raises(ModelError, match="is not a readable GGUF model file"):
        sources.gguf_to_folder(gguf, tmp_path)
    assert f"the dequantized copy of model.gguf in {folder} cannot be reused ({problem}" in caplog.text


def _leave(path, is_dir: bool) -> None:
    """Scratch work that a run killed outright leaves behind (it never reaches its ``finally``)."""
    if is_dir:
        path.mkdir(parents=True)
        (path / "model.onnx_data").write_bytes(bytes(1000))
    else:
        path.write_bytes(bytes(1000))


def test_what_killed_exports_left_is_removed_by_the_next_one(tmp_path):
    """Seen in an audit: each SIGKILL during an export or an int8 quantization left
    87-132 MB of scratch in the cache that no later run removed."""
    source = tiny_source("bert", tmp_path / "bert")
    exported = export_model(source, tmp_path / "home")
    directory = exported.directory
    leftovers = [
        (directory.parent / f".{directory.name}.k1ll3d.tmp", True),  # a whole export copy
        (directory.parent / f".{directory.name}.k1ll3d.old", True),  # the one it replaced
        (directory / ".quantize-k1ll3d", True),  # the int8 quantizer's scratch
        (directory / ".calibration-probe-12345.onnx", False),
        (directory / ".manifest.json.k1ll3d.tmp", False),  # an atomic file write
    ]
    for path, is_dir in leftovers:
        _leave(path, is_dir)
    again = export_model(source, tmp_path / "home", "int8")
    assert [path for path, _ in leftovers if path.exists()] == []
    assert damage(again.directory) is None and again.manifest.files.keys() > exported.manifest.files.keys()


def test_what_killed_dequantizations_left_is_removed_by_the_next_run(tmp_path):
    gguf, folder = _dequantized_copy(tmp_path, {"config.json": b"{}", "model.safetensors": bytes(100)})
    leftovers = [folder.parent / f".{folder.name}.k1ll3d.tmp", folder.parent / f".{folder.name}.k1ll3d.old"]
    for path in leftovers:
        _leave(path, True)
    assert sources.gguf_to_folder(gguf, tmp_path) == folder
    assert [path for path in leftovers if path.exists()] == []


def _modes(folder) -> dict[str, str]:
    return {str(path.relative_to(folder)): oct(path.stat().st_mode & 0o777) for path in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_cached_files_get_the_modes_the_umask_gives_new_files(mask, tmp_path):
    """ONNX's external data (and safetensors' weights) used to be written 0600: a cache
    shared with collaborators was unreadable to them. A setgid folder stays setgid."""
    source = tiny_source("bert", tmp_path / "bert")
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models").chmod(0o2775)
    previous = os.umask(mask)
    try:
        for quantize in ("none", "int8", "fp16"):
            exported = export_model(source, home, quantize)
    finally:
        os.umask(previous)
    files = _modes(exported.directory)
    assert {"model.onnx_data", f"{onnx_filename('int8')}.data", "model.fp16.onnx.data"} <= files.keys()
    assert files == dict.fromkeys(files, oct(0o666 & ~mask))
    assert oct(exported.directory.stat().st_mode & 0o7777) == oct(stat.S_ISGID | (0o777 & ~mask))


def test_files_beside_the_model_do_not_make_it_another_model(tmp_path):
    """Results written into the model folder made every run export the model anew."""
    folder = Path(tiny_source("bert", tmp_path / "bert").path)
    before = sources.resolve_model(str(folder), None, tmp_path / "home").fingerprint
    (folder / "README.md").write_text("notes")
    (folder / "notes.ipynb").write_text("{}")
    (folder / "results").mkdir()
    (folder / "results" / "summary.json").write_text("{}")
    for name in ("summary.json", "experts.csv", "trainer_state.json", "training_args.bin", "notes.txt"):  # --out the folder itself
        (folder / name).write_text("{}")
    assert sources.resolve_model(str(folder), None, tmp_path / "home").fingerprint == before
    config = folder / "config.json"
    config.write_text(config.read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 1'))
    assert sources.resolve_model(str(folder), None, tmp_path / "home").fingerprint != before


def test_a_model_to_export_may_be_given_as_a_model_value(tmp_path):
    """``export_model("minilm", cache)`` failed with AttributeError: it took only a
    ModelSource from resolve_model."""
    folder = tiny_source("bert", tmp_path / "bert").path
    assert export_model(Path(folder), tmp_path / "home").directory == export_model(sources.resolve_model(folder, None, tmp_path / "home"), tmp_path / "home").directory
    with pytest.raises(ModelError, match=r"^a model to export is a ModelSource \(resolve_model\) or a --model value; got 3$"):
        export_model(3, tmp_path / "home")


def test_a_cached_export_of_a_gguf_does_not_need_its_dequantized_copy(tmp_path):
    """``cache rm gguf/...`` removed the copy and the next run on the cached export made it
    again (34 s, 542 MB for SmolLM2; an audit): the copy is now made only when the weights
    are read. Here the export of a stand-in GGUF file (not a model: reading it would fail)
    is one made from a tiny model, moved where the GGUF's export goes."""
    home = tmp_path / "home"
    made = export_model(tiny_source("bert", tmp_path / "bert"), home).directory
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    source = sources.resolve_model(str(gguf), None, home)
    assert source.gguf == str(gguf) and source.path == str(home / "gguf" / file_sha256(gguf)[:16])
    made.rename(export_dir(source, home))
    assert export_model(source, home).directory == export_dir(source, home)
    assert not (home / "gguf").exists()


def test_a_renamed_gguf_file_reuses_its_export(tmp_path):
    """Its export went into a folder of the file's name: exported again under another
    (an audit). Stand-in GGUF files, as above: reading one would fail."""
    home = tmp_path / "home"
    made = export_model(tiny_source("bert", tmp_path / "bert"), home).directory
    first, renamed = tmp_path / "model.gguf", tmp_path / "renamed.gguf"
    for path in (first, renamed):
        path.write_bytes(b"GGUF" + bytes(60))
    source = sources.resolve_model(str(first), None, home)
    made.rename(export_dir(source, home))
    assert export_model(str(renamed), home).directory == export_dir(source, home)


def test_folders_of_other_weights_alike_in_names_sizes_and_times_get_their_own_exports(tmp_path):
    """Their fingerprints are equal: found by its key alone, the first one's export was
    the second one's too (a review of the change above)."""

    def scaled(model):
        import torch

        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(1.5)

    folders = [tmp_path / "model_a", tmp_path / "model_b"]
    tiny_source("bert", folders[0])
    tiny_source("bert", folders[1], edit=scaled)
    for folder in folders:
        for file in folder.iterdir():
            os.utime(file, ns=(10**18, 10**18))
    a, b = (export_model(str(folder), tmp_path / "home") for folder in folders)
    assert a.directory != b.directory and not np.array_equal(a.embeddings(), b.embeddings())


def test_two_labels_of_one_hub_commit_share_an_export(tmp_path):
    """A branch and the commit it points to are the same weights (the key held the label)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    branch, sha = (sources.ModelSource("org/model", "org/model", label, commit, commit) for label in ("step1000", commit))
    assert export_dir(branch, tmp_path) == export_dir(sha, tmp_path)
    other = sources.ModelSource("org/model", "org/model", "step2000", "f" * 40, "f" * 40)
    assert export_dir(other, tmp_path) != export_dir(branch, tmp_path)


def test_a_revision_of_another_type_is_one_line(tmp_path):
    """An int was an AttributeError on ``.strip`` (an audit)."""
    with pytest.raises(ModelError, match=r"^a revision must be a string \(a branch, tag or commit\); got 1$"):
        sources.resolve_model("minilm", 1, tmp_path)


def test_a_model_of_few_positions_is_checked_and_calibrated_on_sentences_it_can_read(tmp_path):
    """A GPT-2 of 16 positions failed with an IndexError inside PyTorch on the export's
    third check sentence (18 tokens here), and its int8 variant inside ONNX Runtime on
    the bundled corpus's longer sentences (an audit)."""
    from transformers import AutoConfig

    config = AutoConfig.for_model("gpt2", vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_inner=192, n_positions=16)
    exported = export_model(tiny_source("gpt2", tmp_path / "gpt2", config=config), tmp_path / "home", "int8")
    assert exported.manifest.parity_max_abs_diff <= 1e-4 and onnx_filename("int8") in exported.manifest.files


def test_a_model_too_short_for_every_calibration_sentence_is_refused_int8(tmp_path):
    """Its int8 variant was made with no calibration at all, silently (a review)."""
    from transformers import AutoConfig

    config = AutoConfig.for_model("gpt2", vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_inner=192, n_positions=6)
    source = tiny_source("gpt2", tmp_path / "gpt2", config=config)
    with pytest.raises(ModelError, match=r"reads at most 6 tokens, fewer than any sentence the int8 variant is calibrated on; use --quantize none or fp16$"):
        export_model(source, tmp_path / "home", "int8")
