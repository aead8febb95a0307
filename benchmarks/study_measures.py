"""Which expert-selection rule and concept similarity align best with MEN? A measured study.

Protocol
--------
Models: the two bundled ones, ``smollm2`` (SmolLM2-135M-Instruct, causal Llama,
30 layers x 1536 MLP neurons) and ``minilm`` (all-MiniLM-L6-v2, BERT encoder).

Concepts: the 64 MEN words the bundled corpus was written for
(``scripts/choose_concepts.py expertlens_lite/data/men.txt --n-words 64``), kept when
they have enough positive sentences in every corpus below, so that all runs score
the same concepts on the same rated MEN pairs.

Corpora (one run per model on each):

- ``full``: the bundled corpus (n_pos=30, min_pos=20, n_neg=1000);
- ``halfA`` / ``halfB``: two halves of it that share no sentence (n_pos=16,
  min_pos=12, n_neg=500). The split is seeded (``--split-seed``): for each concept
  word, half of its not-yet-assigned matching sentences (whole word or simple
  plural, as the tool matches) go to A and the rest to B, so each word ends up
  with (nearly) the same count in both; sentences with none of the words are
  split at random. The halves are written under ``--work-dir``.

Every run uses seed 0 and the whole selection grid at once: tau in (0.5, 0.3, 0.7)
(0.5 first: the paper's rule, the reference of the paired tests), lift in
(3, 5, 10, 20), top-k in (50, 100, 200, 500, 1000), top-fraction in
(0.002, 0.005, 0.01, 0.02, 0.05); the profile similarities (cosine, pearson,
weighted Jaccard) and the two embedding baselines come with every run. Alignment
is Spearman rho with MEN with a 1000-resample percentile bootstrap CI over pairs.

Pooling variants (full corpus, both models): default (max over tokens, special
tokens excluded), mean pooling, keep_special_tokens=True, skip_first_token=True.

Choice of defaults: the set-based rule and the profile similarity with the highest
rho averaged over both models on half A are chosen; half B and the full corpus
are the confirmation. The SmolLM2 layer histogram (experts per layer = column //
neurons-per-layer) is taken on the full corpus with default pooling for tau=0.5 and
for the chosen rule.

Outputs: a results folder per run under ``--out-root``, all comparison rows and
settings in ``--json``, and the write-up in ``--results-md``.

Usage (from the repository root)::

    ELENS_HOME=/tmp/elens_study HF_HUB_OFFLINE=1 \\
        /work/venv/bin/python benchmarks/study_measures.py --models smollm2 minilm

``--quick`` is a smoke run (small grid, 200 resamples, default pooling only) that
writes its JSON and Markdown under the output root instead of the repository.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from expertlens_lite import RunConfig, __version__, run  # noqa: E402
from expertlens_lite.alignment import Bootstrap  # noqa: E402
from expertlens_lite.batching import PoolingOptions  # noqa: E402
from expertlens_lite.concepts import matching_sentences, read_corpus, word_index  # noqa: E402
from expertlens_lite.human import read_human_pairs  # noqa: E402
from expertlens_lite.kernels import unpack_masks  # noqa: E402
from expertlens_lite.paths import DEFAULT_HUMAN, bundled, cache_dir  # noqa: E402
from expertlens_lite.selection import Selection, base_rates, select  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

GRID = dict(taus=(0.5, 0.3, 0.7), lifts=(3.0, 5.0, 10.0, 20.0), topks=(50, 100, 200, 500, 1000),
            top_fracs=(0.002, 0.005, 0.01, 0.02, 0.05))
QUICK_GRID = dict(taus=(0.5,), lifts=(10.0,), topks=(200,), top_fracs=(0.01,))

POOLINGS = {
    "default": PoolingOptions(),
    "mean": PoolingOptions(pooling="mean"),
    "keep_special": PoolingOptions(keep_special_tokens=True),
    "skip_first": PoolingOptions(skip_first_token=True),
}
CORPUS_SETTINGS = {  # n_pos, min_pos, n_neg
    "full": (30, 20, 1000),
    "halfA": (16, 12, 500),
    "halfB": (16, 12, 500),
}
CORPUS_LABEL = {"full": "full", "halfA": "half A", "halfB": "half B"}
MODEL_LABEL = {"smollm2": "SmolLM2-135M-Instruct (`smollm2`)", "minilm": "all-MiniLM-L6-v2 (`minilm`)"}
PAPER = "tau=0.5 jaccard"
BASELINES = ("sentence_embedding", "word_embedding")


# ----------------------------------------------------------------------------- corpora


def concept_words(n_words: int = 64) -> list[str]:
    """The MEN words the bundled corpus was written for, from scripts/choose_concepts.py."""
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "choose_concepts.py"), str(bundled(DEFAULT_HUMAN)), "--n-words", str(n_words)],
        check=True, capture_output=True, text=True,
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip() and not line.startswith("#")]


def split_halves(sentences: list[str], words: list[str], seed: int) -> tuple[list[str], list[str], dict]:
    """Seeded split into two disjoint halves, balanced per concept word (see the module docstring)."""
    rng = np.random.default_rng(seed)
    index = word_index(sentences)
    side = np.full(len(sentences), -1, dtype=np.int8)  # 0 = A, 1 = B
    for word in words:
        matches = np.array(sorted(matching_sentences(word, index)), dtype=np.int64)
        if len(matches) == 0:
            continue
        in_a = int(np.sum(side[matches] == 0))
        free = matches[side[matches] < 0]
        free = free[rng.permutation(len(free))]
        # A gets half of the word's sentences; an odd total gives the spare one to a random side
        target_a = len(matches) // 2 + (int(rng.integers(2)) if len(matches) % 2 else 0)
        n_to_a = min(len(free), max(0, target_a - in_a))
        side[free[:n_to_a]] = 0
        side[free[n_to_a:]] = 1
    rest = np.flatnonzero(side < 0)
    rest = rest[rng.permutation(len(rest))]
    side[rest[: len(rest) // 2]] = 0
    side[rest[len(rest) // 2:]] = 1
    half_a = [s for s, k in zip(sentences, side) if k == 0]
    half_b = [s for s, k in zip(sentences, side) if k == 1]
    counts = {}
    for name, half in (("halfA", half_a), ("halfB", half_b)):
        idx = word_index(half)
        counts[name] = {w: len(matching_sentences(w, idx)) for w in words}
    stats = {
        "seed": seed,
        "n_sentences": {"full": len(sentences), "halfA": len(half_a), "halfB": len(half_b)},
        "n_without_concept_word": int(len(rest)),
        "shared_sentences": len(set(half_a) & set(half_b)),
        "per_word_counts": {w: [counts["halfA"][w], counts["halfB"][w]] for w in words},
    }
    return half_a, half_b, stats


def prepare_corpora(work_dir: Path, seed: int) -> tuple[dict[str, Path], Path, dict]:
    """Write the halves and the shared concepts file; return their paths and split facts."""
    work_dir.mkdir(parents=True, exist_ok=True)
    full_path = bundled("corpus.txt")
    sentences = read_corpus(full_path)
    words = concept_words()
    half_a, half_b, stats = split_halves(sentences, words, seed)
    paths = {"full": full_path, "halfA": work_dir / "corpus_halfA.txt", "halfB": work_dir / "corpus_halfB.txt"}
    paths["halfA"].write_text("\n".join(half_a) + "\n", encoding="utf-8")
    paths["halfB"].write_text("\n".join(half_b) + "\n", encoding="utf-8")
    full_counts = {w: len(matching_sentences(w, word_index(sentences))) for w in words}
    keep = [
        w for w in words
        if full_counts[w] >= CORPUS_SETTINGS["full"][1]
        and min(stats["per_word_counts"][w]) >= CORPUS_SETTINGS["halfA"][1]
    ]
    concepts_path = work_dir / "concepts.txt"
    concepts_path.write_text(
        f"# {len(keep)} of the {len(words)} corpus words with enough positives in the full corpus and both halves\n"
        + "\n".join(keep) + "\n",
        encoding="utf-8",
    )
    stats.update(candidate_words=words, concepts=keep, dropped=[w for w in words if w not in keep],
                 files={k: str(v) for k, v in paths.items()}, concepts_file=str(concepts_path))
    return paths, concepts_path, stats


# ----------------------------------------------------------------------------- runs


def layer_histogram(ap: np.ndarray, n_pos: np.ndarray, n_neg: np.ndarray, selection: Selection, n_layers: int) -> dict:
    """Experts per layer summed over concepts, using the library's own selection rule."""
    n_neurons = ap.shape[1]
    per_layer = n_neurons // n_layers
    assert per_layer * n_layers == n_neurons, (n_neurons, n_layers)
    mask = unpack_masks(select(ap, selection, base_rates(n_pos, n_neg)), n_neurons)
    counts = mask.reshape(len(ap), n_layers, per_layer).sum(axis=(0, 2))
    return {"selection": selection.label, "neurons_per_layer": per_layer, "total": int(counts.sum()),
            "counts": [int(c) for c in counts]}


