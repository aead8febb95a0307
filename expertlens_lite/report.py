"""``report.html``: the run's human-facing view, one self-contained offline file.

Plots are drawn with matplotlib and embedded as base64 PNG, so the report needs no
network and no companion files. They are ``matplotlib.figure.Figure`` objects, not
pyplot's: a run inside a notebook or a GUI program leaves its backend and its open
figures as they were (``matplotlib.use("Agg")`` switched every later plot of the
caller's to Agg).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable

import numpy as np

from .export import Manifest
from .human import HumanPairs
from .kernels import unpack_masks
from .measures import Measure, constant_paper_note, median_text
from .selection import Selection, select

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}tr.base td{color:#555;font-style:italic}
.fig{display:inline-block;margin:0.5em}code{background:#f3f3f3;padding:1px 4px}
"""


def _axes():
    """A figure of the report's size and its axes, outside pyplot (see the module docstring)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6, 3.6))
    return fig, fig.subplots()


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return f'<img class="fig" alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _some(items: Iterable[str], shown: int = 20) -> str:
    """The first ``shown`` items, then how many more (the default run skips hundreds of
    MEN words, which made one paragraph of the report)."""
    items = list(items)
    more = f" and {len(items) - shown} more (listed in summary.json)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more if items else "none"


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.1e}"
    return html.escape(str(value))


def _scatter(measure: Measure, rated: HumanPairs) -> str:
    fig, ax = _axes()
    ax.scatter(rated.scores, measure.pair_values, s=10, alpha=0.6)
    ax.set_xlabel("human score")
    ax.set_ylabel(measure.name)
    rho = measure.alignment.spearman if measure.alignment else float("nan")
    ax.set_title(f"{measure.name}: Spearman ρ " + ("undefined" if math.isnan(rho) else f"= {rho:.3f}"))
    return _png(fig)


def _layer_histogram(ap: np.ndarray, manifest: Manifest, selection: Selection) -> str:
    """Experts per layer, summed over concepts (``lift`` needs base rates, so it is not drawn)."""
    experts = unpack_masks(select(ap, selection, base_rate=None), ap.shape[1])
    layers = np.repeat(np.arange(manifest.n_layers), manifest.units_per_layer)
    counts = np.bincount(layers[np.nonzero(experts)[1]], minlength=manifest.n_layers)
    fig, ax = _axes()
    ax.bar(np.arange(manifest.n_layers), counts)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"experts ({selection.label}), all concepts")
    ax.set_title("Where the experts sit")
    return _png(fig)


def _settings(summary: dict) -> str:
    """Every setting that changes the results, as summary.json records them."""
    settings = summary["settings"] | {
        "revision": summary["revision"], "commit": summary["commit"], "device_used": summary["device_used"], "onnx_file": summary["onnx_file"],
    }
    return "; ".join(f"<code>{html.escape(name)}</code> {html.escape(json.dumps(value, ensure_ascii=False))}" for name, value in settings.items())


def render_report(summary: dict, measures: list[Measure], rated: HumanPairs, paper: Measure, ap: np.ndarray, manifest: Manifest) -> str:
    """The report as an HTML string; ``paper`` is the paper's τ-Jaccard measure."""
    headline = next(m for m in measures if m.name == summary["default_measure"])
    shown = [headline] if headline is paper else [headline, paper]
    rows = []
    for m in measures:
        a = m.alignment
        rows.append(
            f'<tr class="{"base" if m.kind == "baseline" else ""}"><td>{"<b>" + html.escape(m.name) + " (default)</b>" if m is headline else html.escape(m.name)}</td>'
            f"<td>{_fmt(a.spearman)}</td><td>[{_fmt(a.ci_low)}, {_fmt(a.ci_high)}]</td><td>{_fmt(a.p_value)}</td>"
            f"<td>{_fmt(m.paired_p_value)}</td><td>{median_text(m.median_size)}</td><td>{_fmt(m.zero_overlap)}</td></tr>"
        )
    skipped = _some(f"{html.escape(w)} ({n})" for w, n in summary["skipped_concepts"].items())
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in summary["timings"].items())
    constant = "; " + html.escape(constant_paper_note(paper.name)) if math.isnan(paper.alignment.spearman) else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>expertlens-lite: {html.escape(summary['model'])}</title>
<style>{_STYLE}</style></head><body>
<h1>Expert neurons of <code>{html.escape(summary['model'])}</code></h1>
<p>{summary['n_concepts']} concepts, {summary['n_sentences']} sentences of <code>{html.escape(summary['corpus'])}</code>, {summary['n_neurons']:,} MLP neurons
({summary['n_layers']} layers, {html.escape(summary['architecture'])}); {summary['n_pairs']} rated pairs from
<code>{html.escape(str(summary['human']))}</code>. Skipped concepts (positives found): {skipped}.</p>
<h2>Alignment with human similarity</h2>
<p>Spearman ρ between each measure and the human scores over the rated pairs, 95% bootstrap CI over
{html.escape(summary['settings']['bootstrap_unit'])} (<code>--bootstrap-unit</code>),
and the paired bootstrap p-value of its difference from the paper's measure (<code>{html.escape(paper.name)}</code>{constant}).
"p" is Spearman's own p-value, which takes the pairs as independent.
The run leads with <code>{html.escape(headline.name)}</code>: the first <code>--top-frac</code> rule asked for, else the
paper's τ; the tool's default top fraction was chosen by measurement on two models and three corpora (RESULTS.md).
"Median experts" is the median expert-set size per concept; "zero overlap" the share of rated pairs whose expert sets
share no neuron — a rule whose sets rarely overlap cannot rank pairs.</p>
<table><tr><th>measure</th><th>ρ</th><th>95% CI</th><th>p</th><th>p vs paper</th><th>median experts</th><th>zero overlap</th></tr>
{''.join(rows)}</table>
<h2>Plots</h2>
{''.join(_scatter(m, rated) for m in shown)}{''.join(_layer_histogram(ap, manifest, m.selection) for m in shown if m.selection.rule != "lift")}
<h2>Settings</h2>
<p>{_settings(summary)}.</p>
<p>Timings (the stages before these files were written; summary.json adds the writing): {timings}.</p>
</body></html>
"""
