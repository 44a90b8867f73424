"""The public contract of DESIGN §3: names exist, `__all__` is sorted and complete."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import strategylab

PACKAGES = [
    "strategylab",
    "strategylab.chaos",
    "strategylab.market",
    "strategylab.exchange",
    "strategylab.strategy",
    "strategylab.trading",
    "strategylab.research",
    "strategylab.node",
    "strategylab.clock",
    "strategylab.errors",
    "strategylab.fault_tolerance",
    "strategylab.testing",
]

DESIGN_NAMES = {
    "strategylab.fault_tolerance": [
        "ErrorType", "ErrorSeverity", "UserImpact", "SystemState", "ErrorContext", "classify",
        "RetryPolicy", "CircuitBreaker", "BreakerState", "CircuitOpenError", "Bulkhead",
        "BulkheadFullError", "RecoveryStrategyKind", "RecoveryOutcome", "RecoveryStatistics",
        "ErrorRecoveryManager",
    ],
    "strategylab.testing": ["FakeClock"],
}  # fmt: skip


def _isort_key(name: str) -> tuple[int, str]:
    # ruff's RUF022 order: SCREAMING_CASE, then CamelCase, then the rest, each alphabetical.
    if name.isupper():
        return (0, name)
    return (1, name) if name[0].isupper() else (2, name)


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted(name: str) -> None:
    """Each public module lists its names in sorted order (constants, classes, functions)."""
    module = importlib.import_module(name)
    assert list(module.__all__) == sorted(module.__all__, key=_isort_key)


@pytest.mark.parametrize("name", PACKAGES)
def test_all_resolves(name: str) -> None:
    """Every name in `__all__` exists on the module."""
    module = importlib.import_module(name)
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == []


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_complete(name: str) -> None:
    """Every public class or function a module defines itself is listed in `__all__`."""
    module = importlib.import_module(name)
    defined = {
        n
        for n, obj in vars(module).items()
        if not n.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and getattr(obj, "__module__", "") == name
    }
    assert defined - set(module.__all__) == set()


@pytest.mark.parametrize(("module", "name"), [(m, n) for m, ns in DESIGN_NAMES.items() for n in ns])
def test_design_names_exist(module: str, name: str) -> None:
    """Each name of DESIGN §3 imports from where the design says."""
    assert name in importlib.import_module(module).__all__


def test_no_stub_left() -> None:
    """No public class of the fault-tolerance package is an empty placeholder."""
    ft = importlib.import_module("strategylab.fault_tolerance")
    stubs = [
        n
        for n in ft.__all__
        if inspect.isclass(getattr(ft, n)) and "stub" in (getattr(ft, n).__doc__ or "").lower()
    ]
    assert stubs == []


def test_cli_version() -> None:
    """`strategylab --version` prints the package version."""
    out = subprocess.run(
        [sys.executable, "-m", "strategylab", "--version"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == f"strategylab {strategylab.__version__}"


def test_cli_usage_error_exits_2() -> None:
    """A CLI mistake prints usage, no traceback, and exits 2."""
    out = subprocess.run(
        [sys.executable, "-m", "strategylab", "no-such-command"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "Usage" in out.stderr
