"""Plain-text reports: markdown tables for the terminal, READMEs and result files."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path


def _escape(cell: object) -> str:
    return str(cell).replace("|", "\\|").replace("\n", " ")


def format_markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-style markdown table with columns padded to line up in a terminal."""
    cells = [[_escape(c) for c in header], *[[_escape(c) for c in row] for row in rows]]
    if any(len(row) != len(header) for row in cells):
        raise ValueError("every row needs one cell per header column")
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """The same table as CSV, written atomically."""
    from cbam.outputs import atomic_write

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(Path(path), lambda tmp: tmp.write_text(buffer.getvalue()))


def comparison_lines(header: Sequence[str], rows: Sequence[Sequence[object]], verdicts: Sequence[str],
                     failures: Sequence[str], notes: Sequence[str]) -> list[str]:  # fmt: skip
    """A comparison as text: its table, then its verdicts, failed runs and notes, each block set apart."""
    lines = [format_markdown_table(header, rows), ""]
    lines += [f"- {v}" for v in verdicts] + [""] * bool(verdicts)
    lines += [f"- failed: {f}" for f in failures] + [""] * bool(failures)
    return [*lines, *notes]
