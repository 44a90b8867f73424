"""The documentation travels with the code: its examples run, its command reference is complete.

Every ```python block of ``docs/*.md`` and ``README.md`` is executed, each in a fresh namespace
(an async example calls ``asyncio.run`` itself), and must finish quickly. ``docs/commands.md`` is
generated from the real ``--help`` outputs; regenerate it with::

    .venv/bin/python tests/test_docs.py --write-commands
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer

from strategylab.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
COMMANDS_MD = DOCS / "commands.md"
# The installed entry point, so that the help shows the command as a user types it.
STRATEGYLAB = str(Path(sys.executable).with_name("strategylab"))
DOCUMENTS = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
# An example that needs more than this is not "fast"; the slowest one measured about 0.1 s.
EXAMPLE_BUDGET_S = 5.0

_FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
# A command row of click's or rich's help: "  name   Summary", optionally inside a "│" box.
_COMMAND_ROW = re.compile(r"^[│|]?\s+([a-z][a-z0-9-]*)\s{2,}\S")


def _examples() -> list[tuple[str, str]]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 2
            found.append((f"{document.relative_to(ROOT)}:{line}", match.group(1)))
    return found


EXAMPLES = _examples()


def test_the_docs_have_python_examples() -> None:
    """Every page of the library docs and the README carry examples this module runs."""
    per_file = {where.split(":")[0] for where, _ in EXAMPLES}
    assert {"docs/library.md", "README.md"} <= per_file
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize(("where", "source"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_python_example_runs(where: str, source: str) -> None:
    """A ```python block runs as written, in a fresh namespace, within the time budget."""
    code = compile(source, where, "exec", dont_inherit=True)
    namespace: dict[str, object] = {"__name__": "__docs_example__"}
    started = time.perf_counter()
    exec(code, namespace)  # noqa: S102 - running the documentation is the point
    assert time.perf_counter() - started < EXAMPLE_BUDGET_S


def _listed_commands(help_text: str) -> list[str]:
    """The command names a ``--help`` output lists under its Commands heading."""
    names: list[str] = []
    in_commands = False
    for line in help_text.splitlines():
        if re.search(r"\bCommands\b", line):
            in_commands = True
            continue
        if in_commands:
            if line.startswith(("╰", "╭")) or not line.strip():
                break
            match = _COMMAND_ROW.match(line)
            if match:
                names.append(match.group(1))
    return names


def _help(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}
    result = subprocess.run(  # noqa: S603 - our own entry point and arguments
        [STRATEGYLAB, *args, "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    return "\n".join(line.rstrip() for line in result.stdout.splitlines()).strip("\n")


def _all_commands() -> list[tuple[str, ...]]:
    """Every command path of the typer app, groups and their subcommands included."""
    paths: list[tuple[str, ...]] = []

    # Typer carries its own click: its groups are known by what they do, not by class.
    def walk(command: Any, prefix: tuple[str, ...]) -> None:
        if hasattr(command, "list_commands"):
            context = typer.Context(command)
            for name in command.list_commands(context):
                sub = command.get_command(context, name)
                assert sub is not None
                paths.append((*prefix, name))
                walk(sub, (*prefix, name))

    walk(typer.main.get_command(app), ())
    return paths


def _documented_commands() -> set[str]:
    text = COMMANDS_MD.read_text(encoding="utf-8")
    return set(re.findall(r"^## `strategylab ([a-z0-9 -]+)`$", text, re.MULTILINE))


def test_parser_reads_a_commands_panel() -> None:
    """The help parser finds the rows of a rich panel and of plain click output alike."""
    rich = "╭─ Commands ─╮\n│ demo       Run it. │\n│ demo-core  Run │\n╰────╯\n"
    plain = "Commands:\n  audit  Check the log.\n  check  Check.\n"
    assert _listed_commands(rich) == ["demo", "demo-core"]
    assert _listed_commands(plain) == ["audit", "check"]


def test_every_command_in_help_is_documented() -> None:
    """Each command that ``strategylab --help`` lists has its section in docs/commands.md."""
    listed = _listed_commands(_help())
    assert len(listed) >= 10, listed
    missing = set(listed) - _documented_commands()
    assert not missing, f"add to docs/commands.md (see this module's docstring): {sorted(missing)}"


def test_every_subcommand_is_documented() -> None:
    """Each command of the app, subcommands of groups included, has its section too."""
    paths = {" ".join(path) for path in _all_commands()}
    assert "audit verify" in paths
    missing = paths - _documented_commands()
    assert not missing, f"add to docs/commands.md (see this module's docstring): {sorted(missing)}"


def _render_commands() -> str:
    parts = [
        "# Command reference\n",
        "Generated from the real `--help` output of each command (at 100 columns) by",
        "`.venv/bin/python tests/test_docs.py --write-commands`; `tests/test_docs.py` fails when",
        "a command is missing here. Every command also answers `--help` itself.\n",
        "## `strategylab`\n",
        "```text",
        _help(),
        "```\n",
    ]
    for path in _all_commands():
        parts += [f"## `strategylab {' '.join(path)}`\n", "```text", _help(*path), "```\n"]
    return "\n".join(parts)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-commands"]:
        sys.exit("usage: test_docs.py --write-commands")
    COMMANDS_MD.write_text(_render_commands(), encoding="utf-8")
