"""Random models of a given shape for the benchmarks (nothing can be downloaded here)."""

from __future__ import annotations

from pathlib import Path

# Pythia-410m's shape (EleutherAI/pythia-410m config.json), less its vocabulary: the
# bundled MiniLM tokenizer has 30,522 tokens, which changes the embedding table only.
PYTHIA_410M = {
    "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
    "rotary_pct": 0.25, "max_position_embeddings": 2048, "use_parallel_residual": True,
}


def random_model(folder: Path, model_type: str, **config) -> Path:
    """A randomly initialised ``model_type`` (seed 0) with the bundled MiniLM tokenizer,
    saved to ``folder`` for :func:`expertlens_lite.export.export_model`."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from expertlens_lite.models.sources import resolve_model

    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.for_model(model_type, vocab_size=30522, **config)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model("minilm", None, folder).path).save_pretrained(folder)
    return folder
