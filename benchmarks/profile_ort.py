"""Where ONNX Runtime spends its time: kernel time per operator type, from ORT's profiler.

Usage::

    python benchmarks/profile_ort.py [--model smollm2] [--quantize none|int8] [--batches 10]

Runs every third length bucket of the default sentence pool (so short and long
batches both count) up to ``--batches`` batches of 32, after one warm-up batch, and
prints each operator type's share of the summed kernel time. The profiler adds
some overhead of its own, so use the shares, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

from expertlens_lite import RunConfig
from expertlens_lite.batching import PoolingOptions, encode, iter_batches, pad_id
from expertlens_lite.export import export_model
from expertlens_lite.models.sources import resolve_model
from expertlens_lite.paths import cache_dir
from expertlens_lite.pipeline import load_inputs
from expertlens_lite.runtime import feed_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=RunConfig().model)
    parser.add_argument("--quantize", default="none", choices=["none", "int8"])
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    import onnxruntime as ort

    cache = cache_dir()
    exported = export_model(resolve_model(args.model, None, cache), cache, args.quantize)
    tokenizer = exported.tokenizer()
    concept_set, _ = load_inputs(RunConfig(model=args.model))
    encoded = encode(tokenizer, concept_set.sentences)
    batches = list(iter_batches(encoded, 32, pad_id(tokenizer), PoolingOptions()))[::3][: args.batches]
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(exported.onnx_path(args.quantize)), options, providers=["CPUExecutionProvider"])
        session.run(None, feed_for(session, batches[0][1]))
        for _, batch in batches:
            session.run(None, feed_for(session, batch))
        events = json.loads(Path(session.end_profiling()).read_text())
    # Profiling is a session option, on from the session's start, so the warm-up run is
    # in the profile too: its node events (those before the first run ended) are left out.
    first_run = min((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"), key=lambda e: e["ts"])
    warm_up_end = first_run["ts"] + first_run["dur"]
    per_op: Counter[str] = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= warm_up_end:
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values())
    print(f"{args.model} {args.quantize}: {len(batches)} batches, kernel time {total / 1e6:.2f} s (profiled)")
    for op, microseconds in per_op.most_common(12):
        print(f"{op:32} {microseconds / 1e3:9.1f} ms {microseconds / total:7.1%}")


if __name__ == "__main__":
    main()
