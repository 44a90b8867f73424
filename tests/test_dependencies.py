"""Every third-party module the package imports is a declared runtime dependency.

A module that is installed in the test environment only through a test or bench extra (or as a
dependency of a tool, as click is of import-linter) would pass every test and still break a user's
plain ``pip install strategylab``: this test reads the imports of every source file and checks each
against ``[project] dependencies`` in pyproject.toml.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "strategylab"


def _imported_top_levels() -> dict[str, list[str]]:
    """Top-level module name -> the source files importing it (absolute imports only)."""
    found: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], []).append(str(path.relative_to(ROOT)))
    return found


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {
        re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        for requirement in project["dependencies"]
    }


HOSTED: dict[str, set[str]] = {
    # Loaded only by pytest itself (a pytest11 entry point), so pytest is there; pytest-asyncio
    # is optional (imported in a try: without it the async fixtures are plain ones).
    "src/strategylab/chaos/pytest_plugin.py": {"pytest", "pytest_asyncio"},
}


def test_every_third_party_import_is_a_declared_dependency() -> None:
    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    undeclared = {}
    for module, all_files in _imported_top_levels().items():
        files = [f for f in all_files if module not in HOSTED.get(f, set())]
        if not files:
            continue
        # _typeshed exists only for type checkers (imported under TYPE_CHECKING).
        if module in sys.stdlib_module_names or module in {
            "strategylab",
            "__future__",
            "_typeshed",
        }:
            continue
        owners = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not owners & declared:
            undeclared[module] = (sorted(owners), files[:3])
    assert not undeclared, f"imported but not in [project] dependencies: {undeclared}"


def test_the_check_sees_imports() -> None:
    """The scan is not vacuous: it finds the dependencies the package is known to import."""
    imported = _imported_top_levels()
    assert {"typer", "aiohttp", "numpy", "structlog"} <= imported.keys()
