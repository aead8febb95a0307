"""Responses: length-bucketed batches give the same rows as one-by-one runs; batches
run side by side give the same outputs in the same order; an interrupted run resumes
from its finished batches; padding never wins the max."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from expertlens_lite import runtime
from expertlens_lite.atomic import write_text
from expertlens_lite.batching import (
    PoolingOptions,
    encode,
    iter_batches,
    length_buckets,
    make_batch,
    pad_id,
)
from expertlens_lite.concepts import read_corpus
from expertlens_lite.export.surgery import neuron_output
from expertlens_lite.paths import bundled
from expertlens_lite.runtime import compute_responses, create_session, run_batches

SENTENCES = read_corpus(bundled("corpus.txt"))[::97][:20]


class Interrupt(Exception):
    pass


def test_buckets_cover_every_row_once_sorted_by_length():
    lengths = np.array([5, 3, 9, 3, 7, 1, 8])
    buckets = length_buckets(lengths, 3)
    assert sorted(np.concatenate(buckets).tolist()) == list(range(7))
    assert [lengths[b].tolist() for b in buckets] == [[1, 3, 3], [5, 7, 8], [9]]


def test_pool_mask_leaves_out_padding_special_and_first_tokens(minilm):
    tokenizer = minilm.tokenizer()
    encoded = encode(tokenizer, ["Birds sing.", "The long kitchen table was covered in flour."])
    batch = make_batch(encoded, [0, 1], pad_id(tokenizer), PoolingOptions())
    n0 = len(encoded.input_ids[0])
    assert batch["attention_mask"][0, n0:].sum() == 0 and batch["pool_mask"][0, n0:].sum() == 0
    assert batch["pool_mask"][0, 0] == 0 and batch["pool_mask"][0, n0 - 1] == 0  # [CLS], [SEP]
    skip = make_batch(encoded, [0, 1], pad_id(tokenizer), PoolingOptions(skip_first_token=True))
    assert skip["pool_mask"][0, 1] == 0 and skip["pool_mask"][0, 2] == 1
    keep = make_batch(encoded, [0, 1], pad_id(tokenizer), PoolingOptions(keep_special_tokens=True))
    assert (keep["pool_mask"] == keep["attention_mask"]).all()


def test_batched_rows_equal_single_sentence_rows(minilm, tmp_path):
    batched = compute_responses(minilm, SENTENCES, tmp_path / "batched", batch_size=7, device="cpu")
    single = compute_responses(minilm, SENTENCES, tmp_path / "single", batch_size=1, device="cpu")
    assert np.abs(np.asarray(batched.neurons) - np.asarray(single.neurons)).max() < 1e-4
    assert np.abs(np.asarray(batched.sentence_embeddings) - np.asarray(single.sentence_embeddings)).max() < 1e-4


def interrupt_after(exported, sentences, directory, batches: int) -> None:
    """Run :func:`compute_responses` (batches of 4) and stop it, as Ctrl-C would, once
    ``batches`` batches are finished."""
    calls = []

    def stop(done, total):
        calls.append(done)
        if len(calls) == batches:
            raise Interrupt

    with pytest.raises(Interrupt):
        compute_responses(exported, sentences, directory, batch_size=4, device="cpu", progress=stop)


def count_batches_run(monkeypatch) -> list[int]:
    """A list that every batch run from now on appends to."""
    ran: list[int] = []
    run_batch = runtime.run_batch
    monkeypatch.setattr(runtime, "run_batch", lambda *args: ran.append(1) or run_batch(*args))
    return ran


def test_interrupted_run_resumes(minilm, tmp_path, monkeypatch):
    interrupt_after(minilm, SENTENCES, tmp_path, 2)
    assert not list(tmp_path.glob("responses/*/neurons.npy"))  # nothing final after a crash
    resumed_calls, ran = [], count_batches_run(monkeypatch)
    resumed = compute_responses(
        minilm, SENTENCES, tmp_path, batch_size=4, device="cpu", progress=lambda d, t: resumed_calls.append(d)
    )
    assert len(ran) == 5 - 2  # only the unfinished batches ran
    assert resumed_calls == [4, 8, 12, 16, 20]  # and progress counts the finished ones
    fresh = compute_responses(minilm, SENTENCES, tmp_path / "fresh", batch_size=4, device="cpu")
    np.testing.assert_array_equal(np.asarray(resumed.neurons), np.asarray(fresh.neurons))
    again = compute_responses(minilm, SENTENCES, tmp_path, batch_size=4, device="cpu", progress=lambda d, t: pytest.fail("recomputed"))
    np.testing.assert_array_equal(np.asarray(again.neurons), np.asarray(fresh.neurons))


def test_damaged_cached_responses_are_computed_again(minilm, tmp_path, caplog):
    first = np.array(compute_responses(minilm, SENTENCES, tmp_path, batch_size=4, device="cpu").neurons)
    (path,) = tmp_path.glob("responses/*/neurons.npy")
    with path.open("r+b") as handle:  # cut short from outside: a full disk while copying the cache
        handle.truncate(path.stat().st_size // 2)
    again = compute_responses(minilm, SENTENCES, tmp_path, batch_size=4, device="cpu")
    assert "are damaged (mmap length is greater than file size); computing them again" in caplog.text
    np.testing.assert_array_equal(np.asarray(again.neurons), first)
    # Replaced from outside by another matrix: it was refused, blaming the caller's hash (an audit).
    for replacement in (np.zeros((10, 10), np.float32), first.astype(np.float64), first[:, :-1]):
        np.save(path, replacement)
        caplog.clear()
        again = compute_responses(minilm, SENTENCES, tmp_path, batch_size=4, device="cpu")
        assert "are damaged (neurons.npy is " in caplog.text
        np.testing.assert_array_equal(np.asarray(again.neurons), first)


def test_responses_are_keyed_by_the_onnx_file_that_computes_them(minilm):
    import dataclasses

    from expertlens_lite.export import ExportedModel
    from expertlens_lite.runtime import responses_key

    def key(files, quantize):
        manifest = dataclasses.replace(minilm.manifest, files=files)
        return responses_key(ExportedModel(minilm.directory, manifest), "sentences", PoolingOptions(), quantize)

    files = {"model.onnx": "a", "model.int8.onnx": "b"}
    assert key(files, "int8") != key({**files, "model.int8.onnx": "c"}, "int8")  # int8 made again, differently
    assert key(files, "none") == key({**files, "model.int8.onnx": "c"}, "none")
    assert key(files, "none") != key({**files, "model.onnx": "d"}, "none")


def _minilm_batches(minilm, size=3):
    tokenizer = minilm.tokenizer()
    return [batch for _, batch in iter_batches(encode(tokenizer, SENTENCES), size, pad_id(tokenizer), PoolingOptions())]


def test_batches_side_by_side_match_one_at_a_time_in_order(minilm):
    session = create_session(minilm.onnx_path(), "cpu", threads=1)
    names = [neuron_output(i, "max") for i in range(minilm.manifest.n_layers)]
    batches = _minilm_batches(minilm)
    one = list(run_batches(session, names, batches, "cpu", workers=1))
    side_by_side = list(run_batches(session, names, batches, "cpu", workers=3))
    assert len(side_by_side) == len(batches)
    for a, b, batch in zip(one, side_by_side, batches):
        assert a[0].shape[0] == batch["input_ids"].shape[0]
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_stopping_early_starts_no_further_batches(minilm):
    session = create_session(minilm.onnx_path(), "cpu", threads=1)
    names = [neuron_output(0, "max")]
    batches = _minilm_batches(minilm, size=1)
    taken = []

    def feed():
        for batch in batches:
            taken.append(batch)
            yield batch

    results = run_batches(session, names, feed(), "cpu", workers=2)
    next(results)
    results.close()
    assert len(taken) <= 4 < len(batches)  # at most the workers' batches and one queued


def test_two_runs_of_the_same_new_responses_compute_them_once(minilm, tmp_path, monkeypatch, caplog):
    """A second run that needs the responses a first one is computing waits for them and
    reuses them; both used to write the same partial files, and one failed with a traceback."""
    ran = count_batches_run(monkeypatch)
    first_batch, results = threading.Event(), {}

    def slow_start(done, total):
        if not first_batch.is_set():
            first_batch.set()
            time.sleep(1.0)  # the second run reaches the lock meanwhile

    def run(name, progress=None):
        results[name] = compute_responses(minilm, SENTENCES, tmp_path, batch_size=4, device="cpu", progress=progress)

    first = threading.Thread(target=run, args=("first", slow_start))
    first.start()
    assert first_batch.wait(60)
    run("second")
    first.join()
    assert len(ran) == 5  # one run's batches
    assert "waiting for another elens-lite run that is making the same responses" in caplog.text
    np.testing.assert_array_equal(np.asarray(results["first"].neurons), np.asarray(results["second"].neurons))


def test_responses_are_keyed_by_the_sentences_themselves(minilm, tmp_path):
    """The key was a hash the caller gave: one given for another list of the same length
    returned that list's matrix, silently (an audit); of another length, it was refused."""
    first = np.array(compute_responses(minilm, SENTENCES[:3], tmp_path, batch_size=4, device="cpu").neurons)
    other = np.array(compute_responses(minilm, SENTENCES[1:4], tmp_path, batch_size=4, device="cpu").neurons)
    np.testing.assert_array_equal(other[:2], first[1:])
    assert not np.array_equal(other[2], first[0]) and len(list(tmp_path.glob("responses/*"))) == 2


