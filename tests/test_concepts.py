import json
import re
import unicodedata

import numpy as np
import pytest

from expertlens_lite.concepts import build_concept_set, matching_sentences, read_concepts, read_corpus, word_index
from expertlens_lite.errors import InputError
from expertlens_lite.human import read_human_pairs
from expertlens_lite.paths import bundled

SENTENCES = [
    "The cat sat on the mat.",
    "Cats are curious animals.",
    "A concatenation is not a cat.",  # 'cat' appears once as a word
    "Dogs bark; a dog's bark is loud.",
    "My DOG likes the Cat next door.",
    "Nothing about pets here.",
    "Boxes and a box.",
    "The category is unrelated.",
]


def test_matching_is_whole_word_case_insensitive_with_simple_plurals():
    index = word_index(SENTENCES)
    for word in ("cat", "dog", "box", "pets"):
        expected = {i for i, s in enumerate(SENTENCES) if re.search(rf"\b{word}(s|es)?\b", s, re.IGNORECASE)}
        assert matching_sentences(word, index) == expected
    assert matching_sentences("cat", index) == {0, 1, 2, 4}  # not 'concatenation', not 'category'


def test_es_makes_a_plural_only_after_the_endings_that_take_it():
    """+es after any word made "She hates rain." a sentence about a hat (an audit)."""
    sentences = ["She hates rain.", "The planes landed.", "Two hats.", "Three dishes.", "The heroes won.", "Buses ran."]
    index = word_index(sentences)
    found = {word: matching_sentences(word, index) for word in ("hat", "plan", "dish", "hero", "bus")}
    assert found == {"hat": {2}, "plan": set(), "dish": {3}, "hero": {4}, "bus": {5}}


def test_read_corpus_txt_and_jsonl(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("a b\n\n  c d  \na b\n")
    assert read_corpus(txt) == ["a b", "c d"]  # blank dropped, stripped, deduplicated
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"text": "x y"}) + "\n" + json.dumps({"text": "z", "id": 2}) + "\n")
    assert read_corpus(jsonl) == ["x y", "z"]
    for name in ("C.JSONL", "c.ndjson"):  # not read as text lines of raw JSON
        (tmp_path / name).write_text(jsonl.read_text())
        assert read_corpus(tmp_path / name) == ["x y", "z"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.txt", None, "not found"),
        ("empty.txt", b"\n\n", "no sentences"),
        ("latin1.txt", "caf\u00e9\n".encode("latin-1"), "not UTF-8"),
        ("bad.jsonl", b'{"text": "ok"}\nnot json\n', ":2: not valid JSON"),
        ("notext.jsonl", b'{"body": "x"}\n', ":1: expected an object"),
        # Both were tracebacks (an audit): a ValueError of Python's integer limit, a RecursionError.
        ("hugeint.jsonl", b'{"text": "ok"}\n{"text": "x", "n": ' + b"9" * 5000 + b"}\n", ":2: JSON that Python cannot read \\(Exceeds the limit"),
        ("deep.jsonl", b'{"text": "x", "n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", ":1: JSON that Python cannot read \\(maximum recursion depth"),
        # Valid UTF-8, so it was read: every sentence a row of letters and NULs, matching no concept.
        ("utf16.txt", "birds sing\nsoup is hot\n".encode("utf-16-le"), r"holds NUL characters \(line 1\): is it UTF-16 or binary\?"),
        ("nul.jsonl", b'{"text": "ok"}\n{"text": "a\x00b"}\n', r"\(line 2\)"),
    ],
)
def test_read_corpus_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_corpus(path)


def test_a_pipe_is_read_and_a_folder_refused(tmp_path):
    """``--corpus <(zcat corpus.txt.gz)`` hands the reader a pipe, not a regular file."""
    import os
    import threading

    fifo = tmp_path / "corpus.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_text, args=("one line\nanother line\n",))
    writer.start()
    assert read_corpus(fifo) == ["one line", "another line"]
    writer.join()
    with pytest.raises(InputError, match=f"^corpus file {tmp_path} is a folder$"):
        read_corpus(tmp_path)


