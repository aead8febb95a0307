"""The closing alignment table of ``elens-lite run``."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..measures import constant_paper_note, median_text


def _num(value, fmt: str = ".3f") -> str:
    return "–" if value is None else format(value, fmt)


def print_alignment_table(summary: dict) -> None:
    """ρ with the human set per measure (τ rules, other rules, baselines), with CIs; the
    default measure in bold, the paper's τ-Jaccard first."""
    paper = summary["comparison"][0]  # the paper's τ-Jaccard comes first (RunConfig.selections)
    table = Table(
        title=f"Alignment with {summary['n_pairs']} human-rated pairs ({summary['model']}, {summary['n_concepts']} concepts)",
        caption=None if paper["spearman"] is not None else constant_paper_note(paper["measure"]),
    )
    for column in ("measure", "ρ", "95% CI", "p vs paper", "median experts", "zero overlap"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for row in summary["comparison"]:
        default = row["measure"] == summary["default_measure"]
        table.add_row(
            row["measure"] + (" (default)" if default else ""),
            _num(row["spearman"]),
            f"[{_num(row['ci_low'])}, {_num(row['ci_high'])}]",
            _num(row["paired_p_vs_paper"]),
            median_text(row["median_experts"]),
            _num(row["zero_overlap_fraction"], ".3f"),  # two decimals showed 0.997 as 1.00
            style="bold" if default else "italic" if row["kind"] == "baseline" else None,
        )
    console = Console()
    # 120 columns where there is room; a terminal's own width where it is narrower, which a
    # fixed 120 wrapped into a broken box. Not a terminal (a pipe, a file): 120.
    console.width = min(console.width, 120) if console.is_terminal else 120
    console.print(table)
