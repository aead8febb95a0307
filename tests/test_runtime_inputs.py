"""Responses on bad input: files an interrupted run left, damaged from outside, are
not resumed from but computed again with a warning; a sentence longer than the model
reads is a one-line error before any work, not an ONNX Runtime traceback."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from expertlens_lite import runtime
from expertlens_lite.batching import Encoded, PoolingOptions
from expertlens_lite.errors import InputError, ModelError
from expertlens_lite.export import export_model
from expertlens_lite.lengths import check_lengths, export_max_tokens, max_tokens
from expertlens_lite.runtime import compute_responses

from .test_parity import tiny_source
from .test_runtime import SENTENCES, Interrupt, count_batches_run, interrupt_after

BATCHES = 5  # SENTENCES in batches of 4


@pytest.fixture(scope="module")
def fresh_neurons(minilm, tmp_path_factory) -> np.ndarray:
    """The responses of SENTENCES computed in one go, to compare a recovered run with."""
    return np.array(compute_responses(minilm, SENTENCES, tmp_path_factory.mktemp("fresh"), batch_size=4, device="cpu").neurons)


def write_progress(folder, text: str) -> None:
    (folder / "progress-b4.json").write_text(text)


def truncate_partial(folder) -> None:
    path = folder / "neurons.partial-b4.npy"
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def reshape_partial(folder) -> None:
    np.save(folder / "neurons.partial-b4.npy", np.zeros((len(SENTENCES), 7), dtype=np.float32))


DAMAGES = {
    "not JSON": (lambda folder: write_progress(folder, '{"batches_done": 2'), "progress-b4.json cannot be read: JSONDecodeError"),
    "no count": (lambda folder: write_progress(folder, '{"done": 2}'), "progress-b4.json cannot be read: KeyError"),
    "not an object": (lambda folder: write_progress(folder, "[2]"), "progress-b4.json cannot be read: TypeError"),
    "count not a number": (lambda folder: write_progress(folder, '{"batches_done": "2"}'), "records '2' finished batches, of 5"),
    "count below zero": (lambda folder: write_progress(folder, '{"batches_done": -1}'), "records -1 finished batches, of 5"),
    "more batches than the run has": (lambda folder: write_progress(folder, '{"batches_done": 999999}'), "records 999999 finished batches, of 5"),
    "batches laid out otherwise": (lambda folder: write_progress(folder, '{"batches_done": 2, "plan": "0123"}'), "is of batches laid out otherwise"),
    "partial cut short": (truncate_partial, "neurons.partial-b4.npy cannot be read: mmap length is greater than file size"),
    "partial of another shape": (reshape_partial, "neurons.partial-b4.npy holds float32 (20, 7)"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_interrupted_run_is_computed_again(damage, minilm, tmp_path, monkeypatch, caplog, fresh_neurons):
    interrupt_after(minilm, SENTENCES, tmp_path, 2)
    (folder,) = tmp_path.glob("responses/*")
    change, problem = DAMAGES[damage]
    change(folder)
    ran = count_batches_run(monkeypatch)
    again = compute_responses(minilm, SENTENCES, tmp_path, batch_size=4, device="cpu")
    assert "cannot be resumed" in caplog.text and problem in caplog.text
    assert len(ran) == BATCHES  # started afresh, nothing kept
    np.testing.assert_array_equal(np.asarray(again.neurons), fresh_neurons)
    assert sorted(p.name for p in folder.iterdir()) == ["about.json", "neurons.npy", "sentence_embeddings.npy"]


def test_fresh_start_after_damage_drops_the_old_progress_file(minilm, tmp_path, monkeypatch, fresh_neurons):
    """Interrupted again before its first batch, the fresh run must not leave the old
    count next to its new (empty) partial files: the next run would take their zero
    rows as finished."""
    interrupt_after(minilm, SENTENCES, tmp_path, 2)
    (folder,) = tmp_path.glob("responses/*")
    truncate_partial(folder)

    def interrupted(*args):
        raise Interrupt

    with monkeypatch.context() as patch:
        patch.setattr(runtime, "run_batch", interrupted)
        with pytest.raises(Interrupt):
            compute_responses(minilm, SENTENCES, tmp_path, batch_size=4, device="cpu")
    assert not (folder / "progress-b4.json").exists()
    again = compute_responses(minilm, SENTENCES, tmp_path, batch_size=4, device="cpu")
    np.testing.assert_array_equal(np.asarray(again.neurons), fresh_neurons)


LONG = " ".join(["word"] * 700)  # 702 MiniLM tokens with [CLS] and [SEP]


def test_sentence_longer_than_the_model_reads_is_a_one_line_error(minilm, tmp_path):
    message = "sentence 3 of the pool ('word word word word word word ...') has 702 tokens; model 'minilm' reads at most 512: shorten or split it"
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        compute_responses(minilm, [*SENTENCES[:3], LONG], tmp_path, batch_size=4, device="cpu")


def test_sentence_longer_than_the_model_reads_is_refused_before_the_memory_check(minilm, tmp_path, monkeypatch):
    """Its batch needs more memory than any other, but lowering --batch-size cannot help."""
    monkeypatch.setattr(runtime, "available_memory", lambda: 0)
    with pytest.raises(InputError, match="reads at most 512"):
        compute_responses(minilm, [*SENTENCES[:3], LONG], tmp_path, batch_size=4, device="cpu")


def test_sentence_as_long_as_the_model_reads_runs(minilm, tmp_path):
    longest = " ".join(["word"] * 510)  # 512 tokens
    responses = compute_responses(minilm, [*SENTENCES[:3], longest], tmp_path, batch_size=4, device="cpu")
    assert responses.neurons.shape == (4, minilm.manifest.n_neurons)


def test_a_roberta_sentence_past_its_positions_is_refused_and_one_at_them_runs(tmp_path):
    """Tiny RoBERTa: 128 positions, padding id 1, so 126 tokens; its word-level
    tokenizer has no limit. A 127-token sentence failed inside ONNX Runtime."""
    exported = export_model(tiny_source("roberta", tmp_path / "roberta"), tmp_path / "home")
    at_limit, over = " ".join(["w5"] * 126), " ".join(["w5"] * 127)
    with pytest.raises(InputError, match=r"has 127 tokens; model 'roberta' reads at most 126"):
        compute_responses(exported, [over], tmp_path, batch_size=4, device="cpu")
    assert compute_responses(exported, [at_limit], tmp_path, batch_size=4, device="cpu").neurons.shape == (1, exported.manifest.n_neurons)


def encoded_of_lengths(*lengths: int) -> Encoded:
    return Encoded(tuple(np.zeros(n, dtype=np.int64) for n in lengths), tuple(np.zeros(n, dtype=bool) for n in lengths))


def test_length_check_names_the_longest_sentence_and_counts_the_others():
    sentences = ["short", "x" * 200, "a b c", "also over"]
    with pytest.raises(InputError, match=re.escape(f"sentence 1 of the pool ('{'x' * 60} ...') has 600 tokens; model 'm' reads at most 512: shorten or split it (and 1 more sentence(s) over the limit)")):
        check_lengths(encoded_of_lengths(3, 600, 512, 513), sentences, 512, "m")
    check_lengths(encoded_of_lengths(3, 512), sentences[:2], 512, "m")  # at the limit: fine
    check_lengths(encoded_of_lengths(3, 600), sentences[:2], None, "m")  # no known limit: no check


@pytest.mark.parametrize(
    ("config", "tokenizer_config", "limit"),
    [
        ({"max_position_embeddings": 512}, {"model_max_length": 512}, 512),  # BERT
        ({"max_position_embeddings": 514}, {"model_max_length": 512}, 512),  # RoBERTa: two positions for its padding offset
        ({"n_positions": 1024}, {}, 1024),  # GPT-2
        ({"max_positions": 2048}, {}, 2048),
        ({"max_position_embeddings": 8192}, {"model_max_length": 1000000000000000019884624838656}, 8192),  # tokenizer without a limit
        ({}, {"model_max_length": 128}, 128),
        ({"max_position_embeddings": None, "n_positions": 64}, {}, 64),
        ({"max_position_embeddings": "512", "n_positions": True}, {"model_max_length": 1e30}, None),  # nothing usable
        ({}, {}, None),
        # RoBERTa's position ids count on from its padding id: a tokenizer without a limit does not say so
        ({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, {"model_max_length": 1e30}, 512),
        ({"model_type": "xlm-roberta", "max_position_embeddings": 128, "pad_token_id": 1}, {}, 126),
        ({"model_type": "roberta", "max_position_embeddings": 128, "pad_token_id": None}, {}, 128),
    ],
)
def test_max_tokens_is_the_smaller_known_limit(config, tokenizer_config, limit):
    assert max_tokens(config, tokenizer_config) == limit


def test_max_tokens_of_an_export_folder(minilm, tmp_path):
    from expertlens_lite.export import ExportedModel

    assert export_max_tokens(minilm) == 512
    assert export_max_tokens(ExportedModel(tmp_path, minilm.manifest)) is None  # no config files: no check


def _meminfo_bytes(field: str) -> int:
    line = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="reads Linux's /proc/meminfo")
def test_available_memory_counts_the_reclaimable_page_cache(tmp_path):
    """The memory checks compare with what the kernel can hand out (``MemAvailable``),
    not with its free pages alone (``MemFree``), which Linux keeps low by filling RAM
    with cache: runs were refused with 1.5 GB "free" of 24 GB available. A freshly
    written file puts 256 MiB into the page cache, so the two differ by that much."""
    (tmp_path / "cached").write_bytes(os.urandom(256 << 20))
    gap = _meminfo_bytes("MemAvailable") - _meminfo_bytes("MemFree")
    if gap < 128 << 20:
        pytest.skip(f"MemAvailable and MemFree differ by only {gap >> 20} MiB here")
    assert abs(runtime.available_memory() - _meminfo_bytes("MemAvailable")) < gap / 2


@pytest.mark.parametrize(
    ("sentences", "options", "quantize", "batch_size", "message"),
    [
        ("The cat sat.", PoolingOptions(), "none", 4, "sentences must be a non-empty list of strings; got str 'The cat sat.'"),
        ([], PoolingOptions(), "none", 4, "sentences must be a non-empty list of strings; got list '[]'"),
        (SENTENCES[:2], PoolingOptions(), "none", 1.5, "batch_size must be a positive integer; got 1.5"),
        (SENTENCES[:2], PoolingOptions(), "none", "4", "batch_size must be a positive integer; got '4'"),
        (SENTENCES[:2], PoolingOptions(), "int4", 4, "unknown quantization 'int4'; choose one of none, int8, fp16"),
    ],
)
def test_library_inputs_of_the_wrong_kind_are_one_line_errors(minilm, tmp_path, sentences, options, quantize, batch_size, message):
    """A string used to run as one sentence per character, an empty list failed in
    NumPy, and int4 was said to be exportable with --quantize int4."""
    with pytest.raises((InputError, ModelError), match=f"^{re.escape(message)}$"):
        compute_responses(minilm, sentences, str(tmp_path), options=options, quantize=quantize, batch_size=batch_size, device="cpu")


@pytest.mark.parametrize(
    ("sentences", "extra", "message"),
    [
        ([SENTENCES[0], 5], {}, "sentence 1 must be a string of Unicode text; got int '5'"),
        ([SENTENCES[0], None], {}, "sentence 1 must be a string of Unicode text; got NoneType 'None'"),
        ([os.fsdecode(b"caf\xe9")], {}, "sentence 0 must be a string of Unicode text; got str"),
        (SENTENCES[:2], {"options": "mean"}, "options must be a PoolingOptions, e.g. PoolingOptions('mean'); got 'mean'"),
        (SENTENCES[:2], {"progress": 3}, "progress must be a function (done, total) or None; got int"),
    ],
)
def test_sentences_options_and_progress_of_the_wrong_kind_are_refused_before_any_work(minilm, tmp_path, sentences, extra, message):
    """Tracebacks from tokenizers (a TypeError), from the cache key (an AttributeError of
    a str pooling), and after the first batch (a progress that is not a function), found
    by an audit."""
    with pytest.raises(InputError, match=f"^{re.escape(message)}"):
        compute_responses(minilm, sentences, tmp_path, batch_size=4, device="cpu", **extra)
    assert list(tmp_path.iterdir()) == []


def test_a_library_cache_folder_expands_the_home_folder_and_must_be_a_path(minilm, tmp_path, monkeypatch):
    """``~/cache`` made a folder named "~" in the current one; None was a TypeError (an audit)."""
    from expertlens_lite.export import export_model

    monkeypatch.setenv("HOME", str(tmp_path))
    exported = export_model(minilm.directory, "~/cache")  # an export folder: used as it is
    compute_responses(exported, SENTENCES[:2], "~/cache", batch_size=4, device="cpu")
    assert (tmp_path / "cache" / "responses").is_dir() and not Path("~").exists()
    for call in (lambda: export_model("minilm", None), lambda: compute_responses(exported, SENTENCES[:2], None)):
        with pytest.raises(InputError, match=r"^cache_dir must be a folder's path \(a str or os.PathLike\); got None$"):
            call()


def test_unknown_pooling_is_refused_where_the_options_are_made():
    with pytest.raises(InputError, match=r"^pooling must be one of max, mean; got 'median'$"):
        PoolingOptions("median")


def test_a_model_name_for_an_export_is_one_line(tmp_path):
    """export_model takes a --model value, compute_responses an export: a name was an
    AttributeError (an audit)."""
    with pytest.raises(InputError, match=r"^exported must be an ExportedModel, what export_model returns; got str 'minilm'$"):
        compute_responses("minilm", SENTENCES[:2], tmp_path)


def test_an_export_removed_while_held_is_named(minilm, tmp_path):
    """Removed by another process's cache rm, it failed with the tokenizer's bare "No such
    file or directory" (an audit)."""
    import shutil

    from expertlens_lite.errors import ModelError
    from expertlens_lite.export import ExportedModel

    copy = tmp_path / "copy"
    shutil.copytree(minilm.directory, copy)
    held = ExportedModel(copy, minilm.manifest)
    shutil.rmtree(copy)
    with pytest.raises(ModelError, match=rf"^the export in {copy} is gone \(removed by elens-lite cache rm\?\); call export_model again$"):
        compute_responses(held, SENTENCES[:2], tmp_path / "home")