def test_rows_are_on_the_disk_before_the_progress_file_counts_them(minilm, tmp_path, monkeypatch):
    """After a power cut, a progress file that reached the disk before its rows did
    would make a resumed run read those rows back as zeros."""
    events: list[str] = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: events.append("flush"), raising=False)  # macOS has none
    write_json = runtime.write_json
    monkeypatch.setattr(runtime, "write_json", lambda path, data: events.append(path.name) or write_json(path, data))
    compute_responses(minilm, SENTENCES[:8], tmp_path, batch_size=4, device="cpu")
    recorded = [i for i, event in enumerate(events) if event == "progress-b4.json"]
    assert len(recorded) == 2 and all(events[i - 2 : i] == ["flush", "flush"] for i in recorded), events


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names the flushed files from Linux's /proc")
def test_atomic_writes_flush_the_data_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events: list[str] = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(f"flush {os.readlink(f'/proc/self/fd/{fd}')}") or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda src, dst: events.append("rename") or replace(src, dst))
    write_text(tmp_path / "summary.json", "{}")
    (tmp,) = {event.split()[1] for event in events[: events.index("rename")]}
    assert Path(tmp).name.startswith(".summary.json.") and events[events.index("rename") + 1 :] == [f"flush {tmp_path}"]


def test_a_finished_run_does_not_call_its_own_progress_file_a_leftover(minilm, tmp_path, caplog):
    """Every cold run logged "removing …/progress-b32.json, left by an interrupted run"."""
    caplog.set_level(logging.INFO, logger="expertlens_lite")
    compute_responses(minilm, SENTENCES[:4], tmp_path, batch_size=4, device="cpu")
    assert "left by an interrupted run" not in caplog.text


