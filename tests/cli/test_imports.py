"""Nothing the library needs lives in the command line: only `cbam.cli` imports `cbam.cli`."""

import ast
from pathlib import Path

import cbam

PACKAGE = Path(cbam.__file__).resolve().parent
ENTRY_POINTS = {PACKAGE / "__main__.py"}  # `python -m cbam` runs the command line


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("cbam", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module `source` (the text of `module`) imports, at the top or inside a function, relative imports
    made absolute; `from a import b` counts as `a` and `a.b` (b may be a module)."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def is_cli(name: str) -> bool:
    return name == "cbam.cli" or name.startswith("cbam.cli.")


def test_no_module_outside_the_command_line_imports_it():
    outside = [p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).parts[0] != "cli"]
    assert len(outside) > 50  # the whole library, not an empty glob
    offenders = {}
    for path in outside:
        names = imported_modules(path.read_text(encoding="utf-8"), module_name(path),
                                 is_package=path.name == "__init__.py")  # fmt: skip
        found = sorted(n for n in names if is_cli(n))
        if found and path not in ENTRY_POINTS:
            offenders[str(path.relative_to(PACKAGE))] = found
    assert offenders == {}


def test_the_check_sees_imports_inside_functions_and_relative_ones():
    source = "import os\n\ndef f():\n    from cbam.cli.options import config_from_flags\n    from .. import cli\n"
    names = imported_modules(source, "cbam.engine.config")
    assert {n for n in names if is_cli(n)} == {"cbam.cli.options", "cbam.cli.options.config_from_flags", "cbam.cli"}
    assert imported_modules("from . import cli\n", "cbam", is_package=True) >= {"cbam.cli"}
    assert not is_cli("cbam.client") and is_cli("cbam.cli") and is_cli("cbam.cli.detection")


def test_the_command_line_is_a_package_and_its_old_modules_are_gone():
    assert (PACKAGE / "cli" / "__init__.py").is_file()
    for old in ("cli.py", "_cli_args.py", "detection/commands.py", "survey/commands.py"):
        assert not (PACKAGE / old).exists(), old