def test_read_concepts_rejects_phrases(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("cat\n# comment\nDog\ncat\n")
    assert read_concepts(path) == ["cat", "dog"]
    path.write_text("cat\nice cream\n")
    with pytest.raises(InputError, match=":2: a concept must be a single word"):
        read_concepts(path)


def _corpus():
    return read_corpus(bundled("corpus.txt"))


def test_concept_set_invariants():
    corpus = _corpus()
    words = ["birds", "kitchen", "soup", "happy", "zebra"]
    cs = build_concept_set(corpus, words, n_pos=20, n_neg=300, min_pos=10, seed=3)
    assert cs.concepts == ("birds", "kitchen", "soup", "happy")
    assert cs.skipped == {"zebra": 0}
    assert len(set(cs.sentences)) == len(cs.sentences)  # every sentence once
    index = word_index(list(cs.sentences))
    for c, word in enumerate(cs.concepts):
        hits = matching_sentences(word, index)
        assert len(cs.positives[c]) == 20
        assert set(cs.positives[c].tolist()) <= hits
        negatives = set(cs.pool.tolist()) - set(cs.excluded[c].tolist())
        assert not negatives & hits  # no negative mentions the concept
        assert set(cs.excluded[c].tolist()) == set(cs.pool.tolist()) & hits
    used = set(np.concatenate([cs.pool, *cs.positives]).tolist())
    assert used == set(range(len(cs.sentences)))  # nothing run that is not used
    assert len(cs.pool) == 300


def test_a_sentence_given_twice_is_drawn_once():
    """Repeated, or written in two Unicode forms that NFC makes one, a sentence was two
    positives of its concept (the CLI's read_corpus removed repeats, a library caller's
    list kept them; an audit)."""
    birds = [f"The bird number {i} sings." for i in range(12)]
    cafe = [f"The café {i} opens." for i in range(11)] + ["The cafe\u0301 0 opens."]
    others = [f"Other sentence {i}." for i in range(50)]
    cs = build_concept_set(birds + cafe + others + birds, ["bird", "café"], n_pos=20, n_neg=100, min_pos=5, seed=0)
    assert len(set(cs.sentences)) == len(cs.sentences) == 12 + 11 + 50
    assert [len(p) for p in cs.positives] == [12, 11]


def test_a_library_corpus_is_stripped_and_blank_sentences_dropped_as_read_corpus_does():
    """A list from ``open(f).readlines()`` gave another pool than the CLI on that file:
    blank lines became pool negatives, pooled over special tokens alone (an audit)."""
    lines = [f"The bird number {i} sings.\n" for i in range(12)] + [f"  The cat {i} sleeps.\n" for i in range(50)]
    cs = build_concept_set([*lines, "\n", "", "   ", "\t"], ["bird", "cat"], n_pos=20, n_neg=100, min_pos=5, seed=0)
    assert list(cs.sentences) == [line.strip() for line in lines]


def test_concept_set_is_reproducible_and_seeded():
    corpus = _corpus()
    a = build_concept_set(corpus, ["birds", "soup"], n_pos=10, n_neg=100, min_pos=5, seed=1)
    b = build_concept_set(corpus, ["birds", "soup"], n_pos=10, n_neg=100, min_pos=5, seed=1)
    c = build_concept_set(corpus, ["birds", "soup"], n_pos=10, n_neg=100, min_pos=5, seed=2)
    assert a.sentences == b.sentences and all(np.array_equal(x, y) for x, y in zip(a.positives, b.positives))
    assert a.sentences == b.sentences != c.sentences


def _drawn(cs, word):
    """The sentences of ``word``'s positives, and of the pool."""
    c = cs.concepts.index(word)
    return {cs.sentences[i] for i in cs.positives[c]}, {cs.sentences[i] for i in cs.pool}


def test_a_concepts_sample_does_not_depend_on_the_other_concepts():
    """Adding, dropping (here by too few matches) or reordering concepts leaves every
    other concept's positives and the negative pool as they were."""
    corpus = _corpus()
    alone = build_concept_set(corpus, ["birds", "soup"], n_pos=10, n_neg=100, min_pos=5, seed=4)
    more = build_concept_set(corpus, ["kitchen", "zebra", "soup", "happy", "birds"], n_pos=10, n_neg=100, min_pos=5, seed=4)
    for word in ("birds", "soup"):
        assert _drawn(alone, word) == _drawn(more, word)
    other_seed = build_concept_set(corpus, ["birds", "soup"], n_pos=10, n_neg=100, min_pos=5, seed=5)
    assert _drawn(other_seed, "birds")[0] != _drawn(alone, "birds")[0]
    assert _drawn(other_seed, "birds")[1] != _drawn(alone, "birds")[1]


_DRAW = """
import json
from expertlens_lite.concepts import build_concept_set, read_corpus
from expertlens_lite.paths import bundled
cs = build_concept_set(read_corpus(bundled("corpus.txt")), ["birds", "soup"], n_pos=10, n_neg=100, min_pos=5, seed=4)
print(json.dumps([cs.sentences, [p.tolist() for p in cs.positives], cs.pool.tolist()]))
"""


def test_the_sample_is_the_same_in_every_process():
    """The per-concept streams are keyed by a hash of the word; Python's own ``hash`` of a
    string changes from one process to the next (PYTHONHASHSEED), which would have drawn
    another sample in every run."""
    import os
    import subprocess
    import sys

    draws = {
        subprocess.run([sys.executable, "-c", _DRAW], env={**os.environ, "PYTHONHASHSEED": hash_seed},
                       capture_output=True, text=True, check=True).stdout
        for hash_seed in ("1", "2")
    }
    assert len(draws) == 1


def test_concepts_are_lower_case_composed_words_each_once():
    corpus = [unicodedata.normalize("NFD", f"I love the café {i}.") for i in range(6)] + [f"The cafe sign {i}." for i in range(6)]
    corpus += [f"A dog barks {i}." for i in range(6)] + [f"Nothing {i}." for i in range(20)]
    cs = build_concept_set(corpus, [unicodedata.normalize("NFD", "Café"), "cafe", "DOG", "dog"], n_pos=6, n_neg=20, min_pos=5, seed=0)
    assert cs.concepts == ("café", "cafe", "dog")
    assert {s.rsplit(" ", 1)[0] for s in _drawn(cs, "café")[0]} == {"I love the café"}  # composed, as the model sees it
    assert {s.rsplit(" ", 1)[0] for s in _drawn(cs, "cafe")[0]} == {"The cafe sign"}


@pytest.mark.parametrize(
    "corpus, concepts, n_pos, seed, message",
    [
        (None, "cat", 10, 0, "concepts must be a list of words; got str 'cat'"),
        (None, ["cat", "ice cream"], 10, 0, "a concept must be a single word, got 'ice cream'"),
        (None, ["cat", 3], 10, 0, "a concept must be a single word, got 3"),
        (None, ["cat", "İstanbul"], 10, 0, "the concept 'İstanbul' lower-cases to 'i̇stanbul' (9 characters), no single word as the corpus is matched"),  # lower-cases to i and a combining dot
        (None, ["cat", "dog"], 5.5, 0, "--n-pos, --n-neg and --min-pos must be positive integers; got 5.5, 100, 5"),
        (None, ["cat", "dog"], 10, -1, "--seed must be a non-negative integer; got -1"),
        ("The cat.", ["cat", "dog"], 10, 0, "corpus must be a list of sentences; got str 'The cat.'"),
    ],
)
def test_library_inputs_of_the_wrong_kind_are_one_line_errors(corpus, concepts, n_pos, seed, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        build_concept_set(_corpus() if corpus is None else corpus, concepts, n_pos=n_pos, n_neg=100, min_pos=5, seed=seed)


def test_too_few_concepts_is_an_error():
    with pytest.raises(InputError, match="need 2 or more"):
        build_concept_set(_corpus(), ["birds", "zebra"], n_pos=10, n_neg=100, min_pos=5, seed=0)


def test_bundled_corpus_meets_its_spec():
    """At least 60 MEN words with 30+ sentences each, covering at least 120 MEN pairs."""
    corpus = _corpus()
    index = word_index(corpus)
    men = read_human_pairs(bundled("men.txt"))
    covered = {w for w in men.words if len(matching_sentences(w, index)) >= 30}
    assert len(covered) >= 60
    assert len(men.restricted_to(covered).pairs) >= 120


def test_human_pairs_parse_and_errors(tmp_path):
    path = tmp_path / "h.txt"
    path.write_text("# header\ncat dog 30\n\nCar  automobile\t50.5\n")
    human = read_human_pairs(path)
    assert human.pairs == (("cat", "dog"), ("car", "automobile")) and human.scores == (30.0, 50.5)
    assert human.restricted_to({"cat", "dog"}).pairs == (("cat", "dog"),)
    path.write_text("cat dog 30\ncat dog\n")
    with pytest.raises(InputError, match=r"h.txt:2: expected 'word1 word2 score'"):
        read_human_pairs(path)
    path.write_text("cat dog many\n")
    with pytest.raises(InputError, match=":1:"):
        read_human_pairs(path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("cat dog 30\ncat cat 50\n", r"h.txt:2: 'cat' is paired with itself"),
        ("cat dog 30\ncar bus 4\ndog cat 10\n", r"h.txt:3: the pair dog cat is rated already on line 1"),
    ],
)
def test_human_pairs_refuse_self_pairs_and_repeats(tmp_path, content, message):
    """A self pair scores 1 on every measure, lifting every ρ; a repeat has two ratings."""
    (tmp_path / "h.txt").write_text(content)
    with pytest.raises(InputError, match=message):
        read_human_pairs(tmp_path / "h.txt")


def test_a_byte_order_mark_is_not_part_of_the_first_word(tmp_path):
    """As Windows Notepad saves UTF-8."""
    (tmp_path / "h.txt").write_bytes("\ufeffcat dog 4\ncat car 3\n".encode())
    (tmp_path / "c.txt").write_bytes("\ufeffcat\ndog\n".encode())
    assert read_human_pairs(tmp_path / "h.txt").pairs[0] == ("cat", "dog")
    assert read_concepts(tmp_path / "c.txt") == ["cat", "dog"]


def test_a_concept_in_every_pool_sentence_is_refused():
    corpus = [f"the cat number {i}." for i in range(30)] + [f"the dog number {i}." for i in range(30)]
    with pytest.raises(InputError, match="^the: in every one of the 60 negative-pool sentences"):
        build_concept_set(corpus, ["the", "cat", "dog"], n_pos=10, n_neg=100, min_pos=5, seed=0)
    # A pool of 1 named a concept alone, not the pool's size (an audit).
    with pytest.raises(InputError, match=r"leave it out of the concepts or draw a pool larger than --n-neg 1$"):
        build_concept_set(corpus, ["cat", "dog"], n_pos=10, n_neg=1, min_pos=5, seed=0)


def test_rated_words_that_can_never_be_concepts_are_named(tmp_path, caplog):
    """Their pairs were left out without a word, unlike concepts with too few sentences."""
    from expertlens_lite import RunConfig
    from expertlens_lite.pipeline import load_inputs

    rated = ["birds feathers 40", "kitchen breakfast 30", "soup salad 20", "red pink 10", "ice-cream dessert 35", "U.S. kitchen 5"]
    (tmp_path / "h.txt").write_text("\n".join(rated) + "\n")
    _, pairs = load_inputs(RunConfig(model="minilm", human=tmp_path / "h.txt", n_pos=16, n_neg=200, min_pos=10))
    assert len(pairs.pairs) == 4
    assert f"2 rated word(s) of {tmp_path / 'h.txt'} are not single words as the corpus is matched, so never concepts" in caplog.text
    assert "so never concepts; their pairs are left out: ice-cream, u.s.\n" in caplog.text
