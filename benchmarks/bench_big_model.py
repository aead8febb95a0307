"""Responses of a model with over a million MLP neurons stream to disk.

Usage::

    python benchmarks/bench_big_model.py [--units 262144] [--layers 4] [--sentences 400]

Builds a random GPT-NeoX (hidden 64, ``layers × units`` MLP neurons; default
4 × 262,144 = 1,048,576), exports it, computes the responses of the first
``--sentences`` sentences of the bundled corpus, and reports the response matrix's
size on disk against the process's resident memory, sampled after every batch (both
in MiB, 2^20 bytes). A causal model's head batches come first (``expertlens_lite/heads.py``)
and may finish no sentence, so each sample names its batch and the sentences done by
then: the first batch, the batches a quarter, half, three quarters of the way, and the
last. The matrix is written batch by batch with positioned writes, so resident memory
should plateau after the first batches (ONNX Runtime's activation arena) while
the matrix keeps growing.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine  # noqa: E402


def rss_mib() -> float:
    """Current resident memory of this process, in MiB."""
    line = next(line for line in open("/proc/self/status") if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=262_144)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--sentences", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from _models import random_model

    from expertlens_lite.concepts import read_corpus
    from expertlens_lite.export import export_model
    from expertlens_lite.models.sources import ModelSource
    from expertlens_lite.paths import bundled
    from expertlens_lite.runtime import compute_responses

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        random_model(
            tmp / "model", "gpt_neox", hidden_size=64, num_hidden_layers=args.layers, num_attention_heads=4,
            intermediate_size=args.units, max_position_embeddings=256,
        )
        exported = export_model(ModelSource("big-neox", str(tmp / "model"), None, "big-neox"), tmp / "home")
        sentences = read_corpus(bundled("corpus.txt"))[: args.sentences]
        import gc

        gc.collect()
        before = rss_mib()
        samples: list[dict[str, int]] = []
        start = time.perf_counter()
        responses = compute_responses(
            exported, sentences, tmp / "home", batch_size=args.batch_size, device="cpu",
            progress=lambda done, total: samples.append({"batch": len(samples) + 1, "sentences_done": done, "rss_mib": round(rss_mib())}),
        )
        seconds = time.perf_counter() - start
        picked = [samples[0]] + [samples[max(0, round(q * len(samples)) - 1)] for q in (0.25, 0.5, 0.75, 1.0)]
        report = {
            "machine": machine(), "neurons": exported.manifest.n_neurons, "sentences": len(sentences), "batch_size": args.batch_size,
            "batches": len(samples), "matrix_mib": round(responses.neurons.nbytes / 2**20), "rss_mib_before_responses": round(before),
            "rss_mib_after_batch": picked,
            "peak_rss_mib_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "responses_seconds": round(seconds, 1),
        }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
