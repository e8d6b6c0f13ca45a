import pytest

from cbam.report import format_markdown_table


def test_markdown_table_aligns_columns_and_escapes_pipes():
    text = format_markdown_table(["a", "bb"], [["x|y", 1], ["z", 22.5]])
    assert text.splitlines() == [
        "| a    | bb   |",
        "| ---- | ---- |",
        "| x\\|y | 1    |",
        "| z    | 22.5 |",
    ]


def test_markdown_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="one cell per header"):
        format_markdown_table(["a", "b"], [["only one"]])
