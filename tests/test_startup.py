"""Start-up stays light: the fast paths import no heavy dependency (structural, not timed).

bench/startup.py measures the times; these tests pin down the cause, so a stray top-level import
fails here rather than as a slower benchmark nobody reads.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("numpy", "aiohttp", "psycopg", "websockets", "msgspec")

_PROBE = """
import json, sys
{code}
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _heavy_after(code: str) -> list[str]:
    out = subprocess.run(  # noqa: S603 - our own interpreter, our own code
        [sys.executable, "-c", _PROBE.format(code=code, heavy=HEAVY)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.timeout(90)
def test_importing_fault_tolerance_loads_no_heavy_module() -> None:
    """`import strategylab.fault_tolerance` imports none of numpy, aiohttp, psycopg, ... ."""
    assert _heavy_after("import strategylab.fault_tolerance") == []


@pytest.mark.timeout(90)
def test_importing_fault_tolerance_defers_its_modules() -> None:
    """The package's names are imported on first use (PEP 562), not by the package import."""
    code = (
        "import strategylab.fault_tolerance as ft\n"
        "assert 'strategylab.fault_tolerance._manager' not in sys.modules\n"
        "assert 'asyncio' not in sys.modules\n"
        "assert ft.RetryPolicy.__module__ == 'strategylab.fault_tolerance._retry'\n"
        "assert 'strategylab.fault_tolerance._retry' in sys.modules\n"
    )
    assert _heavy_after(code) == []


@pytest.mark.timeout(90)
def test_cli_help_loads_no_heavy_module() -> None:
    """`strategylab --help` renders without importing research, numpy or the network stacks."""
    code = (
        "sys.argv = ['strategylab', '--help']\n"
        "from strategylab.cli import app\n"
        "try:\n"
        "    app()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "assert 'strategylab.research' not in sys.modules\n"
        "assert 'strategylab.fault_tolerance' not in sys.modules\n"
    )
    assert _heavy_after(code) == []


def test_unknown_name_is_an_attribute_error() -> None:
    """A name the package does not have raises AttributeError, as without the lazy loader."""
    import strategylab.fault_tolerance as ft  # noqa: PLC0415

    with pytest.raises(AttributeError, match="no_such_name"):
        _ = ft.no_such_name


def test_dir_lists_every_public_name() -> None:
    """`dir()` shows the lazy names before they are loaded (for completion and introspection)."""
    import strategylab.fault_tolerance as ft  # noqa: PLC0415

    assert set(ft.__all__) <= set(dir(ft))
