"""An export's tokenizer.json, read without transformers, tokenizes as transformers does;
where it would not, the export notices and runs tokenize with transformers."""

from __future__ import annotations

import json

import pytest
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

from expertlens_lite.baselines import word_token_ids
from expertlens_lite.batching import encode, pad_id
from expertlens_lite.concepts import read_corpus
from expertlens_lite.export import export_model, exporter
from expertlens_lite.export.tokenizer import PROBES, JsonTokenizer, disagreement
from expertlens_lite.human import read_human_pairs
from expertlens_lite.paths import DEFAULT_CORPUS, DEFAULT_HUMAN, bundled

from .test_parity import tiny_source


def auto_tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def assert_same_tokens(lean, reference, sentences, words):
    a, b = encode(lean, sentences), encode(reference, sentences)
    assert [x.tolist() for x in a.input_ids] == [x.tolist() for x in b.input_ids]
    assert [x.tolist() for x in a.special] == [x.tolist() for x in b.special]
    assert [word_token_ids(lean, w) for w in words] == [word_token_ids(reference, w) for w in words]
    assert pad_id(lean) == pad_id(reference)


def default_words() -> list[str]:
    return sorted({w for pair in read_human_pairs(bundled(DEFAULT_HUMAN)).pairs for w in pair})


@pytest.mark.parametrize("model", ["minilm", pytest.param("smollm2", marks=pytest.mark.slow)])
def test_a_bundled_model_tokenizes_the_same_without_transformers(model, request):
    """Over the whole default corpus, the MEN words and the probe strings."""
    exported = request.getfixturevalue(model)
    assert exported.manifest.tokenizer_json
    lean = exported.tokenizer()
    assert isinstance(lean, JsonTokenizer)
    assert_same_tokens(lean, auto_tokenizer(exported.directory), read_corpus(bundled(DEFAULT_CORPUS)) + list(PROBES), default_words())


def _byte_level_bpe() -> Tokenizer:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    special = ["<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(read_corpus(bundled(DEFAULT_CORPUS)), trainer)
    return backend


def _word_piece() -> Tokenizer:
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=600, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"])
    backend.train_from_iterator(read_corpus(bundled(DEFAULT_CORPUS)), trainer)
    return backend


def gpt2_with_prefix_space():
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast(tokenizer_object=_byte_level_bpe(), add_prefix_space=True, eos_token="</s>", bos_token="<s>")


def llama_with_bos_and_eos():
    from transformers import LlamaTokenizerFast

    return LlamaTokenizerFast(tokenizer_object=_byte_level_bpe(), bos_token="<s>", eos_token="</s>", add_bos_token=True, add_eos_token=True)


def bert_keeping_case():
    from transformers import BertTokenizerFast

    return BertTokenizerFast(tokenizer_object=_word_piece(), do_lower_case=False, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")


@pytest.mark.parametrize("make", [gpt2_with_prefix_space, llama_with_bos_and_eos, bert_keeping_case])
def test_tokenizer_classes_that_change_their_backend_when_made(make, tmp_path):
    """These classes rewrite the pre-tokenizer, post-processor or normalizer from their
    options when made; the tokenizer.json they save must carry that."""
    make().save_pretrained(tmp_path)
    reference = auto_tokenizer(tmp_path)
    assert disagreement(reference, tmp_path) is None
    assert_same_tokens(JsonTokenizer(tmp_path), reference, read_corpus(bundled(DEFAULT_CORPUS))[:300], default_words()[:100])


def test_a_tokenizer_json_that_the_class_overrides_is_noticed(tmp_path):
    """A saved tokenizer.json without the BOS and EOS that the configuration asks for:
    transformers' Llama class adds them back when loading, the file alone would not."""
    llama_with_bos_and_eos().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    saved["post_processor"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(saved))
    assert disagreement(auto_tokenizer(tmp_path), tmp_path) == f"the tokens of {PROBES[0]!r}"


def test_an_export_whose_tokenizer_json_differs_is_tokenized_by_transformers(tmp_path, monkeypatch):
    source = tiny_source("gpt_neox", tmp_path / "model", bos=True)
    monkeypatch.setattr(exporter, "disagreement", lambda reference, directory: "the tokens of 'x'")
    exported = export_model(source, tmp_path / "home")
    assert not exported.manifest.tokenizer_json
    assert type(exported.tokenizer()).__name__ == "PreTrainedTokenizerFast"


def test_an_export_made_before_the_check_is_checked_once_when_reused(tmp_path):
    source = tiny_source("gpt_neox", tmp_path / "model", bos=True)
    exported = export_model(source, tmp_path / "home")
    manifest = json.loads((exported.directory / "manifest.json").read_text())
    del manifest["tokenizer_json"]
    (exported.directory / "manifest.json").write_text(json.dumps(manifest))
    again = export_model(source, tmp_path / "home")
    assert again.manifest.tokenizer_json is True and isinstance(again.tokenizer(), JsonTokenizer)
    assert json.loads((exported.directory / "manifest.json").read_text())["tokenizer_json"] is True
    assert again.manifest.sizes == exported.manifest.sizes  # nothing else changed