def all_histograms(result, grid: dict) -> dict:
    cs = result.concept_set
    n_pos = np.array([len(p) for p in cs.positives])
    n_neg = np.array([cs.n_negatives(c) for c in range(len(cs.concepts))])
    config = RunConfig(**grid)
    n_layers = int(result.summary["n_layers"])
    return {s.label + " jaccard": layer_histogram(result.ap, n_pos, n_neg, s, n_layers) for s in config.selections()}


def run_one(model: str, corpus: str, pooling: str, paths: dict, concepts_path: Path, grid: dict,
            n_bootstrap: int, out_root: Path, seed: int) -> tuple[dict, dict]:
    n_pos, min_pos, n_neg = CORPUS_SETTINGS[corpus]
    config = RunConfig(
        model=model, corpus=Path(paths[corpus]), concepts=concepts_path, n_pos=n_pos, min_pos=min_pos, n_neg=n_neg,
        seed=seed, pooling=POOLINGS[pooling], n_bootstrap=n_bootstrap, out=out_root / f"{model}_{corpus}_{pooling}", **grid,
    )
    start = time.perf_counter()
    result = run(config)
    wall = time.perf_counter() - start
    s = result.summary
    record = {
        "model": model, "corpus": corpus, "pooling": pooling, "pooling_options": asdict(POOLINGS[pooling]),
        "corpus_file": str(paths[corpus]), "out": str(config.out), "wall_s": round(wall, 1),
        **{k: s[k] for k in ("tool", "architecture", "n_layers", "n_neurons", "n_concepts", "n_sentences", "n_pairs",
                             "human", "skipped_concepts", "settings", "timings")},
        "comparison": s["comparison"],
    }
    # per-pair values and the run's bootstrap, for paired tests between any two measures later
    rated = read_human_pairs(bundled(DEFAULT_HUMAN)).restricted_to(set(result.concept_set.concepts))
    extra = {
        "pair_values": {m.name: m.pair_values for m in result.measures},
        "bootstrap": Bootstrap(rated, n_bootstrap, np.random.default_rng(seed)),
    }
    if pooling == "default" and corpus == "full":
        record["layer_histograms"] = all_histograms(result, grid)
    print(f"[study] {model:8s} {corpus:6s} {pooling:12s} {wall:6.1f} s  concepts={s['n_concepts']} pairs={s['n_pairs']} "
          f"tau0.5={_rho(record, PAPER)}", flush=True)
    return record, extra


