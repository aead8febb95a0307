"""Benchmark of the expertise kernels (``expertlens_lite.kernels``).

Four measurements, printed as a table (and written as JSON with ``--json``):

1. The ml-selfcond way (one ``sklearn.metrics.average_precision_score`` call per
   (concept, neuron)) against ``average_precision_many`` on the same data: 5,000
   sentences (1,000 shared negatives + 40 concepts x 100 positives) x 9,216
   neurons, float32. sklearn is timed on a random subset of neurons and
   extrapolated; the APs of that subset are compared.
2. Throughput in (concept, neuron) APs per second at 1,000 concepts x 100
   positives (1,000 shared negatives: 101,000 sentences), float16. All 100,000
   neurons would be 20 GB, so by default the rate is measured on a slice of
   10,000 neurons (the cost per neuron does not depend on how many there are);
   part 4 with ``--memmap-sentences 101000 --memmap-pool 1000`` runs the full
   matrix from disk. 8 concepts x 8 neurons of its APs are compared with sklearn's.
3. Bytes of responses processed per second by the kernel against a plain
   ``np.sum`` over the same array (a memory-bandwidth yardstick), and the
   kernel's cost per response value times its threads (ns/value x threads).
4. A float16 response file on disk processed through ``np.load(mmap_mode="r")``,
   in a child process whose peak resident memory during the run (VmHWM) is
   reported next to the file size. The page cache is emptied for the file
   first, so it is read from disk; a second run shows the warm-cache time.

The machine may be shared: the 1-minute load average before and after each
part is recorded, since other processes slow the kernels down.

Run: ``python benchmarks/bench_kernels.py [--json out.json]``; ``--help`` lists
the sizes that can be changed.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from expertlens_lite.kernels import average_precision_many


def structured_responses(
    rng: np.random.Generator,
    n_sentences: int,
    n_neurons: int,
    positives: list[np.ndarray],
    dtype: np.dtype,
    chunk_rows: int = 2048,
) -> np.ndarray:
    """Random responses with some structure: per-neuron scale and offset, 10% of
    neurons ReLU-like (many tied zeros), and for each concept 50 neurons that
    fire more on its positives."""
    x = np.empty((n_sentences, n_neurons), dtype)
    scale = rng.uniform(0.2, 2.0, n_neurons).astype(np.float32)
    offset = rng.normal(0, 0.5, n_neurons).astype(np.float32)
    relu = rng.random(n_neurons) < 0.1
    for r0 in range(0, n_sentences, chunk_rows):
        block = rng.standard_normal((min(chunk_rows, n_sentences - r0), n_neurons), np.float32)
        block = block * scale + offset
        block[:, relu] = np.maximum(block[:, relu], 0)
        x[r0 : r0 + block.shape[0]] = block
    for pos in positives:
        experts = rng.choice(n_neurons, min(50, n_neurons), replace=False)
        x[np.ix_(pos, experts)] += np.asarray(1.0, dtype)
    return x


def concept_layout(
    rng: np.random.Generator, n_pool: int, n_concepts: int, n_pos: int, max_excluded: int
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Pool rows first, then each concept's positives; a few excluded pool rows each
    (at most all but one, so that every concept keeps a negative)."""
    pool = np.arange(n_pool)
    positives = [n_pool + c * n_pos + np.arange(n_pos) for c in range(n_concepts)]
    max_excluded = min(max_excluded, n_pool - 1)
    excluded = [
        rng.choice(pool, int(rng.integers(0, max_excluded + 1)), replace=False)
        for _ in range(n_concepts)
    ]
    return pool, positives, excluded


