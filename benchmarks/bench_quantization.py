"""Do the expert sets survive int8? The default run in fp32 and in int8, side by side.

Usage::

    python benchmarks/bench_quantization.py [--model smollm2] [--json out.json]

Reports, for every selection rule of the run, the mean over concepts of the Jaccard
index between a concept's fp32 and int8 expert sets, and the change in Spearman ρ
with MEN for every measure; plus the responses stage time of each (same run).
Targets: mean Jaccard ≥ 0.8 at the default rule, |Δρ| ≤ 0.03.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine  # noqa: E402

from expertlens_lite import RunConfig, run  # noqa: E402
from expertlens_lite.kernels import unpack_masks  # noqa: E402
from expertlens_lite.selection import base_rates, select  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=RunConfig().model)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {q: run(RunConfig(model=args.model, quantize=q, out=Path(tmp) / q)) for q in ("none", "int8")}
    fp32, int8 = runs["none"], runs["int8"]
    cs = fp32.concept_set
    rates = base_rates(np.array([len(p) for p in cs.positives]), np.array([cs.n_negatives(c) for c in range(len(cs.concepts))]))
    n = fp32.ap.shape[1]
    report = {"machine": machine(), "model": args.model, "selection": {}, "rho": {}}
    for selection in RunConfig().selections():
        a = unpack_masks(select(fp32.ap, selection, rates), n)
        b = unpack_masks(select(int8.ap, selection, rates), n)
        union = (a | b).sum(axis=1)
        jaccard = np.where(union > 0, (a & b).sum(axis=1) / np.maximum(union, 1), 1.0)
        report["selection"][selection.label] = {"mean_jaccard_fp32_int8": round(float(jaccard.mean()), 3),
                                                "median_set_size_fp32": float(np.median(a.sum(axis=1)))}
    for row32, row8 in zip(fp32.summary["comparison"], int8.summary["comparison"]):
        r32, r8 = row32["spearman"], row8["spearman"]
        report["rho"][row32["measure"]] = {"fp32": r32, "int8": r8, "delta": None if r32 is None or r8 is None else round(r8 - r32, 3)}
    report["responses_seconds"] = {q: r.summary["timings"]["responses"] for q, r in runs.items()}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