# ----------------------------------------------------------------------------- analysis


def _row(record: dict, measure: str) -> dict | None:
    return next((r for r in record["comparison"] if r["measure"] == measure), None)


def _rho(record: dict, measure: str) -> float | None:
    row = _row(record, measure)
    return None if row is None else row["spearman"]


def _find(records: list[dict], model: str, corpus: str, pooling: str = "default") -> dict | None:
    return next((r for r in records if r["model"] == model and r["corpus"] == corpus and r["pooling"] == pooling), None)


def choose(records: list[dict], models: list[str], kind: str, on: str = "halfA") -> tuple[str, list[tuple[str, float]]]:
    """Best measure of one family by rho averaged over the models on corpus ``on`` (ranking returned too)."""
    runs = [_find(records, m, on) for m in models]
    names = [r["measure"] for r in runs[0]["comparison"] if _family(r) == kind]
    scores = []
    for name in names:
        values = [_rho(run_, name) for run_ in runs]
        scores.append((name, -math.inf if any(v is None for v in values) else float(np.mean(values))))
    scores.sort(key=lambda x: -x[1])
    return scores[0][0], [(n, None if math.isinf(v) else v) for n, v in scores]


def _family(row: dict) -> str:
    if row["kind"] == "baseline":
        return "baseline"
    return "set" if row["similarity"] == "jaccard" else "profile"


