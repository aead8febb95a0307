"""The real causal LLM: SmolLM2-135M-Instruct from its GGUF file (issue: GGUF as a model source).

Slow (GGUF dequantization and export take tens of seconds), but CI runs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expertlens_lite.batching import PoolingOptions, encode, make_batch, pad_id
from expertlens_lite.errors import ModelError
from expertlens_lite.export import export_model, load_pretrained
from expertlens_lite.export.reference import (
    pool_activations,
    torch_activations,
    torch_responses,
)
from expertlens_lite.models.sources import (
    BUNDLED_MODELS,
    gguf_scalars,
    gguf_to_folder,
    resolve_model,
)

from .test_parity import ATOL, onnx_responses, sample_batch

pytestmark = pytest.mark.slow


def test_gguf_loads_as_llama_and_exports(smollm2, elens_home):
    manifest = smollm2.manifest
    assert manifest.architecture == "llama" and manifest.causal
    assert manifest.units_per_layer == [1536] * 30 and manifest.n_neurons == 46080
    assert manifest.parity_max_abs_diff <= ATOL
    source = resolve_model("smollm2", None, elens_home)
    assert source.path == str(gguf_to_folder(BUNDLED_MODELS["smollm2"].path(), elens_home))
    # What a fresh cache makes the copy from: the bundled name lost it (a review), which
    # the copy the session's fixture made first hid from the export here.
    assert (source.name, source.gguf) == ("smollm2", str(BUNDLED_MODELS["smollm2"].path()))


def test_smollm2_parity_on_padded_batch(smollm2, elens_home):
    """|ONNX − PyTorch| ≤ 1e-4 · max(1, |PyTorch|), the export check's own bound.

    An absolute 1e-4 is below what float32 resolves here: SmolLM2's pooled maxima reach
    the tens (and the thousands with BOS kept), and over 20 random batches of 10
    corpus sentences (seeds 0-19) the max |Δ| passed 1e-4 on 10 batches with the BOS
    computed in every sentence (export format 4) and on 15 with it baked in as past
    keys and values (format 5), max 7.6e-3 and 7.1e-3, while the scaled difference
    stayed at most 8.5e-5 and 6.3e-5.
    """
    architecture, model, tokenizer = load_pretrained(resolve_model("smollm2", None, elens_home))
    assert tokenizer.pad_token_id is None or tokenizer.pad_token_id >= 0
    for options in (PoolingOptions("max"), PoolingOptions("mean"), PoolingOptions("max", keep_special_tokens=True)):
        batch = sample_batch(tokenizer, n=10, seed=4, options=options)
        assert (batch["attention_mask"] == 0).any()
        expected, expected_emb = torch_responses(model, architecture, batch, options.pooling)
        got, got_emb = onnx_responses(smollm2, batch, options.pooling)
        for value, reference in ((got, expected), (got_emb, expected_emb)):
            assert (np.abs(value - reference) <= ATOL * np.maximum(1.0, np.abs(reference))).all()


def test_smollm2_shared_heads_pool_what_a_whole_forward_pools(smollm2, elens_home, tmp_path):
    """The run's own path: 60 corpus sentences (and 20 made to start alike), each head
    (BOS and first token) run once, then the rest of each sentence with the head as past;
    same bound as the parity test, against PyTorch over each whole sentence in float64.

    Why float64: against PyTorch's own float32 forward this check sits on float32's
    noise floor. Measured on these 80 sentences (max pooling, scaled |Δ|): the shared
    heads are 3.8e-5 from the float64 forward, PyTorch float32 is 8.0e-5 from it, and
    the two float32 results are 1.04e-4 apart, one value in 3.7 million past the bound.
    The float64 forward is the exact answer to compare both with.
    """
    from expertlens_lite.concepts import read_corpus
    from expertlens_lite.heads import group_heads
    from expertlens_lite.paths import bundled
    from expertlens_lite.runtime import compute_responses

    architecture, model, tokenizer = load_pretrained(resolve_model("smollm2", None, elens_home))
    model = model.double()
    corpus = read_corpus(bundled("corpus.txt"))
    sentences = corpus[::37][:60] + [f"The {s[0].lower()}{s[1:]}" for s in corpus[5::97][:20]]
    encoded = encode(tokenizer, sentences)
    assert len(group_heads(encoded, PoolingOptions(), 2).first) <= 61  # the last 20 share their head
    model_inputs = None
    for options in (PoolingOptions("max"), PoolingOptions("mean", keep_special_tokens=True)):
        got = compute_responses(smollm2, sentences, tmp_path, options=options, device="cpu")
        batch = make_batch(encoded, range(len(sentences)), pad_id(tokenizer), options)
        if model_inputs is None:  # one float64 forward (~10 s) serves both poolings
            model_inputs = {k: v for k, v in batch.items() if k != "pool_mask"}
            neurons, hidden, _ = torch_activations(model, architecture, batch)
        assert all((batch[k] == v).all() for k, v in model_inputs.items())
        expected, expected_emb = pool_activations(neurons, hidden, batch["pool_mask"], options.pooling)
        for value, reference in ((np.asarray(got.neurons), expected), (np.asarray(got.sentence_embeddings), expected_emb)):
            assert (np.abs(value - reference) <= ATOL * np.maximum(1.0, np.abs(reference))).all()


def test_bos_exclusion_changes_only_maxima_on_bos(smollm2, elens_home):
    import torch

    architecture, model, tokenizer = load_pretrained(resolve_model("smollm2", None, elens_home))
    encoded = encode(tokenizer, ["Birds sing at dawn.", "The soup was far too salty for me.", "Rain."])
    assert all(ids[0] == tokenizer.bos_token_id and special[0] for ids, special in zip(encoded.input_ids, encoded.special))
    pad = pad_id(tokenizer)
    kept = make_batch(encoded, range(3), pad, PoolingOptions(keep_special_tokens=True))
    dropped = make_batch(encoded, range(3), pad, PoolingOptions())
    assert (kept["pool_mask"][:, 0] == 1).all() and (dropped["pool_mask"][:, 0] == 0).all()
    with_bos, _ = onnx_responses(smollm2, kept)
    without_bos, _ = onnx_responses(smollm2, dropped)

    captured = []
    hooks = [
        model.get_submodule(architecture.mlp_down_module(i)).register_forward_pre_hook(lambda m, a: captured.append(a[0][..., :].detach()))
        for i in range(model.config.num_hidden_layers)
    ]
    with torch.no_grad():
        model(input_ids=torch.from_numpy(kept["input_ids"]), attention_mask=torch.from_numpy(kept["attention_mask"]))
    for h in hooks:
        h.remove()
    acts = torch.cat(captured, dim=-1).numpy()  # [batch, seq, neurons]
    real = kept["attention_mask"].astype(bool)
    others = np.where(real[:, 1:, None], acts[:, 1:], -np.inf).max(axis=1)
    bos_wins = acts[:, 0] > others + 1e-3  # BOS strictly holds the max
    bos_loses = acts[:, 0] < others - 1e-3
    changed = np.abs(with_bos - without_bos) > 1e-4
    assert bos_wins.any(), "some neuron should peak on the BOS token"
    assert changed[bos_wins].all()
    assert not changed[bos_loses].any()


def test_an_export_with_smollm2s_tokenizer_prints_no_legacy_notice(smollm2_dequantizing, elens_home, tmp_path):
    """Optimum's look for processors loaded Llama's tokenizer class outside the quiet
    block: a paragraph on its "legacy" default on every fresh export of SmolLM2, or of a
    model with its tokenizer (an audit). A tiny Llama with that tokenizer, to be quick."""
    import shutil
    import subprocess
    import sys

    from .test_parity import _tiny, tiny_source

    config = _tiny("llama")
    config.vocab_size = 49152
    folder = Path(tiny_source("llama", tmp_path / "model", config=config).path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(Path(resolve_model("smollm2", None, elens_home).path) / name, folder / name)
    command = [str(Path(sys.executable).with_name("elens-lite")), "export", "--model", str(folder), "--out", str(tmp_path / "x")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    assert "legacy" not in done.stderr, done.stderr


def test_non_gguf_file_named_gguf(tmp_path, elens_home):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    with pytest.raises(ModelError, match="is not a GGUF file"):
        resolve_model(str(fake), None, elens_home)


@pytest.mark.parametrize("endian", ["LITTLE", "BIG"])
def test_gguf_scalars_are_those_ggufs_own_reader_reads(endian, tmp_path):
    """Every kind of field, arrays among them (of strings too, as a vocabulary is), which
    are stepped over; and a file cut inside its metadata is one clear error."""
    import gguf

    path = tmp_path / "all.gguf"
    writer = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian[endian])
    numbers = [("uint8", 7), ("int8", -7), ("uint16", 700), ("int16", -700), ("uint32", 70_000), ("int32", -70_000),
               ("float32", 0.1), ("uint64", 2**40), ("int64", -(2**40)), ("float64", 0.1), ("bool", True)]  # fmt: skip
    for kind, value in numbers:
        getattr(writer, f"add_{kind}")(f"x.{kind}", value)
    for kind, values in (("ints", [1, -2, 3]), ("floats", [0.5, 1.5]), ("bools", [True, False]), ("nested", [[1, 2], [3]])):
        writer.add_array(f"x.{kind}", values)
    writer.add_array("tokenizer.ggml.tokens", ["a", "ü", "", "<|im_end|>"])
    writer.add_string("x.after_the_arrays", "still read")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    fields = {key: field for key, field in gguf.GGUFReader(path).fields.items() if not key.startswith("GGUF.")}  # not metadata
    expected = {key: field.contents() for key, field in fields.items() if field.types[0] != gguf.GGUFValueType.ARRAY}
    assert gguf_scalars(path) == expected and expected["x.after_the_arrays"] == "still read" and len(expected) == len(numbers) + 2
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ModelError, match=r"all.gguf is not a readable GGUF model file: it ends inside its metadata$"):
        gguf_scalars(path)


def test_the_bundled_gguf_is_described_from_its_metadata():
    described = BUNDLED_MODELS["smollm2"].describe()
    assert (described["size_mb"], described["layers"], described["neurons"]) == (98, 30, 30 * 1536)


def _tiny_gguf(path, architecture: str):
    import gguf

    writer = gguf.GGUFWriter(path, architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_of_unsupported_architecture(tmp_path, elens_home):
    """One transformers reads but expertlens-lite does not study was refused only after its
    dequantization; the readable ones listed transformers' "general" and "tokenizer" (an audit)."""
    with pytest.raises(ModelError, match=r"GGUF architecture 'rwkv6' .* cannot be read by transformers; readable: .*llama") as refused:
        export_model(str(_tiny_gguf(tmp_path / "rwkv.gguf", "rwkv6")), elens_home)
    assert "general" not in str(refused.value) and "tokenizer" not in str(refused.value)
    with pytest.raises(ModelError, match=r"^unsupported model architecture 'mamba'; supported: "):
        export_model(str(_tiny_gguf(tmp_path / "mamba.gguf", "mamba")), elens_home)
    assert not list(elens_home.glob("gguf/.*"))  # nothing dequantized, nothing left


def test_a_gguf_cut_inside_its_tensors_is_one_line(tmp_path, elens_home):
    """A ValueError traceback from numpy's reshape (an audit)."""
    cut = tmp_path / "cut.gguf"
    with BUNDLED_MODELS["smollm2"].path().open("rb") as whole:
        cut.write_bytes(whole.read(20_000_000))
    with pytest.raises(ModelError, match=r"cut.gguf cannot be read as a GGUF model \(.*\); is the file cut short or damaged\?$"):
        export_model(str(cut), elens_home)


def test_dequantizing_prints_no_tokenizer_notice_and_no_bar(smollm2_dequantizing):
    """transformers' paragraph on Llama's "legacy" tokenizer default, which says itself
    that it does not apply to a tokenizer read from a GGUF file; and the GGUF loader's own
    tqdm bar, which drew inside the run's export bar, or in a log file."""
    assert "legacy" not in smollm2_dequantizing and "de-quantizing" not in smollm2_dequantizing
