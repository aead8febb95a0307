"""``elens-lite run``: the whole pipeline, then a short alignment table."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import click

from ..batching import PoolingOptions
from ..config import BOOTSTRAP_UNITS, DEFAULT_MODEL, QUANTIZATIONS, RunConfig
from ..devices import DEVICES
from ..models.sources import BUNDLED_MODELS
from ..paths import RESULT_FILES, shown
from .main import command_help, main, verbose_option

_DEFAULTS = RunConfig()
_FILE = click.Path(dir_okay=False)  # a str: RunConfig refuses "" (Path("") is ".", "a folder")


@main.command("run", help=command_help("run"), loads=("expertlens_lite.pipeline",))
@verbose_option
@click.option("--model", default=DEFAULT_MODEL, help=f"Bundled name ({', '.join(BUNDLED_MODELS)}), Hugging Face id, local folder or .gguf file.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit), e.g. step1000 for Pythia.")
@click.option("--corpus", type=_FILE, default=None, help="Text file, one sentence per line, or .jsonl with a 'text' field. [default: bundled corpus]")
@click.option("--concepts", type=_FILE, default=None, help="Concept words, one per line. [default: words of the human set found in the corpus]")
@click.option("--human", type=_FILE, default=None, help="Human ratings, 'word1 word2 score' per line. [default: MEN]")
@click.option("--tau", "taus", type=float, multiple=True, default=_DEFAULTS.taus, help="AP threshold of the paper's rule (repeatable).")
@click.option("--lift", "lifts", type=float, multiple=True, default=_DEFAULTS.lifts, help="Threshold on AP / base rate (repeatable).")
@click.option("--topk", "topks", type=int, multiple=True, default=_DEFAULTS.topks, help="Top-k neurons per concept (repeatable).")
@click.option("--top-frac", "top_fracs", type=float, multiple=True, default=_DEFAULTS.top_fracs, help="Top fraction of all neurons per concept (repeatable).")
@click.option("--n-pos", type=int, default=_DEFAULTS.n_pos, help="Positive sentences per concept (at most).")
@click.option("--n-neg", type=int, default=_DEFAULTS.n_neg, help="Size of the shared negative pool.")
@click.option("--min-pos", type=int, default=_DEFAULTS.min_pos, help="Skip concepts with fewer positives than this.")
@click.option("--seed", type=int, default=_DEFAULTS.seed, help="Seed of sampling and bootstrap.")
@click.option("--quantize", type=click.Choice(QUANTIZATIONS), default=_DEFAULTS.quantize, help="Run the int8 (CPU) or fp16 (CUDA; slower on the CPU) variant.")
@click.option("--device", type=click.Choice(DEVICES), default=_DEFAULTS.device, help="ONNX Runtime device; auto picks CUDA when available.")
@click.option("--batch-size", type=int, default=_DEFAULTS.batch_size, help="Sentences per inference batch.")
@click.option("--pooling", type=click.Choice(["max", "mean"]), default="max", help="Pool a neuron over tokens by max or mean.")
@click.option("--keep-special-tokens", is_flag=True, help="Let special tokens (BOS, CLS, SEP) take part in pooling.")
@click.option("--skip-first-token", is_flag=True, help="Also leave the first real token out of pooling.")
@click.option("--n-bootstrap", type=int, default=_DEFAULTS.n_bootstrap, help="Bootstrap resamples for CIs and paired tests.")
@click.option(
    "--bootstrap-unit", type=click.Choice(BOOTSTRAP_UNITS), default=_DEFAULTS.bootstrap_unit,
    help="Resample the rated pairs (the paper's) or the concepts, which keeps the dependence of pairs that share one (wider CIs).",
)
@click.option("--out", type=click.Path(file_okay=False), default=str(_DEFAULTS.out), help="Results folder.")
@click.option("--overwrite", is_flag=True, help="Replace the results of an earlier run in --out.")
def run_command(pooling: str, keep_special_tokens: bool, skip_first_token: bool, **options) -> None:
    # ONNX, SciPy and Numba (2 s), loaded as the command starts (loads=): not for --help
    # or an option error.
    from ..pipeline import run
    from .progress import stage_progress
    from .table import print_alignment_table

    config = RunConfig(pooling=PoolingOptions(pooling, keep_special_tokens, skip_first_token), **options)
    with stage_progress() as progress:
        result = run(config, progress=progress)
    # The results are whole now: a Ctrl-C while the table prints made a finished run exit
    # 130, as if interrupted (and the console script ignores one during its shutdown).
    with _no_interrupt():
        print_alignment_table(result.summary)
        click.echo(f"results: {shown(result.out)}/ ({', '.join(RESULT_FILES)})")


@contextmanager
def _no_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM ignored in the block, where Python lets a handler be set: in
    the main thread (the command may run in another, embedded or under a test runner)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