def rank_of(record: dict, measure: str, family: str) -> tuple[int, int]:
    rows = [r for r in record["comparison"] if _family(r) == family and r["spearman"] is not None]
    rows.sort(key=lambda r: -r["spearman"])
    names = [r["measure"] for r in rows]
    total = len([r for r in record["comparison"] if _family(r) == family])
    return (names.index(measure) + 1 if measure in names else total), total


def paired_tests(extras: dict, key: tuple, measure: str, others: list[str]) -> dict:
    ex = extras[key]
    out = {}
    for other in others:
        if other == measure:
            continue
        diff_p = ex["bootstrap"].paired_p_value(ex["pair_values"][measure], ex["pair_values"][other])
        out[other] = None if math.isnan(diff_p) else diff_p
    return out


# ----------------------------------------------------------------------------- write-up


def fmt_rho(row: dict | None) -> str:
    if row is None or row.get("spearman") is None:
        return "n/a"
    return f"{row['spearman']:.3f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"


def fmt_size(row: dict | None) -> str:
    return "–" if row is None or row.get("median_experts") is None else f"{row['median_experts']:g}"


def fmt_zero(row: dict | None) -> str:
    return "–" if row is None or row.get("zero_overlap_fraction") is None else f"{100 * row['zero_overlap_fraction']:.0f}%"


def f3(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "platform": platform.platform(),
            "onnxruntime": onnxruntime.__version__, "expertlens_lite": __version__,
            "date": datetime.date.today().isoformat(), "elens_home": str(cache_dir())}


