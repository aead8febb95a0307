"""The bundled default run (SmolLM2 on the bundled corpus, MEN): the comparison table,
and the finding that motivates the selection rules beyond a fixed τ."""

from __future__ import annotations

import json

import pytest

from expertlens_lite import RunConfig, run
from expertlens_lite.similarity import PROFILE_SIMILARITIES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_run(smollm2, tmp_path_factory):
    return run(RunConfig(out=tmp_path_factory.mktemp("default")))


def test_the_default_run_used_the_sessions_cache(default_run, elens_home):
    """Its responses are in the session's cache, beside the session's SmolLM2 export. (Made
    in a module-scoped fixture, it used the developer's own cache, ~/.cache/expertlens-lite,
    and exported SmolLM2 there a second time.)"""
    summary = default_run.summary
    made = [json.loads(about.read_text()) for about in elens_home.glob("responses/*/about.json")]
    assert any(
        (about["model"], about["sentences"], about["onnx_file"]) == ("smollm2", summary["n_sentences"], summary["onnx_file"])
        for about in made
    ), made


def test_comparison_table_has_every_measure(default_run):
    config = RunConfig()
    rows = default_run.summary["comparison"]
    expected = [s.label + " jaccard" for s in config.selections()]
    expected += [f"profile {name}" for name in PROFILE_SIMILARITIES] + ["sentence_embedding", "word_embedding"]
    assert [row["measure"] for row in rows] == expected
    n_pairs = default_run.summary["n_pairs"]
    for row in rows:
        assert row["n_pairs"] == n_pairs >= 120
        if row["spearman"] is None:  # a constant similarity (the paper's τ-Jaccard sharing no expert on any pair)
            assert row["ci_low"] is None and row["ci_high"] is None and row["zero_overlap_fraction"] == 1.0
        else:
            assert row["ci_low"] <= row["spearman"] <= row["ci_high"]
        is_set = row["selection"] is not None
        assert (row["median_experts"] is not None) == is_set and (row["zero_overlap_fraction"] is not None) == is_set
    assert rows[0]["paired_p_vs_paper"] is None and all(r["paired_p_vs_paper"] is not None for r in rows[1:])
    html = (default_run.out / "report.html").read_text()
    assert all(row["measure"] in html for row in rows)
    skipped = len(default_run.summary["skipped_concepts"])  # hundreds of MEN words: the first 20, then a count
    assert skipped > 100 and f"and {skipped - 20} more (listed in summary.json)" in html


def test_topk_jaccard_is_not_worse_than_tau_jaccard(default_run):
    rows = {row["measure"]: row for row in default_run.summary["comparison"]}
    tau = rows["tau=0.5 jaccard"]
    k = RunConfig().topks[0]
    topk = rows[f"topk={k} jaccard"]
    assert topk["spearman"] > 0 and topk["spearman"] >= (tau["spearman"] or 0.0)  # undefined: no association, 0
    # ... and the reason: the τ sets are small and rarely overlap, the top-k sets do.
    assert tau["zero_overlap_fraction"] > topk["zero_overlap_fraction"]