def selfcond_loop(x, positives, pool, excluded, neurons) -> tuple[np.ndarray, float]:
    """ml-selfcond's expertise: per concept, labels for its sentences and one sklearn
    call per unit on a [units, sentences] response array."""
    from sklearn.metrics import average_precision_score

    out = np.empty((len(positives), len(neurons)))
    elapsed = 0.0
    for c, pos in enumerate(positives):
        neg = np.setdiff1d(pool, np.union1d(excluded[c], pos))
        rows = np.r_[pos, neg]
        labels = np.r_[np.ones(pos.size, int), np.zeros(neg.size, int)]
        units = np.ascontiguousarray(x[np.ix_(rows, neurons)].T)
        start = time.perf_counter()
        for u in range(len(neurons)):
            out[c, u] = average_precision_score(y_true=labels, y_score=units[u])
        elapsed += time.perf_counter() - start
    return out, elapsed


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench_vs_sklearn(args, rng) -> dict:
    pool, positives, excluded = concept_layout(rng, args.pool, args.concepts, args.positives, 20)
    n_sentences = args.pool + args.concepts * args.positives
    x = structured_responses(rng, n_sentences, args.neurons, positives, np.float32)
    # Compile (or load from cache) for this array type: a C-contiguous slice, like x.
    average_precision_many(np.ascontiguousarray(x[:, :64]), positives, pool, excluded)
    t_kernel, aps = best_time(lambda: average_precision_many(x, positives, pool, excluded),
                              args.repeats)
    subset = np.sort(rng.choice(args.neurons, args.sklearn_neurons, replace=False))
    ref, t_subset = selfcond_loop(x, positives, pool, excluded, subset)
    t_sklearn = t_subset * args.neurons / subset.size
    t_sum, _ = best_time(lambda: np.sum(x), max(args.repeats, 5))
    return {
        "n_sentences": n_sentences,
        "n_neurons": args.neurons,
        "n_concepts": args.concepts,
        "positives_per_concept": args.positives,
        "pool": args.pool,
        "dtype": "float32",
        "kernel_s": t_kernel,
        "sklearn_subset_neurons": int(subset.size),
        "sklearn_subset_calls": int(subset.size * args.concepts),
        "sklearn_subset_s": t_subset,
        "sklearn_extrapolated_s": t_sklearn,
        "speedup": t_sklearn / t_kernel,
        "max_abs_diff_vs_sklearn": float(np.max(np.abs(aps[:, subset] - ref))),
        "kernel_bytes_per_s": x.nbytes / t_kernel,
        "numpy_sum_bytes_per_s": x.nbytes / t_sum,
        "bandwidth_fraction": t_sum / t_kernel,
        "ns_per_value_x_threads": thread_ns_per_value(t_kernel, x.size),
    }


def thread_ns_per_value(seconds: float, n_values: int) -> float:
    """Kernel time per response value, times the Numba threads it ran on."""
    import numba

    return seconds * numba.get_num_threads() / n_values * 1e9


def bench_scale(args, rng) -> dict:
    pool, positives, excluded = concept_layout(
        rng, args.scale_pool, args.scale_concepts, args.scale_positives, 20
    )
    n_sentences = args.scale_pool + args.scale_concepts * args.scale_positives
    x = structured_responses(rng, n_sentences, args.scale_neurons, positives, np.float16)
    average_precision_many(np.ascontiguousarray(x[:, :64]), positives, pool, excluded)
    t_kernel, aps = best_time(lambda: average_precision_many(x, positives, pool, excluded),
                              args.repeats)
    t_sum, _ = best_time(lambda: np.sum(x, dtype=np.float32), 3)
    pairs = args.scale_concepts * args.scale_neurons
    # A few APs against sklearn, as part 1 checks its own; drawn from a generator of their
    # own so that the memmap part's data stays that of the seed.
    check = rng.spawn(1)[0]
    concepts = np.sort(check.choice(args.scale_concepts, min(8, args.scale_concepts), replace=False))
    neurons = np.sort(check.choice(args.scale_neurons, min(8, args.scale_neurons), replace=False))
    ref, _ = selfcond_loop(x, [positives[c] for c in concepts], pool,
                           [excluded[c] for c in concepts], neurons)
    return {
        "n_sentences": n_sentences,
        "n_neurons": args.scale_neurons,
        "n_concepts": args.scale_concepts,
        "positives_per_concept": args.scale_positives,
        "pool": args.scale_pool,
        "dtype": "float16",
        "kernel_s": t_kernel,
        "aps_per_s": pairs / t_kernel,
        "kernel_bytes_per_s": x.nbytes / t_kernel,
        "numpy_sum_bytes_per_s": x.nbytes / t_sum,
        "bandwidth_fraction": t_sum / t_kernel,
        "ns_per_value_x_threads": thread_ns_per_value(t_kernel, x.size),
        "max_abs_diff_vs_sklearn": float(np.max(np.abs(aps[np.ix_(concepts, neurons)] - ref))),
        "checked_pairs": int(ref.size),
    }