def measure_table(records: list[dict], model: str, corpora: list[str]) -> list[str]:
    first = _find(records, model, corpora[0])
    head = "| measure | " + " | ".join(f"ρ {CORPUS_LABEL[c]} [95% CI] | med. experts | zero-overlap" for c in corpora) + " |"
    sep = "|---|" + "---:|---:|---:|" * len(corpora)
    lines = [head, sep]
    for row in first["comparison"]:
        name = row["measure"]
        cells = []
        for c in corpora:
            r = _row(_find(records, model, c), name)
            cells += [fmt_rho(r), fmt_size(r), fmt_zero(r)]
        label = f"**{name}**" if name == PAPER else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def write_markdown(path: Path, data: dict) -> None:
    records = data["runs"]
    models = data["models"]
    corpora = [c for c in ("full", "halfA", "halfB") if all(_find(records, m, c) for m in models)]
    choice = data["choice"]
    set_rule, profile = choice["set_rule"], choice["profile"]
    mach = data["machine"]
    split = data["split"]
    L = []
    L += [
        "# Which expert-selection rule and similarity align best with MEN?",
        "",
        "A measured study of the expert-selection rules (paper's absolute AP threshold τ, lift over the "
        "base rate, top-k, top fraction) and concept similarities (Jaccard of expert sets, graded similarities "
        "of the full AP profiles, and the models' own embedding baselines) of expertlens-lite, scored by Spearman ρ "
        "against MEN human similarity ratings on **two** bundled models (SmolLM2-135M-Instruct, a causal Llama, and "
        "all-MiniLM-L6-v2, a BERT encoder) and **three** corpora (the bundled corpus and two disjoint halves of it), "
        "so that the tool's defaults are chosen on one split and confirmed on the others. The protocol is in the "
        "docstring of `benchmarks/study_measures.py`; every run's comparison rows and settings are in "
        f"`{data['json_path']}`.",
        "",
        "## How it was run",
        "",
        "```bash",
        data["command"],
        "```",
        "",
        f"- Machine: {mach['nproc']} cores (`nproc`), {mach['cpu']} (from /proc/cpuinfo), CPU only (ONNX Runtime "
        f"{mach['onnxruntime']}), Python {mach['python']}, expertlens-lite {mach['expertlens_lite']}.",
        f"- Date: {mach['date']}. Wall time of the whole study: **{data['total_wall_s'] / 60:.1f} min** "
        f"({len(records)} runs; the first SmolLM2 run includes the one-off GGUF conversion and ONNX export "
        "unless the model cache was warm).",
        f"- Concepts: {len(split['concepts'])} of the {len(split['candidate_words'])} words the corpus was written for "
        f"(those with ≥20 positives in the full corpus and ≥12 in each half"
        + (f"; dropped: {', '.join(split['dropped'])}" if split["dropped"] else "; none dropped") + "), "
        f"{records[0]['n_pairs']} rated MEN pairs, identical in every run.",
        f"- Corpora: full = bundled `corpus.txt` ({split['n_sentences']['full']} sentences; n_pos=30, min_pos=20, "
        f"n_neg=1000); half A / half B ({split['n_sentences']['halfA']} / {split['n_sentences']['halfB']} sentences, "
        f"{split['shared_sentences']} shared; n_pos=16, min_pos=12, n_neg=500), split with seed {split['seed']} so "
        f"that each word has half of its sentences in each half (per-word counts A/B range "
        f"{_count_range(split)}). Seed 0, 1000 bootstrap resamples of the rated pairs for the 95% CIs.",
        "- Grid (one run per model × corpus × pooling): τ ∈ {0.5, 0.3, 0.7}, lift ∈ {3, 5, 10, 20}, top-k ∈ "
        "{50, 100, 200, 500, 1000}, top fraction ∈ {0.002, 0.005, 0.01, 0.02, 0.05}, plus profile cosine, Pearson, "
        "weighted Jaccard and the sentence- and word-embedding baselines (cosine).",
        "",
    ]
    # --- choice first: it is what the study is for
    L += _choice_section(data, corpora)
    # --- per model tables
    L += ["## All measures, per model", "",
          "ρ = Spearman correlation with MEN over the rated pairs [percentile-bootstrap 95% CI]; med. experts = median "
          "expert-set size over concepts; zero-overlap = share of rated pairs whose two expert sets share no neuron "
          "(Jaccard 0, a tie at the bottom of the ranking). The paper's measure is in bold. Default pooling.", ""]
    for model in models:
        rec = _find(records, model, "full")
        L += [f"### {MODEL_LABEL.get(model, model)}", "",
              f"{rec['architecture']}, {rec['n_layers']} layers, {rec['n_neurons']} neurons.", ""]
        L += measure_table(records, model, corpora)
        L += [""]
    # --- pooling
    L += _pooling_section(data)
    # --- layers
    L += _layer_section(data)
    # --- honest observations
    L += _observations(data, corpora)
    path.write_text("\n".join(L) + "\n", encoding="utf-8")


def _count_range(split: dict) -> str:
    vals = [v for pair in split["per_word_counts"].values() for v in pair]
    return f"{min(vals)}–{max(vals)}"


