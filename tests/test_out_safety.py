"""``--out`` never costs the user a file: folders whose replacement would delete their
own files or the cache are refused, and a full disk is one line that leaves no torn file."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from .test_cli import SLICE_WORDS, assert_user_error, invoke, run_slice

FULL_DISK = OSError(errno.ENOSPC, "No space left on device")
SHORT_WRITE = OSError("36864 requested and 20448 written")  # how np.save reports a full disk


def folder_with_a_file(folder: Path) -> Path:
    """``folder`` holding a file of the user's, which nothing may delete."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "thesis.tex").write_text("years of work")
    return folder


def assert_untouched(folder: Path) -> None:
    assert (folder / "thesis.tex").read_text() == "years of work"


def earlier_export(folder: Path) -> Path:
    """``folder`` as an earlier export: the only kind of folder ``--force`` replaces."""
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("the earlier export")
    return folder


def assert_earlier_export_kept(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]
    assert (folder / "manifest.json").read_text() == "the earlier export"


def test_export_replaces_nothing_but_an_earlier_export_even_with_force(tmp_path):
    mine = folder_with_a_file(tmp_path / "mine")
    assert_user_error(invoke("export", "--model", "minilm", "--out", str(mine), "--force"), "is not an earlier export")
    assert_untouched(mine)


@pytest.mark.parametrize("out, cwd, message", [(".", "mine", "is the current folder"), ("..", "mine/sub", "holds the current folder")])
def test_export_refuses_the_current_folder_even_with_force(out, cwd, message, tmp_path, monkeypatch):
    mine = folder_with_a_file(tmp_path / "mine")
    (tmp_path / cwd).mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path / cwd)
    assert_user_error(invoke("export", "--model", "minilm", "--out", out, "--force"), f"--out {out} {message}")
    assert_untouched(mine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary folder left beside it


def test_export_refuses_the_root_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # without --force: a failing test must not be able to touch /
    assert_user_error(invoke("export", "--model", "minilm", "--out", "/"), "--out / holds the current folder")


def test_an_export_name_too_long_for_its_scratch_folder_is_refused_before_the_export(tmp_path, monkeypatch):
    """The folder's own name fitted, but the temporary one beside it (.NAME.random.tmp)
    did not: the export failed only after its minutes of work (noted in a review)."""
    from expertlens_lite.atomic import check_dir_name

    def no_export(*args, **kwargs):
        raise AssertionError("exported before the --out check")

    monkeypatch.setattr("expertlens_lite.export.export_model", no_export)  # the command imports it when called
    out = tmp_path / ("x" * 242)
    assert_user_error(invoke("export", "--model", "minilm", "--out", str(out)), "--out: the name xxx", "(242 bytes; at most 241 here")
    assert list(tmp_path.iterdir()) == []
    check_dir_name(tmp_path / ("x" * 241), "--out")  # the longest that fits


@pytest.mark.parametrize("out", ["home", "home/models/mine", "."], ids=["the cache", "inside it", "holding it"])
def test_export_refuses_a_folder_overlapping_the_cache_even_with_force(out, tmp_path, monkeypatch):
    home = folder_with_a_file(tmp_path / "home")
    monkeypatch.setenv("ELENS_HOME", str(home))
    out = tmp_path / out
    assert_user_error(invoke("export", "--model", "minilm", "--out", str(out), "--force"), f"--out {out} overlaps the cache folder {home}")
    assert_untouched(home)
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]  # not even an export was made


@pytest.mark.parametrize("out", ["home", "home/models/mine", "."], ids=["the cache", "inside it", "holding it"])
def test_a_run_refuses_an_out_overlapping_the_cache_or_holding_an_export(out, tmp_path, monkeypatch):
    """Results written into the cache went with a cache rm; into an export folder, with an
    export --force there (an audit)."""
    home = folder_with_a_file(tmp_path / "home")
    monkeypatch.setenv("ELENS_HOME", str(home))
    out = tmp_path / out
    assert_user_error(invoke("run", "--model", "minilm", "--out", str(out)), f"--out {out} overlaps the cache folder {home}")
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]
    export = earlier_export(tmp_path / "onnx")
    assert_user_error(invoke("run", "--model", "minilm", "--out", str(export)), f"--out {export} holds a model export (its manifest.json)")


