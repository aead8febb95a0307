"""``elens-lite cache ls|rm`` and the lock files: what runs leave in ELENS_HOME can be
seen and removed, never from under a run that is making it, and locks do not pile up."""

from __future__ import annotations

import errno
import fcntl
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from expertlens_lite import locks
from expertlens_lite.cache import cache_entries, remove_cache_entries
from expertlens_lite.cli import main
from expertlens_lite.errors import InputError
from expertlens_lite.locks import _held, refusing, using_cache, waiting_for
from expertlens_lite.runtime import compute_responses

from .test_runtime import SENTENCES, interrupt_after


def names(cache: Path) -> list[str]:
    return [entry.name for entry in cache_entries(cache)]


def test_entries_say_what_they_are_and_whether_they_are_finished(minilm, tmp_path):
    compute_responses(minilm, SENTENCES[:8], tmp_path, batch_size=4, device="cpu")
    interrupt_after(minilm, SENTENCES, tmp_path, 2)
    entries = cache_entries(tmp_path)
    assert [e.name.split("/")[0] for e in entries] == ["responses", "responses"]
    by_state = {e.state: e for e in entries}
    assert by_state["complete"].about == "minilm; 8 sentences, model.onnx, max pooling"
    assert by_state["interrupted"].about == f"minilm; {len(SENTENCES)} sentences, model.onnx, max pooling"
    assert by_state["complete"].size >= 8 * 4 * minilm.manifest.n_neurons
    with waiting_for(tmp_path / by_state["interrupted"].name, tmp_path, "it"):  # as a run making it holds it
        states = {e.name: e.state for e in cache_entries(tmp_path)}
    assert states == {by_state["complete"].name: "complete", by_state["interrupted"].name: "being made"}
    assert cache_entries(tmp_path / "never-made") == []


def test_removing_entries_frees_their_bytes_and_a_run_makes_them_again(minilm, tmp_path):
    first = compute_responses(minilm, SENTENCES[:8], tmp_path, batch_size=4, device="cpu")
    (entry,) = cache_entries(tmp_path)
    assert remove_cache_entries(tmp_path, [entry.name, entry.name + "/"]) == (entry.size, 1)
    assert names(tmp_path) == []
    again = compute_responses(minilm, SENTENCES[:8], tmp_path, batch_size=4, device="cpu")
    assert (again.neurons == first.neurons).all()


@pytest.mark.parametrize("name", ["responses/nothing", "../responses", "responses/..", "locks", "responses/a/b", "/etc"])
def test_names_that_are_not_entries_remove_nothing(minilm, tmp_path, name):
    compute_responses(minilm, SENTENCES[:4], tmp_path, batch_size=4, device="cpu")
    before = names(tmp_path)
    with pytest.raises(InputError, match="cache entry"):
        remove_cache_entries(tmp_path, [before[0], name])  # the good name first: still nothing goes
    assert names(tmp_path) == before


def test_an_entry_being_made_is_refused_and_nothing_is_removed(minilm, tmp_path):
    """Entries were removed one by one: those before a refused one were gone (an audit)."""
    compute_responses(minilm, SENTENCES[:4], tmp_path, batch_size=4, device="cpu")
    compute_responses(minilm, SENTENCES[:8], tmp_path, batch_size=4, device="cpu")
    both = names(tmp_path)
    with (
        waiting_for(tmp_path / both[1], tmp_path, "it"),
        pytest.raises(InputError, match=f"{both[1]} is being made; try again later"),
    ):
        remove_cache_entries(tmp_path, both)
    assert names(tmp_path) == both


def test_nothing_is_removed_while_a_run_uses_the_cache(minilm, tmp_path):
    """A run reads its export and responses until it ends, without their locks: a run
    whose export was removed under it failed with a traceback (an audit)."""
    compute_responses(minilm, SENTENCES[:4], tmp_path, batch_size=4, device="cpu")
    with using_cache(tmp_path), pytest.raises(InputError, match=r"a run \(or a cache rm\) is using this cache"):
        remove_cache_entries(tmp_path, names(tmp_path))
    assert len(names(tmp_path)) == 1
    remove_cache_entries(tmp_path, names(tmp_path))
    assert names(tmp_path) == []


