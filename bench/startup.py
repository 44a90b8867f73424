"""Start-up time: ``strategylab --help`` and ``import strategylab.fault_tolerance``.

Run (after ``pip install -e '.[bench]'``)::

    python bench/startup.py               # 21 runs per case
    python bench/startup.py --quick       # 5 runs per case
    python bench/startup.py --importtime  # and the slowest imports of each case (-X importtime)

Every run is a fresh interpreter (``subprocess``), timed from spawn to exit, so each figure includes
the interpreter's own start-up; ``python -c pass`` is shown as that floor. The cases run
round-robin (one of each, then again), so a machine that slows down mid-run slows all of them
alike. The goals compare each side with its baseline measured in the same run:

* ``strategylab --help`` within 2x of ``python -c "import typer"``;
* ``import strategylab.fault_tolerance`` within 2x of ``import tenacity``.

``strategylab --help`` with ``TYPER_USE_RICH=0`` is shown for comparison, not judged: most of the
help's cost beyond ``import typer`` is typer's rich renderer (``typer.rich_utils`` imports
rich.markdown, markdown_it and rich.traceback), which no import of ours can avoid.

The ratio is of medians (the best run is shown too). The exit status is 0 whatever the figures,
unless ``--check`` is given: then 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PY = sys.executable


@dataclass(frozen=True, slots=True)
class Case:
    """One command line to time, in a fresh process each run."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def _cli_argv() -> tuple[str, ...]:
    # The console script as a user runs it; `python -m strategylab` if it is not installed here.
    script = Path(PY).with_name("strategylab")
    if script.is_file():
        return (str(script), "--help")
    found = shutil.which("strategylab")
    if found:
        return (found, "--help")
    return (PY, "-m", "strategylab", "--help")


def _has(module: str) -> bool:
    probe = [PY, "-c", f"import {module}"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0  # noqa: S603


FLOOR = Case("python -c pass", (PY, "-c", "pass"))
TYPER = Case('python -c "import typer"', (PY, "-c", "import typer"))
CLI = Case("strategylab --help", _cli_argv())
CLI_PLAIN = Case("strategylab --help (TYPER_USE_RICH=0)", _cli_argv(), (("TYPER_USE_RICH", "0"),))
"""For comparison: typer's plain help, without rich's renderer (typer.rich_utils, ~80 ms)."""
TENACITY = Case('python -c "import tenacity"', (PY, "-c", "import tenacity"))
FT = Case(
    'python -c "import strategylab.fault_tolerance"',
    (PY, "-c", "import strategylab.fault_tolerance"),
)
GOALS = ((CLI, TYPER, 2.0), (FT, TENACITY, 2.0))
"""(measured, baseline, the largest ratio allowed)."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    env["COLUMNS"] = "80"  # help is laid out for a fixed width, not the caller's terminal
    return env


def _run_once(case: Case, env: dict[str, str]) -> float:
    env = env | dict(case.env)
    start = time.perf_counter()
    proc = subprocess.run(  # noqa: S603 - our own interpreter and script
        case.argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{case.name}: exit {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return elapsed


def measure(cases: list[Case], runs: int) -> dict[str, list[float]]:
    """Seconds per run of each case, round-robin; one untimed warm-up each (bytecode caches)."""
    env = _env()
    for case in cases:
        _run_once(case, env)
    times: dict[str, list[float]] = {case.name: [] for case in cases}
    for _ in range(runs):
        for case in cases:
            times[case.name].append(_run_once(case, env))
    return times


def importtime(case: Case, top: int) -> list[tuple[int, str]]:
    """The ``top`` largest cumulative import times (µs, module) of one run of ``case``."""
    env = _env() | dict(case.env) | {"PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run(case.argv, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    rows: list[tuple[int, str]] = []
    for line in proc.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].strip()))
    rows.sort(reverse=True)
    return rows[:top]


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table and the goals; 1 with ``--check`` when a goal is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 runs per case instead of 21.")
    parser.add_argument("--runs", type=int, default=None, help="Runs per case (overrides).")
    parser.add_argument(
        "--importtime", action="store_true", help="Show each case's slowest imports."
    )
    parser.add_argument("--check", action="store_true", help="Exit 1 when a goal is missed.")
    args = parser.parse_args(argv)
    runs = args.runs or (5 if args.quick else 21)
    if runs < 1:
        parser.error("--runs must be at least 1")

    cases = [FLOOR, TYPER, CLI, CLI_PLAIN]
    goals = [GOALS[0]]
    if _has("tenacity"):
        cases += [TENACITY, FT]
        goals.append(GOALS[1])
    else:
        print("tenacity is not installed (pip install -e '.[bench]'): its goal is skipped")
        cases.append(FT)
    times = measure(cases, runs)

    print(f"{runs} runs per case, fresh interpreter each, {sys.version.split()[0]}")
    print()
    print(f"| {'case':<48} | {'best ms':>8} | {'median ms':>9} |")
    print(f"|{'-' * 50}|{'-' * 9}:|{'-' * 10}:|")
    for case in cases:
        best, median = min(times[case.name]), statistics.median(times[case.name])
        print(f"| {case.name:<48} | {best * 1e3:8.1f} | {median * 1e3:9.1f} |")
    print()
    missed = 0
    for measured, baseline, limit in goals:
        ratio = statistics.median(times[measured.name]) / statistics.median(times[baseline.name])
        best = min(times[measured.name]) / min(times[baseline.name])
        verdict = "met" if ratio <= limit else "MISSED"
        missed += verdict == "MISSED"
        print(
            f"{measured.name} / {baseline.name}: {ratio:.2f}x median, {best:.2f}x best "
            f"(goal <= {limit:g}x): {verdict}"
        )
    if args.importtime:
        for case in cases[1:]:
            print(f"\nslowest imports (cumulative µs) of {case.name}:")
            for micros, module in importtime(case, 12):
                print(f"  {micros:>9,}  {module}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