def test_export_to_a_relative_folder_replaces_it_with_force(minilm, tmp_path, monkeypatch):
    """The temporary folder is made beside the resolved --out, not inside the current folder."""
    monkeypatch.chdir(folder_with_a_file(tmp_path / "mine"))
    earlier_export(Path("onnx"))
    result = invoke("export", "--model", "minilm", "--out", "onnx", "--force")
    assert result.exit_code == 0, result.output
    assert json.loads((Path("onnx") / "manifest.json").read_text())["model"] == "minilm"
    assert sorted(p.name for p in Path.cwd().iterdir()) == ["onnx", "thesis.tex"]


def test_export_to_a_full_disk_is_one_line_and_keeps_the_old_folder(minilm, tmp_path, monkeypatch):
    out = earlier_export(tmp_path / "onnx")
    real_copyfile = shutil.copyfile

    def full_at_weights(source, target, **kwargs):
        if Path(source).name == "model.onnx_data":  # some files are copied by now
            raise FULL_DISK
        return real_copyfile(source, target, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", full_at_weights)
    assert_user_error(invoke("export", "--model", "minilm", "--out", str(out), "--force"), f"--out {out}: no space left on device")
    assert_earlier_export_kept(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]  # the partial copy is gone


def test_export_keeps_the_old_folder_when_the_new_one_cannot_be_moved_in(minilm, tmp_path, monkeypatch):
    """The folder --force replaces is deleted only once the new one is in place."""
    out = earlier_export(tmp_path / "onnx")
    real_replace = os.replace

    def failing_disk(source, target):
        if str(source).endswith(".tmp"):  # the complete new export, moved onto --out
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_disk)
    assert_user_error(invoke("export", "--model", "minilm", "--out", str(out), "--force"), f"--out {out}: input/output error")
    assert_earlier_export_kept(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


def failing_at_ap(out: Path, failure: OSError, monkeypatch) -> None:
    """Writing ``ap.npy`` into ``out`` raises ``failure``, as a full disk would."""
    real_save = np.save

    def save(file, *args, **kwargs):
        if Path(file).parent == out:
            raise failure
        return real_save(file, *args, **kwargs)

    monkeypatch.setattr(np, "save", save)


@pytest.mark.parametrize("failure, reason", [(FULL_DISK, "no space left on device"), (SHORT_WRITE, "the write was cut short (36864 requested and 20448 written)")])
def test_run_results_to_a_full_disk_is_one_line_and_leaves_no_torn_file(failure, reason, minilm, tmp_path, monkeypatch):
    out = folder_with_a_file(tmp_path / "results")
    (tmp_path / "concepts.txt").write_text("\n".join(SLICE_WORDS) + "\n")
    failing_at_ap(out, failure, monkeypatch)
    assert_user_error(run_slice(out, tmp_path / "concepts.txt"), f"--out {out}: {reason}")
    assert_untouched(out)
    # Nothing of the run: its files go in together once all are written; no temporary file.
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def failing_at_ap_flush(out: Path, failure: OSError, monkeypatch) -> None:
    """Flushing ``ap.npy`` in ``out`` raises ``failure``: NFS and quotas may report a full
    disk only there."""
    from expertlens_lite import atomic

    real_flushed = atomic.flushed

    def flushed(tree: Path) -> None:
        if tree.parent == out and tree.name.startswith(".ap.npy."):
            raise failure
        real_flushed(tree)

    monkeypatch.setattr(atomic, "flushed", flushed)


@pytest.mark.parametrize("failing, reason", [(failing_at_ap, "no space left"), (failing_at_ap_flush, "disk quota exceeded")])
def test_an_overwrite_run_that_fails_while_writing_keeps_the_earlier_results(failing, reason, minilm, tmp_path, monkeypatch):
    """The files were replaced one by one after the earlier summary.json was deleted: an
    --overwrite run cut short (or a full disk) had lost the earlier results (an audit);
    then a disk full only when flushed still did (a review)."""
    out = folder_with_a_file(tmp_path / "results")
    (tmp_path / "concepts.txt").write_text("\n".join(SLICE_WORDS) + "\n")
    assert run_slice(out, tmp_path / "concepts.txt").exit_code == 0
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    failing(out, OSError(errno.EDQUOT if failing is failing_at_ap_flush else errno.ENOSPC, "full"), monkeypatch)
    assert_user_error(run_slice(out, tmp_path / "concepts.txt", "minilm", "--seed", "1", "--overwrite"), f"--out {out}: {reason}")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier


def test_a_ctrl_c_among_the_renames_stops_the_run_after_them(minilm, tmp_path, monkeypatch):
    """A Ctrl-C as the new result files took their places left the earlier run's files
    mixed with the new ones and no summary.json (an audit): it is held until all are in
    place, then stops the run as a Ctrl-C does."""
    import signal

    out = folder_with_a_file(tmp_path / "results")
    (tmp_path / "concepts.txt").write_text("\n".join(SLICE_WORDS) + "\n")
    assert run_slice(out, tmp_path / "concepts.txt").exit_code == 0
    real_replace = os.replace

    def replace(source, target, *args, **kwargs):
        real_replace(source, target, *args, **kwargs)
        if Path(target).parent == out and Path(target).name != "summary.json":
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace)
    # A Ctrl-C as a terminal delivers it: the suite may run with SIGINT ignored (a background job).
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = run_slice(out, tmp_path / "concepts.txt", "minilm", "--seed", "1", "--overwrite")
    finally:
        signal.signal(signal.SIGINT, handler)
    monkeypatch.undo()
    assert result.exit_code == 130, result.output
    assert json.loads((out / "summary.json").read_text())["settings"]["seed"] == 1
    assert run_slice(tmp_path / "again", tmp_path / "concepts.txt", "minilm", "--seed", "1").exit_code == 0
    for name in ("ap.npy", "experts.csv", "similarity.csv"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


def test_an_out_or_cache_that_links_to_no_folder_yet_is_made_where_the_link_points(minilm, tmp_path, monkeypatch):
    """Both were tracebacks ("File exists"), the --out one after the run's slow stages (an
    audit); a link to where no folder can be made is refused before them."""
    from expertlens_lite.locks import using_cache
    from expertlens_lite.paths import cache_dir

    (tmp_path / "concepts.txt").write_text("\n".join(SLICE_WORDS) + "\n")
    (tmp_path / "d").symlink_to(tmp_path / "target" / "results")
    assert run_slice(tmp_path / "d", tmp_path / "concepts.txt").exit_code == 0
    assert (tmp_path / "target" / "results" / "summary.json").is_file()
    (tmp_path / "p").symlink_to("/proc/elens-lite-none")
    assert_user_error(run_slice(tmp_path / "p", tmp_path / "concepts.txt"), "--out", "cannot be written", "(/proc)")
    (tmp_path / "home").symlink_to(tmp_path / "cache")
    monkeypatch.setenv("ELENS_HOME", str(tmp_path / "home"))
    with using_cache(cache_dir()):
        assert (tmp_path / "cache" / "locks").is_dir()


def test_results_that_another_run_finished_meanwhile_are_not_replaced(minilm, tmp_path, monkeypatch):
    """Runs with their own ELENS_HOME do not share the cache's lock of --out: both found
    no summary.json when they started, then the second replaced the first's results
    without --overwrite (and, killed at the wrong moment, left one run's summary.json
    beside the other's results), and both exited 0 (seen in an audit)."""
    from expertlens_lite import pipeline

    out = folder_with_a_file(tmp_path / "results")
    (tmp_path / "concepts.txt").write_text("\n".join(SLICE_WORDS) + "\n")
    theirs = {"experts.csv": "the other run's", "summary.json": '{"model": "theirs"}'}
    analyse = pipeline.score_all

    def another_run_finishes_now(*args, **kwargs):
        for name, text in theirs.items():
            (out / name).write_text(text)
        return analyse(*args, **kwargs)

    monkeypatch.setattr(pipeline, "score_all", another_run_finishes_now)
    assert_user_error(run_slice(out, tmp_path / "concepts.txt"), f"--out {out} got the results of another elens-lite run while this one ran")
    assert_untouched(out)
    assert {name: (out / name).read_text() for name in theirs} == theirs
    assert sorted(p.name for p in out.iterdir()) == ["experts.csv", "summary.json", "thesis.tex"]


def test_temporary_files_of_a_run_killed_while_writing_are_removed_by_the_next(minilm, tmp_path):
    out = folder_with_a_file(tmp_path / "results")
    (tmp_path / "concepts.txt").write_text("\n".join(SLICE_WORDS) + "\n")
    left = [".ap.npy.y74pkeqc.tmp.npy", ".report.html.k2_8x0ab.tmp"]  # as a SIGKILL left them in an audit
    for name in left:
        (out / name).write_text("half written")
    assert run_slice(out, tmp_path / "concepts.txt").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(["ap.npy", "experts.csv", "report.html", "similarity.csv", "summary.json", "thesis.tex"])


def test_a_run_with_another_cache_waits_while_one_writes_into_its_out(minilm, tmp_path, monkeypatch):
    """The results folder's own lock: one run writing, the other waits for it, then
    finds its results and is refused (without the lock both wrote at once)."""
    import threading

    from expertlens_lite import locks

    out = folder_with_a_file(tmp_path / "results")
    (tmp_path / "concepts.txt").write_text("\n".join(SLICE_WORDS) + "\n")
    waiting = threading.Event()
    warning = locks.log.warning
    monkeypatch.setattr(locks.log, "warning", lambda message, *args: waiting.set() or warning(message, *args))

    def first_run_writing() -> None:
        with locks.writing_into(out):
            waiting.wait(120)
            (out / "summary.json").write_text('{"model": "first"}')

    first = threading.Thread(target=first_run_writing)
    first.start()
    try:
        result = run_slice(out, tmp_path / "concepts.txt", "minilm", "--seed", "3")
    finally:
        waiting.set()
        first.join()
    assert_user_error(result, f"--out {out} got the results of another elens-lite run while this one ran")
    assert (out / "summary.json").read_text() == '{"model": "first"}'


def test_an_out_whose_file_system_cannot_lock_is_written_with_a_warning(minilm, tmp_path, monkeypatch, caplog):
    """Lustre without -o flock, NFS without its lock daemon: the run ended, after its
    slow stages, with an OSError traceback (found in a review)."""
    from expertlens_lite import locks

    out = tmp_path / "results"
    (tmp_path / "concepts.txt").write_text("\n".join(SLICE_WORDS) + "\n")
    flock = locks.fcntl.flock

    def no_locks_in_out(handle, operation):
        if Path(handle.name).parent == out:
            raise OSError(errno.ENOLCK, "No locks available")
        return flock(handle, operation)

    monkeypatch.setattr(locks.fcntl, "flock", no_locks_in_out)
    assert run_slice(out, tmp_path / "concepts.txt").exit_code == 0
    assert f"{out} cannot be locked (No locks available)" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["ap.npy", "experts.csv", "report.html", "similarity.csv", "summary.json"]