def test_a_scratch_folder_left_beside_an_entry_is_listed_unfinished_and_guarded_by_the_entry(tmp_path):
    scratch = tmp_path / "models" / ".tiny-0123.k3j_x9a2.tmp"  # as atomic_dir names it
    scratch.mkdir(parents=True)
    (scratch / "model.onnx").write_bytes(b"x" * 5000)
    (entry,) = cache_entries(tmp_path)
    assert (entry.name, entry.state) == ("models/.tiny-0123.k3j_x9a2.tmp", "interrupted")
    with waiting_for(tmp_path / "models" / "tiny-0123", tmp_path, "it"), pytest.raises(InputError, match="is being made"):
        remove_cache_entries(tmp_path, [entry.name])
    remove_cache_entries(tmp_path, [entry.name])
    assert names(tmp_path) == []


def test_an_entry_and_its_scratch_folders_are_removed_together(tmp_path):
    """Each took the entry's lock, the second one refused by the first (a review)."""
    for name in ["tiny-0123", ".tiny-0123.k3j_x9a2.tmp", ".tiny-0123.zzzzzzzz.tmp"]:
        (tmp_path / "models" / name).mkdir(parents=True)
    assert remove_cache_entries(tmp_path, names(tmp_path))[1] == 3
    assert names(tmp_path) == []


