"""Sentences per second of a Pythia-sized model on the CPU and on CUDA, same run.

Usage::

    python benchmarks/bench_devices.py [--sentences 1000] [--batch-size 32] [--rounds 3] [--json out.json]

Builds a random GPT-NeoX of Pythia-410m's shape (24 layers × 4,096 MLP units, hidden
1,024; ``_models.PYTHIA_410M``), exports it (with its fp16 variant where CUDA starts:
a CPU-only run exports no fp16), and runs the first ``--sentences`` sentences of the
default sentence pool through each engine the way runs do
(:func:`expertlens_lite.runtime.pooled_batches`): ONNX Runtime fp32 on the CPU
(a batch per core), and, where ONNX Runtime's CUDA provider starts
(:func:`expertlens_lite.devices.cuda_available`; the ``gpu`` extra), fp32 and fp16 on
CUDA with I/O binding. Each engine warms up on a few batches, then runs every sentence
``--rounds`` times; the median is reported, with each engine's max |Δ| from CPU fp32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine  # noqa: E402
from _models import PYTHIA_410M, random_model  # noqa: E402

from expertlens_lite import RunConfig  # noqa: E402
from expertlens_lite.batching import PoolingOptions, encode, pad_id  # noqa: E402
from expertlens_lite.devices import batches_at_once, cuda_available  # noqa: E402
from expertlens_lite.export import export_model  # noqa: E402
from expertlens_lite.export.surgery import response_outputs  # noqa: E402
from expertlens_lite.models.sources import ModelSource  # noqa: E402
from expertlens_lite.pipeline import load_inputs  # noqa: E402
from expertlens_lite.runtime import inference_session, plan_batches, pooled_batches  # noqa: E402


def engine(exported, quantize: str, device: str, batch_size: int):
    """A function that computes the pooled responses of its sentences on ``device``, as
    runs do (tokenizing included), with one session for all its calls."""
    tokenizer = exported.tokenizer()
    names = response_outputs(exported.manifest.n_layers, "max")
    workers = batches_at_once(device)
    session = inference_session(exported.onnx_path(quantize), device, workers, names)
    prefix = exported.prefix()

    def run(sentences: list[str]) -> np.ndarray:
        encoded = encode(tokenizer, sentences)
        out = np.empty((len(sentences), exported.manifest.n_neurons), dtype=np.float32)
        for rows, outputs in pooled_batches(session, names, encoded, plan_batches(session, encoded, PoolingOptions(), batch_size, prefix), PoolingOptions(), pad_id(tokenizer), device, workers, prefix):
            out[rows] = np.concatenate(outputs[:-1], axis=1)  # the last is the sentence embedding
        return out

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=RunConfig().batch_size)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    concept_set, _ = load_inputs(RunConfig())
    sentences = list(concept_set.sentences)[: args.sentences]
    engines = [("cpu", "none")] + ([("cuda", "none"), ("cuda", "fp16")] if cuda_available() else [])
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        source = ModelSource("pythia-410m-random", str(random_model(tmp / "model", "gpt_neox", **PYTHIA_410M)), None, "pythia-410m-random")
        exported = export_model(source, tmp / "home")
        for quantize in {q for _, q in engines} - {"none"}:
            export_model(source, tmp / "home", quantize)
        export_seconds = time.perf_counter() - start
        tokens = int(encode(exported.tokenizer(), sentences).lengths().sum())
        reference = None
        for device, quantize in engines:
            run = engine(exported, quantize, device, args.batch_size)
            run(sentences[: 4 * args.batch_size])  # warm-up: allocations, thread pools, CUDA kernels
            times, out = [], None
            for _ in range(args.rounds):
                begin = time.perf_counter()
                out = run(sentences)
                times.append(time.perf_counter() - begin)
            reference = out if reference is None else reference
            median = statistics.median(times)
            rows[f"{device}_{quantize}"] = {
                "median_s": round(median, 3), "rounds_s": [round(t, 3) for t in times],
                "sentences_per_s": round(len(sentences) / median, 1), "tokens_per_s": round(tokens / median),
                "max_abs_diff_vs_cpu_fp32": float(np.abs(out - reference).max()),
            }
            print(f"{device} {quantize}: {rows[f'{device}_{quantize}']}", flush=True)
    report = {
        "machine": machine(), "model": "random GPT-NeoX, Pythia-410m shape", "n_neurons": exported.manifest.n_neurons,
        "sentences": len(sentences), "batch_size": args.batch_size, "export_seconds": round(export_seconds, 1),
        "cuda": cuda_available(), "engines": rows,
    }
    if not cuda_available():
        report["note"] = "ONNX Runtime's CUDA provider does not start here (no GPU, or no 'gpu' extra): CPU only"
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