def write_npy(path: Path, rng, n_sentences: int, n_neurons: int, chunk_rows: int) -> None:
    """Write a float16 .npy of random responses a few rows at a time (bounded memory),
    then drop it from the page cache so that it is read back from disk."""
    header = {"descr": "<f2", "fortran_order": False, "shape": (n_sentences, n_neurons)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(f, header)
        for r0 in range(0, n_sentences, chunk_rows):
            rows = min(chunk_rows, n_sentences - r0)
            block = rng.standard_normal((rows, n_neurons), np.float32)
            block[:, ::10] = np.maximum(block[:, ::10], 0)
            block.astype(np.float16).tofile(f)
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def resident_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process from /proc/self/status.

    Not ``getrusage``: its ru_maxrss survives exec, so a child process would
    report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Start VmHWM afresh from the current RSS (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def memmap_child(path: str, n_pool: int, n_concepts: int, check_neurons: int, seed: int) -> None:
    """Runs in a fresh process: process the file, print JSON with timings and peak RSS."""
    from sklearn.metrics import average_precision_score

    x = np.load(Path(path), mmap_mode="r")  # a Path, as the pipeline opens its responses
    n_sentences, n_neurons = x.shape
    rng = np.random.default_rng(seed + 1)  # + 1: --seed 0 keeps the layout of the earlier runs
    n_pos = (n_sentences - n_pool) // n_concepts
    pool, positives, excluded = concept_layout(rng, n_pool, n_concepts, n_pos, 20)
    average_precision_many(np.zeros((n_sentences, 1), np.float16), positives, pool, excluded)
    rss_ready = resident_bytes("VmRSS")
    reset_peak_rss()
    start = time.perf_counter()
    aps = average_precision_many(x, positives, pool, excluded)
    elapsed = time.perf_counter() - start
    rss_peak = resident_bytes("VmHWM")
    diffs = []
    for m in rng.choice(n_neurons, min(check_neurons, n_neurons), replace=False):
        column = np.empty(n_sentences, np.float16)
        for r0 in range(0, n_sentences, 4096):  # read through the mapping, a little at a time
            column[r0 : r0 + 4096] = x[r0 : r0 + 4096, m]
            x.base.madvise(mmap.MADV_DONTNEED)
        for c in rng.choice(n_concepts, min(3, n_concepts), replace=False):
            neg = np.setdiff1d(pool, excluded[c])
            labels = np.r_[np.ones(n_pos, int), np.zeros(neg.size, int)]
            ref = average_precision_score(labels, column[np.r_[positives[c], neg]])
            diffs.append(abs(ref - aps[c, m]))
    print(json.dumps({
        "n_sentences": n_sentences, "n_neurons": n_neurons, "n_concepts": n_concepts,
        "positives_per_concept": n_pos, "pool": n_pool, "kernel_s": elapsed,
        "aps_per_s": n_concepts * n_neurons / elapsed,
        "bytes_per_s": x.nbytes / elapsed,
        "peak_rss_bytes": rss_peak, "rss_before_run_bytes": rss_ready,
        "result_bytes": aps.nbytes, "max_abs_diff_vs_sklearn": max(diffs),
        "checked_pairs": len(diffs),
    }))


def sequential_read_sum(path: Path, chunk_bytes: int = 64 * 2**20) -> float:
    """Seconds to read the file once from disk (cold) and np.sum it chunk by chunk."""
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        start = time.perf_counter()
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_2_0(f)
        while chunk := f.read(chunk_bytes):
            np.sum(np.frombuffer(chunk, np.float16), dtype=np.float32)
        return time.perf_counter() - start


def run_child(command: list[str]) -> dict:
    """The JSON the memmap child prints last; its stderr shown if it fails."""
    child = subprocess.run(command, check=False, capture_output=True, text=True)
    if child.returncode != 0:
        sys.stderr.write(child.stderr)
        raise SystemExit(f"the memmap child failed (exit {child.returncode}): {' '.join(command)}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def bench_memmap(args, rng) -> dict:
    # A name of its own: runs side by side do not write over each other's file.
    fd, name = tempfile.mkstemp(suffix=".npy", prefix="elens_bench_responses_", dir=args.memmap_dir)
    os.close(fd)
    path = Path(name)
    command = [sys.executable, __file__, "--memmap-child", str(path),
               "--memmap-pool", str(args.memmap_pool),
               "--memmap-concepts", str(args.memmap_concepts),
               "--memmap-check-neurons", str(args.memmap_check_neurons),
               "--seed", str(args.seed)]
    try:  # the file is removed even if its writing is cut short (it may be tens of GiB)
        start = time.perf_counter()
        write_npy(path, rng, args.memmap_sentences, args.memmap_neurons, chunk_rows=256)
        t_write = time.perf_counter() - start
        result = run_child(command)
        # Again, with whatever of the file the page cache kept from the first run.
        result["warm"] = run_child(command)
        result["file_bytes"] = path.stat().st_size
        result["write_s"] = t_write
        t_read = sequential_read_sum(path)
        result["sequential_read_sum_bytes_per_s"] = path.stat().st_size / t_read
        result["bandwidth_fraction"] = result["bytes_per_s"] / result[
            "sequential_read_sum_bytes_per_s"]
    finally:
        path.unlink(missing_ok=True)
    return result


def machine() -> dict:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )
    import numba

    return {
        "cpu": model, "nproc": os.cpu_count(), "numba_threads": numba.get_num_threads(),
        "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "python": platform.python_version(), "numpy": np.__version__,
        "numba": numba.__version__, "loadavg_start": os.getloadavg(),
    }


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _data_label(r: dict, dtype: str) -> str:
    """The data a part ran on, for the table: sentences x neurons, concepts, pool."""
    return (f"{r['n_sentences']} x {r['n_neurons']} {dtype}, {r['n_concepts']} concepts x "
            f"{r['positives_per_concept']} pos, pool {r['pool']}")


def _bandwidth_row(r: dict) -> tuple[str, str, str]:
    """The table row comparing the kernel's read rate with a plain np.sum over the same array."""
    return ("bytes/s: kernel vs np.sum", "same array",
            (f"{r['kernel_bytes_per_s'] / 1e9:.2f} vs {r['numpy_sum_bytes_per_s'] / 1e9:.2f} GB/s"
             f" ({r['bandwidth_fraction']:.3f} of np.sum); kernel "
             f"{r['ns_per_value_x_threads']:.1f} ns/value x threads"))


def print_table(report: dict) -> None:
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['nproc']} CPUs ({m['numba_threads']} numba threads), "
          f"{m['memory_gib']:.0f} GiB; load avg at start {m['loadavg_start'][0]:.2f}, "
          f"at end {m['loadavg_end'][0]:.2f}")
    rows = []
    if "vs_sklearn" in report:
        r = report["vs_sklearn"]
        shape = _data_label(r, "f32")
        rows += [
            ("sklearn loop (ml-selfcond)", shape,
             f"{r['sklearn_extrapolated_s']:.1f} s (extrapolated from {r['sklearn_subset_calls']}"
             f" calls on {r['sklearn_subset_neurons']} random neurons: {r['sklearn_subset_s']:.2f}"
             " s)"),
            ("average_precision_many", shape, f"{r['kernel_s']:.3f} s"),
            ("speed-up", "", f"{r['speedup']:.0f}x"),
            ("max |AP - sklearn|", "timed subset", f"{r['max_abs_diff_vs_sklearn']:.1e}"),
            _bandwidth_row(r),
        ]
    if "scale" in report:
        r = report["scale"]
        shape = _data_label(r, "f16")
        rows += [
            ("APs per second (on these neurons)", shape,
             f"{r['aps_per_s']:.3g} /s ({r['kernel_s']:.1f} s)"),
            _bandwidth_row(r),
            ("max |AP - sklearn|", f"{r['checked_pairs']} sampled pairs",
             f"{r['max_abs_diff_vs_sklearn']:.1e}"),
        ]
    if "memmap" in report:
        r = report["memmap"]
        shape = _data_label(r, f"f16 file ({gib(r['file_bytes'])})")
        rows += [
            ("memmap run (cold cache)", shape,
             f"{r['kernel_s']:.1f} s, {r['aps_per_s']:.3g} APs/s"),
            ("peak RSS during the run", "",
             f"{gib(r['peak_rss_bytes'])} (before it: {gib(r['rss_before_run_bytes'])}; the "
             f"result alone: {gib(r['result_bytes'])}); file {gib(r['file_bytes'])}"),
            ("memmap run again (warm cache)", "",
             f"{r['warm']['kernel_s']:.1f} s, peak RSS {gib(r['warm']['peak_rss_bytes'])}"),
            ("bytes/s: kernel vs read+np.sum", "same file, cold",
             f"{r['bytes_per_s'] / 1e9:.2f} vs "
             f"{r['sequential_read_sum_bytes_per_s'] / 1e9:.2f} GB/s "
             f"({r['bandwidth_fraction']:.2f})"),
            ("max |AP - sklearn|", f"{r['checked_pairs']} sampled pairs",
             f"{r['max_abs_diff_vs_sklearn']:.1e}"),
        ]
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, shape, value in rows:
        print(f"{name:<{width[0]}}  {shape:<{width[1]}}  {value}")
    loads = [f"{key} {report[key]['loadavg_1min'][0]:.1f}->{report[key]['loadavg_1min'][1]:.1f}"
             for key in ("vs_sklearn", "scale", "memmap") if key in report]
    print("1-min load average before->after each part: " + ", ".join(loads))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--only", choices=["vs-sklearn", "scale", "memmap"], action="append",
                   help="run only these parts (repeatable); default all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="kernel timings: best of (not the memmap part: one cold, one warm run)")
    p.add_argument("--neurons", type=int, default=9216)
    p.add_argument("--concepts", type=int, default=40)
    p.add_argument("--positives", type=int, default=100)
    p.add_argument("--pool", type=int, default=1000)
    p.add_argument("--sklearn-neurons", type=int, default=96,
                   help="random neurons timed with sklearn (times every concept)")
    p.add_argument("--scale-concepts", type=int, default=1000)
    p.add_argument("--scale-neurons", type=int, default=10_000,
                   help="a slice of the 100,000 neurons: all of them would be 20 GB")
    p.add_argument("--scale-positives", type=int, default=100)
    p.add_argument("--scale-pool", type=int, default=1000)
    p.add_argument("--memmap-sentences", type=int, default=200_000)
    p.add_argument("--memmap-neurons", type=int, default=100_000)
    p.add_argument("--memmap-pool", type=int, default=10_000)
    p.add_argument("--memmap-concepts", type=int, default=1000,
                   help="the sentences after the pool are split evenly among them")
    p.add_argument("--memmap-dir", help="where to write the response file (default: tmp)")
    p.add_argument("--memmap-check-neurons", type=int, default=4, help=argparse.SUPPRESS)
    p.add_argument("--memmap-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.memmap_neurons < 1 or args.memmap_pool < 1 or args.memmap_concepts < 1 or args.memmap_check_neurons < 1:
        p.error("--memmap-neurons, --memmap-pool, --memmap-concepts and --memmap-check-neurons must be at least 1")
    if args.memmap_sentences - args.memmap_pool < args.memmap_concepts:
        p.error("--memmap-sentences must leave at least one positive per concept after --memmap-pool: "
                f"{args.memmap_sentences} - {args.memmap_pool} < {args.memmap_concepts} concepts")
    if args.memmap_child:
        memmap_child(args.memmap_child, args.memmap_pool, args.memmap_concepts,
                     args.memmap_check_neurons, args.seed)
        return

    parts = args.only or ["vs-sklearn", "scale", "memmap"]
    rng = np.random.default_rng(args.seed)
    report = {"command": " ".join([Path(sys.executable).name] + sys.argv),
              "date": time.strftime("%Y-%m-%d"), "machine": machine()}
    for part, key, bench in [("vs-sklearn", "vs_sklearn", bench_vs_sklearn),
                             ("scale", "scale", bench_scale), ("memmap", "memmap", bench_memmap)]:
        if part in parts:
            load_before = os.getloadavg()[0]
            report[key] = bench(args, rng)
            report[key]["loadavg_1min"] = [load_before, os.getloadavg()[0]]
    report["machine"]["loadavg_end"] = os.getloadavg()
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
