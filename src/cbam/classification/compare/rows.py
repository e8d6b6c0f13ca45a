"""A comparison's rows: the networks of a paper table, or one network with several attentions, each with its
baseline."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cbam.errors import ConfigError, unknown_name
from cbam.layers.create import ATTENTION_ABOUT, AttentionSpec
from cbam.paper import paper_rows

COMPARE_TABLES: tuple[str, ...] = ("table1", "table2", "table3", "table4", "table5")


@dataclass(frozen=True)
class CompareRow:
    """One network to train: a paper row, with the paper's ImageNet errors for reference."""

    name: str
    description: str
    arch: str
    attention: AttentionSpec
    model_kwargs: dict[str, Any]
    paper_top1_error: float | None
    paper_top5_error: float | None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def table_rows(table: str, archs: list[str] | None = None) -> list[CompareRow]:
    """The rows of a paper table (`table1`-`table5`), optionally only those of some architectures.

    Networks are built as trained (stride on the 3x3), not in the paper's FLOP-counting layout.
    """
    if table not in COMPARE_TABLES:
        raise unknown_name("table", table, COMPARE_TABLES)
    rows = paper_rows(int(table.removeprefix("table")))
    if archs:
        available = sorted({r.arch for r in rows})
        unknown = [a for a in archs if a not in available]
        if unknown:
            raise ConfigError(f"{table} has no rows for {unknown}; its architectures: {', '.join(available)}")
        rows = [r for r in rows if r.arch in archs]
    return [
        CompareRow(
            name=_slug(r.description),
            description=r.description,
            arch=r.arch,
            attention=r.attention,
            model_kwargs={k: v for k, v in r.model_kwargs.items() if k != "stride_in_1x1"},
            paper_top1_error=r.top1_err,
            paper_top5_error=r.top5_err,
        )
        for r in rows
    ]


def attention_rows(arch: str, attentions: list[str]) -> list[CompareRow]:
    """One row per attention on one network (`resnet18` with none, se, cbam), in the order given."""
    if not attentions:
        raise ConfigError("--attention names at least one attention (none,se,cbam)")
    if len(set(attentions)) != len(attentions):
        raise ConfigError(f"--attention names an attention twice: {','.join(attentions)}")
    rows = []
    for attention in attentions:
        about = ATTENTION_ABOUT.get(attention)
        described = arch if attention == "none" else f"{arch} + {about.label if about else attention}"
        rows.append(CompareRow(_slug(described), described, arch, attention, {}, None, None))
    return rows


def baselines(rows: list[CompareRow], baseline: str | None = None) -> list[int]:
    """For each row, the index of the row it is compared with: the row whose attention is `baseline` (default:
    each network's first row, a paper table's plain network)."""
    if baseline is not None:
        found = [i for i, row in enumerate(rows) if row.attention == baseline]
        if not found:
            raise ConfigError(
                f"the baseline {baseline!r} is not among the rows: {', '.join(str(r.attention) for r in rows)}"
            )
        return [found[0]] * len(rows)
    first: dict[str, int] = {}
    return [first.setdefault(row.arch, i) for i, row in enumerate(rows)]
