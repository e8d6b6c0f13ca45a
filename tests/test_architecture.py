"""The package's layers as `docs/architecture.md` tables them: computed from every import in `src/cbam` (imports
inside functions included), there is no cycle, every module has a row, every import points to its own row or a
lower one, and no module imports another package's private name."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def module_files(source: Path = SOURCE) -> dict[str, Path]:
    """Every module of the package under `source` by dotted name (a package by its own name)."""
    files = {}
    for path in sorted((source / "cbam").rglob("*.py")):
        parts = list(path.relative_to(source).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def imported_names(module: str, path: Path) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every import statement anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found += [(base, alias.name) for alias in node.names]
    return found


def import_graph(source: Path = SOURCE) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the package's modules it imports, and every import of another package's private name."""
    files = module_files(source)
    edges: dict[str, set[str]] = defaultdict(set)
    private: list[str] = []
    for module, path in files.items():
        for target, name in imported_names(module, path):
            if not target.startswith("cbam"):
                continue
            full = f"{target}.{name}" if name and f"{target}.{name}" in files else target
            while full not in files and "." in full:
                full = full.rpartition(".")[0]
            if full != module:
                edges[module].add(full)
            hidden = [part for part in [*full.split("."), name or ""] if part.startswith("_") and part != "__version__"]
            own_package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            if hidden and not full.startswith(f"{own_package}.") and full != own_package:
                private.append(f"{module} imports {name or full} from {full}")
    return edges, private


def layer_rows() -> list[tuple[str, list[str]]]:
    """The layer table of docs/architecture.md: (row name, module patterns), top row first."""
    text = ARCHITECTURE.read_text()
    table = text[text.index("| layer | modules |") :].split("\n\n")[0]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows.append((cells[0], re.findall(r"`([\w.*]+)`", cells[1])))
    return rows


def row_of(module: str, rows: list[tuple[str, list[str]]]) -> int | None:
    """The row whose most specific pattern matches `module` (`cbam.engine.*` matches `cbam.engine` and below)."""
    best: tuple[int, int] | None = None
    for index, (_, patterns) in enumerate(rows):
        for pattern in patterns:
            stem = pattern.removesuffix(".*")
            matches = module == pattern or (
                pattern.endswith(".*") and (module == stem or module.startswith(f"{stem}."))
            )
            if matches and (best is None or len(pattern) > best[1]):
                best = (index, len(pattern))
    return None if best is None else best[0]


def test_there_is_no_import_cycle():
    edges, _ = import_graph()
    graph = nx.DiGraph([(a, b) for a, targets in edges.items() for b in targets])
    cycles = [sorted(component) for component in nx.strongly_connected_components(graph) if len(component) > 1]
    assert not cycles, "import cycles: " + "; ".join(
        " -> ".join(cycle) for component in cycles for cycle in [next(nx.simple_cycles(graph.subgraph(component)))]
    )


def test_every_module_sits_in_one_row_and_imports_only_its_row_or_below():
    rows = layer_rows()
    assert [name for name, _ in rows][:2] == ["package", "commands"], "the table starts at the top"
    edges, _ = import_graph()
    unplaced = [module for module in module_files() if row_of(module, rows) is None]
    assert not unplaced, f"modules with no row in docs/architecture.md: {unplaced}"
    upward = [
        f"{a} ({rows[row_of(a, rows)][0]}) -> {b} ({rows[row_of(b, rows)][0]})"
        for a, targets in sorted(edges.items())
        for b in sorted(targets)
        if row_of(b, rows) < row_of(a, rows)
    ]
    assert not upward, "imports pointing up the table: " + "; ".join(upward)


def test_no_module_imports_a_private_name_of_another_package():
    _, private = import_graph()
    assert not private, "; ".join(private)


@pytest.mark.parametrize(
    ("source", "cycle"),
    [
        ("import cbam.b\n", True),
        ("def later():\n    from cbam import b\n", True),
        ("x = 1\n", False),
    ],
)
def test_the_cycle_check_sees_imports_inside_functions(tmp_path, source, cycle):
    package = tmp_path / "cbam"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(source)
    (package / "b.py").write_text("from cbam.a import x\n")
    edges, _ = import_graph(tmp_path)
    graph = nx.DiGraph([(a, b) for a, targets in edges.items() for b in targets])
    assert (not nx.is_directed_acyclic_graph(graph)) is cycle