def _choice_section(data: dict, corpora: list[str]) -> list[str]:
    records, models, choice = data["runs"], data["models"], data["choice"]
    set_rule, profile = choice["set_rule"], choice["profile"]
    L = ["## Choice of defaults", ""]
    L += [
        "Rule: among the set-based measures (Jaccard of expert sets, every τ / lift / top-k / top-fraction setting) "
        "and, separately, among the profile similarities, take the one with the highest ρ **averaged over both "
        "models on half A**; then check it on half B and the full corpus, which played no part in the choice.",
        "",
        f"- **Selection rule: `{set_rule.replace(' jaccard', '')}`** (Jaccard of its expert sets); half-A mean ρ "
        f"{f3(choice['set_scores'][0][1])} (runner-up {choice['set_scores'][1][0].replace(' jaccard', '')}: "
        f"{f3(choice['set_scores'][1][1])}; τ=0.5: {f3(dict(choice['set_scores']).get(PAPER))}).",
        f"- **Profile similarity: `{profile.replace('profile ', '')}`**; half-A mean ρ {f3(choice['profile_scores'][0][1])} "
        f"(" + ", ".join(f"{n.replace('profile ', '')}: {f3(v)}" for n, v in choice["profile_scores"][1:]) + ").",
        "",
        "| model | corpus | " + f"{set_rule} | rank among {choice['n_set']} set rules | {profile} | rank among "
        f"{choice['n_profile']} | τ=0.5 Jaccard | sentence emb. | word emb. |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in models:
        for c in corpora:
            rec = _find(records, model, c)
            L.append(
                f"| {model} | {CORPUS_LABEL[c]} | {fmt_rho(_row(rec, set_rule))} | {rank_of(rec, set_rule, 'set')[0]} | "
                f"{fmt_rho(_row(rec, profile))} | {rank_of(rec, profile, 'profile')[0]} | {fmt_rho(_row(rec, PAPER))} | "
                f"{fmt_rho(_row(rec, 'sentence_embedding'))} | {fmt_rho(_row(rec, 'word_embedding'))} |"
            )
    L += ["", "Paired bootstrap p-values (two-sided, same resamples for both measures) of the chosen measures against "
          "τ=0.5 and the baselines:", "",
          "| model | corpus | measure | vs τ=0.5 | vs sentence emb. | vs word emb. | set rule vs profile |",
          "|---|---|---|---:|---:|---:|---:|"]
    for model in models:
        for c in corpora:
            p = choice["paired"][f"{model}/{c}"]
            for m in (set_rule, profile):
                q = p[m]
                L.append(f"| {model} | {CORPUS_LABEL[c]} | {m} | {fmt_p(q.get(PAPER))} | {fmt_p(q.get('sentence_embedding'))} | "
                         f"{fmt_p(q.get('word_embedding'))} | {fmt_p(q.get(profile if m == set_rule else set_rule))} |")
    L += [""]
    L += choice.get("notes", [])
    L += [""]
    return L


def _pooling_section(data: dict) -> list[str]:
    records, models, choice = data["runs"], data["models"], data["choice"]
    variants = [p for p in POOLINGS if any(r["pooling"] == p for r in records)]
    cols = [PAPER, choice["set_rule"], choice["profile"], "sentence_embedding"]
    L = ["## Effect of pooling options (full corpus)", "",
         "default = max over tokens with special tokens excluded; mean = mean over the same tokens; keep_special = "
         "special tokens (BOS/CLS/SEP/EOS) included in the max; skip_first = default and also the first non-special "
         "token left out. The word-embedding baseline does not depend on pooling and is not repeated. best set rule = "
         "the best set-based measure of that run (chosen on the same data, so optimistic).", "",
         "| model | pooling | " + " | ".join(cols) + " | best set rule | τ=0.5 med. experts / zero-overlap |",
         "|---|---|" + "---:|" * (len(cols) + 2)]
    for model in models:
        for p in variants:
            rec = _find(records, model, "full", p)
            if rec is None:
                continue
            sets = [r for r in rec["comparison"] if _family(r) == "set" and r["spearman"] is not None]
            best = max(sets, key=lambda r: r["spearman"]) if sets else None
            paper = _row(rec, PAPER)
            L.append(f"| {model} | {p} | " + " | ".join(fmt_rho(_row(rec, c)) for c in cols)
                     + f" | {best['measure'].replace(' jaccard', '') if best else 'n/a'} {f3(best['spearman'] if best else None)} | {fmt_size(paper)} / {fmt_zero(paper)} |")
    L += [""]
    L += data.get("pooling_notes", [])
    L += [""]
    return L


def _layer_section(data: dict) -> list[str]:
    rec = _find(data["runs"], "smollm2", "full")
    if rec is None or "layer_histograms" not in rec:
        return []
    set_rule = data["choice"]["set_rule"]
    h_paper, h_rule = rec["layer_histograms"][PAPER], rec["layer_histograms"][set_rule]
    L = ["## Where SmolLM2's experts sit (full corpus, default pooling)", "",
         f"Experts per layer, summed over the {rec['n_concepts']} concepts (layer = neuron column // "
         f"{h_paper['neurons_per_layer']}); share of all experts of that rule in brackets.", "",
         f"| layer | τ=0.5 (total {h_paper['total']}) | {set_rule.replace(' jaccard', '')} (total {h_rule['total']}) |",
         "|---:|---:|---:|"]
    for layer, (a, b) in enumerate(zip(h_paper["counts"], h_rule["counts"])):
        sa = f"{a} ({100 * a / h_paper['total']:.0f}%)" if h_paper["total"] else "0"
        sb = f"{b} ({100 * b / h_rule['total']:.0f}%)" if h_rule["total"] else "0"
        L.append(f"| {layer} | {sa} | {sb} |")
    L += [""]
    L += data.get("layer_notes", [])
    L += [""]
    return L


def _observations(data: dict, corpora: list[str]) -> list[str]:
    notes = data.get("observations", [])
    return (["## Observations", ""] + notes + [""]) if notes else []


def derive_notes(data: dict, corpora: list[str]) -> None:
    """Data-driven sentences for the write-up (every figure is read from the runs)."""
    records, models, choice = data["runs"], data["models"], data["choice"]
    set_rule, profile = choice["set_rule"], choice["profile"]
    obs = []
    # tau=0.5 failures
    for model in models:
        parts = []
        for c in corpora:
            r = _row(_find(records, model, c), PAPER)
            parts.append(f"{CORPUS_LABEL[c]}: median {fmt_size(r)} experts, {fmt_zero(r)} zero-overlap pairs, ρ {fmt_rho(r)}")
        obs.append(f"- τ=0.5 on {model} — " + "; ".join(parts) + ".")
    # tau sensitivity
    for model in models:
        parts = []
        for c in corpora:
            rec = _find(records, model, c)
            parts.append(f"{CORPUS_LABEL[c]} " + ", ".join(
                f"τ={t}: {fmt_size(_row(rec, f'tau={t:g} jaccard'))}" for t in (0.3, 0.5, 0.7)))
        obs.append(f"- Median expert-set size under τ on {model} (it depends on the corpus, not only on the model): "
                   + "; ".join(parts) + ".")
    # embeddings
    for model in models:
        parts = []
        for c in corpora:
            rec = _find(records, model, c)
            s, p, se, we = (_rho(rec, m) for m in (set_rule, profile, "sentence_embedding", "word_embedding"))
            parts.append(f"{CORPUS_LABEL[c]} {set_rule.replace(' jaccard', '')} {f3(s)} / {profile} {f3(p)} vs sentence "
                         f"emb. {f3(se)}, word emb. {f3(we)}")
        obs.append(f"- Experts vs embeddings on {model}: " + "; ".join(parts) + ".")
    data.setdefault("observations", [])
    data["observations"] = obs + data["observations"]


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See the module docstring for the protocol.")
    parser.add_argument("--models", nargs="+", default=["smollm2", "minilm"], help="models to study (default: both bundled)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small grid, 200 resamples, default pooling only; "
                        "JSON and Markdown go under the output root")
    parser.add_argument("--out-root", type=Path, default=Path("/tmp/elens_study_out"), help="results folder per run goes here")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/elens_study_corpora"), help="where the halves and concepts file are written")
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/study_measures.json")
    parser.add_argument("--results-md", type=Path, default=None, help="default RESULTS.md at the repository root")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="sampling and bootstrap seed of every run")
    args = parser.parse_args(argv)

    if "ELENS_HOME" not in os.environ:
        print("[study] warning: ELENS_HOME is not set; using the default model cache", file=sys.stderr)
    grid = QUICK_GRID if args.quick else GRID
    n_bootstrap = 200 if args.quick else 1000
    poolings = ["default"] if args.quick else list(POOLINGS)
    out_root = args.out_root / ("quick" if args.quick else "full")
    json_path = args.json or (out_root / "study_measures.json" if args.quick else REPO / "benchmarks" / "results" / "study_measures.json")
    md_path = args.results_md or (out_root / "RESULTS.md" if args.quick else REPO / "RESULTS.md")

    t0 = time.perf_counter()
    paths, concepts_path, split = prepare_corpora(args.work_dir, args.split_seed)
    print(f"[study] {len(split['concepts'])} concepts; halves {split['n_sentences']}; shared {split['shared_sentences']}", flush=True)

    records, extras = [], {}
    for model in args.models:
        for corpus in ("full", "halfA", "halfB"):
            for pooling in (poolings if corpus == "full" else ["default"]):
                record, extra = run_one(model, corpus, pooling, paths, concepts_path, grid, n_bootstrap, out_root, args.seed)
                records.append(record)
                extras[(model, corpus, pooling)] = extra
    total = time.perf_counter() - t0

    corpora = ["full", "halfA", "halfB"]
    set_rule, set_scores = choose(records, args.models, "set")
    profile, profile_scores = choose(records, args.models, "profile")
    paired = {}
    for model in args.models:
        for c in corpora:
            key = (model, c, "default")
            paired[f"{model}/{c}"] = {
                set_rule: paired_tests(extras, key, set_rule, [PAPER, *BASELINES, profile]),
                profile: paired_tests(extras, key, profile, [PAPER, *BASELINES, set_rule]),
            }
    confirm = {}
    for c in corpora:
        _, sc = choose(records, args.models, "set", on=c)
        _, pc = choose(records, args.models, "profile", on=c)
        confirm[c] = {"set_rank": [n for n, _ in sc].index(set_rule) + 1, "set_best": sc[0][0],
                      "profile_rank": [n for n, _ in pc].index(profile) + 1, "profile_best": pc[0][0],
                      "set_scores": sc, "profile_scores": pc}
    notes = [
        f"- Confirmation (rank by ρ averaged over both models; {len(set_scores)} set rules, {len(profile_scores)} profile "
        "similarities): " + "; ".join(
            f"{CORPUS_LABEL[c]}: {set_rule.replace(' jaccard', '')} #{confirm[c]['set_rank']} "
            f"(best {confirm[c]['set_best'].replace(' jaccard', '')}), {profile.replace('profile ', '')} "
            f"#{confirm[c]['profile_rank']} (best {confirm[c]['profile_best'].replace('profile ', '')})" for c in corpora) + "."
    ]
    command = ("ELENS_HOME=/tmp/elens_study HF_HUB_OFFLINE=1 /work/venv/bin/python benchmarks/study_measures.py "
               + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    data = {
        "protocol": __doc__,
        "command": command,
        "machine": machine(),
        "models": args.models,
        "quick": args.quick,
        "grid": {k: list(v) for k, v in grid.items()},
        "n_bootstrap": n_bootstrap,
        "split": split,
        "total_wall_s": round(total, 1),
        "json_path": str(json_path.relative_to(REPO)) if json_path.is_relative_to(REPO) else str(json_path),
        "choice": {"criterion": "highest rho averaged over the models on half A (default pooling)",
                   "set_rule": set_rule, "profile": profile, "set_scores": set_scores, "profile_scores": profile_scores,
                   "n_set": len(set_scores), "n_profile": len(profile_scores), "confirmation": confirm,
                   "paired": paired, "notes": notes},
        "runs": records,
    }
    derive_notes(data, corpora)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=1, default=_json_default) + "\n", encoding="utf-8")
    write_markdown(md_path, data)
    print(f"[study] done in {total / 60:.1f} min; chosen: {set_rule} and {profile}; wrote {json_path} and {md_path}", flush=True)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value))


if __name__ == "__main__":
    main()
