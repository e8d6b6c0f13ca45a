"""Train networks under one recipe over several seeds (a paper table's rows, or one network with several
attentions), and say with honest intervals whether each differs from its baseline: tables, verdicts and plots.

One module per job, each importing the ones before it: `rows` (what is compared), `training` (the runs, as
jobs), `statistics` (intervals, the table's cells, the pointing game), `report` (files and plots), and
`comparison` (`run_compare`, the whole of it).
"""

from cbam.classification.compare.comparison import run_compare
from cbam.classification.compare.rows import COMPARE_TABLES, CompareRow, attention_rows, baselines, table_rows
from cbam.classification.compare.statistics import Comparison
from cbam.classification.compare.training import SEED_FOLDER, RowRuns, check_networks, row_configs

__all__ = [
    "COMPARE_TABLES",
    "SEED_FOLDER",
    "CompareRow",
    "Comparison",
    "RowRuns",
    "attention_rows",
    "baselines",
    "check_networks",
    "row_configs",
    "run_compare",
    "table_rows",
]