def test_files_of_an_unfinished_run_with_another_batch_size_are_removed(minilm, tmp_path):
    """An interrupted run's partial matrices (82 MB in an audit) stayed for good when
    the rerun chose another --batch-size, which cannot resume them."""
    interrupt_after(minilm, SENTENCES, tmp_path, 2)
    (directory,) = tmp_path.glob("responses/*")
    (directory / ".progress-b4.json._6egrxgv.tmp").write_text("{")  # a write killed halfway (seen in an audit)
    assert sorted(p.name for p in directory.iterdir()) == [
        ".progress-b4.json._6egrxgv.tmp", "about.json", "neurons.partial-b4.npy", "progress-b4.json", "sentence_embeddings.partial-b4.npy"
    ]
    compute_responses(minilm, SENTENCES, tmp_path, batch_size=8, device="cpu")
    assert sorted(p.name for p in directory.iterdir()) == ["about.json", "neurons.npy", "sentence_embeddings.npy"]


# Run on one CPU (as with taskset): starts a session, prints the CPUs its threads may run on.
_CONFINED_SESSION = """
import os, sys
import numpy as np
from onnx import TensorProto, helper
from expertlens_lite.runtime import create_session
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])
graph = helper.make_graph([helper.make_node("MatMul", ["x", "x"], ["y"])], "g", [x], [y])
path = sys.argv[1]
with open(path, "wb") as f:
    f.write(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
session = create_session(path, "cpu")
session.run(["y"], {"x": np.ones((64, 64), np.float32)})
cpus = set()
for tid in os.listdir("/proc/self/task"):
    cpus |= os.sched_getaffinity(int(tid))
print(sorted(cpus))
"""


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to confine to one"
)
def test_a_session_keeps_to_the_cpus_the_process_may_use(tmp_path):
    """ONNX Runtime's default starts a thread per physical core, pinned to it, even on
    CPUs that taskset or a cpuset kept the process off."""
    import subprocess
    import sys

    cpu = min(os.sched_getaffinity(0))
    done = subprocess.run(
        [sys.executable, "-c", _CONFINED_SESSION, str(tmp_path / "matmul.onnx")],
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}), capture_output=True, text=True, timeout=120, check=True,
    )
    assert done.stdout.strip() == f"[{cpu}]", done.stdout