def test_scratch_left_inside_a_finished_entry_is_listed_and_removed_by_unfinished(tmp_path, monkeypatch):
    """A SIGKILL during an int8 quantization left its scratch folder (hundreds of MB) inside
    the export, which cache ls did not mention and cache rm --unfinished left (an audit)."""
    export = tmp_path / "models" / "tiny-0123"
    (export / ".quantize-k3j_x9a2").mkdir(parents=True)
    (export / ".quantize-k3j_x9a2" / "model.onnx").write_bytes(b"x" * 50_000)
    (export / ".model.int8.onnx.k3j_x9a2.tmp").write_bytes(b"y" * 5_000)
    (export / "manifest.json").write_text("{}")
    (entry,) = cache_entries(tmp_path)
    assert entry.state == "complete" and entry.scratch >= 55_000
    monkeypatch.setenv("ELENS_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    assert "of it left by an interrupted run (cache rm --unfinished)" in invoke("cache", "ls").output
    with waiting_for(export, tmp_path, "it"), pytest.raises(InputError, match="is being made"):  # a run at work there
        remove_cache_entries(tmp_path, [], [entry.name])
    result = invoke("cache", "rm", "--unfinished")
    assert result.output.startswith("removed 0 entries and the scratch interrupted runs left in 1 entry, "), result.output
    assert sorted(p.name for p in export.iterdir()) == ["manifest.json"]
    assert cache_entries(tmp_path)[0].scratch == 0


def test_lock_files_do_not_pile_up(minilm, tmp_path):
    """Every results folder and cache entry ever used left an empty lock file behind."""
    compute_responses(minilm, SENTENCES[:4], tmp_path, batch_size=4, device="cpu")
    with refusing(tmp_path / "some-results", tmp_path, "busy"):
        assert len(list((tmp_path / "locks").glob("*.lock"))) == 1
    assert list((tmp_path / "locks").glob("*.lock")) == []


def test_a_waiter_whose_lock_file_was_deleted_locks_the_new_one(tmp_path):
    """The holder deletes the lock file as it lets go; the run that was waiting then holds
    a file no longer named, and must lock the file now under that name, or a third run
    would get in beside it."""
    folder = tmp_path / "entry"
    waiting, holding, done = threading.Event(), threading.Event(), threading.Event()

    def second() -> None:
        with _held(folder, tmp_path, waiting.set):
            holding.set()
            done.wait(30)

    with waiting_for(folder, tmp_path, "it"):
        thread = threading.Thread(target=second)
        thread.start()
        assert waiting.wait(30)
    assert holding.wait(30)
    try:
        with pytest.raises(InputError, match="third"), refusing(folder, tmp_path, "third"):
            pass
    finally:
        done.set()
        thread.join()


def test_a_listing_looking_at_an_entry_does_not_make_rm_refuse_it(tmp_path, monkeypatch):
    """``cache ls`` takes each entry's lock shared for a moment, to tell "being made" from
    "interrupted": a ``cache rm`` at that moment refused the entry as being made."""
    entry = tmp_path / "responses" / "0123"
    entry.mkdir(parents=True)
    (tmp_path / "locks").mkdir()
    look = locks._lock_file(entry, tmp_path).open("a")
    fcntl.flock(look, fcntl.LOCK_SH)  # the listing, looking
    sleep = time.sleep

    def the_listing_moves_on(seconds: float) -> None:
        look.close()
        sleep(seconds)

    monkeypatch.setattr(time, "sleep", the_listing_moves_on)
    assert remove_cache_entries(tmp_path, ["responses/0123"])[1] == 1
    assert not entry.exists()


def test_unheld_lock_files_of_killed_runs_are_removed_by_rm(tmp_path):
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "0123456789abcdef.lock").touch()  # a killed run's
    (tmp_path / "responses" / "0123").mkdir(parents=True)
    with refusing(tmp_path / "held-results", tmp_path, "busy"):
        remove_cache_entries(tmp_path, ["responses/0123"])
        assert len(list((tmp_path / "locks").glob("*.lock"))) == 1  # the held one stays
    assert list((tmp_path / "locks").glob("*.lock")) == []


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_lists_and_removes(minilm, tmp_path, monkeypatch):
    monkeypatch.setenv("ELENS_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    assert "holds nothing" in invoke("cache", "ls").output
    compute_responses(minilm, SENTENCES[:4], tmp_path, batch_size=4, device="cpu")
    interrupt_after(minilm, SENTENCES, tmp_path, 1)
    listed = invoke("cache", "ls")
    assert listed.exit_code == 0
    done, cut = sorted(cache_entries(tmp_path), key=lambda e: e.state != "complete")
    assert done.name in listed.output and cut.name in listed.output
    assert "unfinished: left by an interrupted run; minilm" in listed.output

    for bad in [(), ("--all", "--unfinished"), ("responses/none",)]:
        result = invoke("cache", "rm", *bad)
        assert result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert invoke("cache", "rm", "--unfinished").output.startswith("removed 1 entry, ")
    assert names(tmp_path) == [done.name]
    assert invoke("cache", "rm", "--all").output.startswith("removed 1 entry, ")
    assert names(tmp_path) == []


def test_a_listing_at_80_columns_keeps_every_column(tmp_path, monkeypatch):
    """A long entry name left "made from" no width, its header gone (an audit)."""
    (tmp_path / "models" / ".renamed.gguf-302e6e2eafad.wzh853o0.tmp").mkdir(parents=True)
    monkeypatch.setenv("ELENS_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "80")
    lines = invoke("cache", "ls").output.splitlines()
    assert "made from" in lines[2] and "written" in lines[2], lines
    assert max(map(len, lines)) <= 80


def test_nothing_is_made_by_rm_in_a_cache_that_does_not_exist_or_by_a_refused_run(tmp_path, monkeypatch):
    """Both made ELENS_HOME and its ``locks/runs`` (noted in a review)."""
    monkeypatch.setenv("ELENS_HOME", str(tmp_path / "home"))
    assert invoke("cache", "rm", "--all").output == "removed 0 entries, 0 B freed\n"
    assert invoke("run", "--model", "minilm", "--n-bootstrap", "5", "--out", str(tmp_path / "out")).exit_code == 2
    assert not (tmp_path / "home").exists()


def test_a_cache_on_a_file_system_that_cannot_lock_is_used_with_one_warning(minilm, tmp_path, monkeypatch, caplog):
    """NFS without its lock daemon, Lustre without -o flock: every run ended at its start
    with an OSError traceback (noted in a review); ``--out`` alone had a fallback."""
    flock = locks.fcntl.flock

    def no_locks_in_the_cache(handle, operation):
        if Path(handle.name).is_relative_to(tmp_path):
            raise OSError(errno.ENOLCK, "No locks available")
        return flock(handle, operation)

    monkeypatch.setattr(locks.fcntl, "flock", no_locks_in_the_cache)
    with using_cache(tmp_path):
        compute_responses(minilm, SENTENCES[:4], tmp_path, batch_size=4, device="cpu")
        (entry,) = cache_entries(tmp_path)
    assert caplog.text.count(f"{tmp_path} cannot be locked (No locks available)") == 1
    assert entry.state == "complete"
    assert list((tmp_path / "locks").glob("*.lock")) == []
    assert remove_cache_entries(tmp_path, [entry.name]) == (entry.size, 1)
