"""``strategylab lab``: the chaos lab's ten categories, with real faults, judged and reported.

``strategylab lab`` runs every category (DESIGN §6) at medium severity against a pipeline it
starts itself (the exchange simulator, a fault proxy, a node, a trader); ``strategylab lab run
FILE`` runs a TOML experiment instead. While it runs, a live view (:class:`strategylab.chaos.
LiveView`) shows the category, the fault in force, the probes and the ingest rate; at the end, one
table row per category, and the report directory (``report.json``, ``report.html``, the audit
log, the integrity reports; JUnit XML with ``--junit``).

Exit status: 0 every category met the seed's criterion; 1 one did not, or the lab could not run
(one line saying why); 2 a usage error (one line naming the flag and the value, or a report
directory it must not write into); 128 + N when signal N (SIGINT: 130) interrupted it: the faults
in force are healed, its processes stopped, and what it had finished is printed.

This module is imported by :mod:`strategylab.cli` on every start, so it imports only typer and
the option helpers; the lab (``strategylab.chaos``, rich, matplotlib) is imported when it runs.
"""

from __future__ import annotations

import datetime as dt
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final, TypeVar

import typer

from strategylab._cli_options import (
    LogLevel,
    LogLevelOption,
    check_postgres_url,
    is_postgres_url,
    nonempty_path,
    usage_error,
)
from strategylab._logging import configure_logging, escape
from strategylab.errors import ConfigurationError

if TYPE_CHECKING:
    from rich.console import Console

    from strategylab.chaos import (
        ExperimentEvent,
        ExperimentResult,
        LabReport,
        LiveView,
        ReportFiles,
    )

__all__ = [
    "CATEGORY_IDS",
    "CLUSTER_NODES",
    "lab_app",
    "parse_categories",
    "parse_cluster",
    "parse_seed",
]

_PROG: Final = "strategylab lab"
CATEGORY_IDS: Final = tuple(range(1, 11))
"""The categories' ids (DESIGN §6's table)."""
_ALL: Final = ",".join(str(i) for i in CATEGORY_IDS)
_SIGNAL_EXIT_BASE: Final = 128
_T = TypeVar("_T")


def parse_categories(text: str, *, flag: str = "--category") -> tuple[int, ...]:
    """``--category``'s value (``"3,4"``, blanks around commas ignored) as ids in the order
    given.

    Raises :class:`ConfigurationError` naming ``flag`` and the bad item: empty, not a whole
    number, outside 1..10, or given twice.
    """
    items = [part.strip() for part in text.split(",")]
    ids: list[int] = []
    for item in items:
        if not item:
            raise ConfigurationError(
                flag, text, "has an empty item (ids are 1..10, comma-separated)"
            )
        if not item.isdecimal() or not item.isascii():
            raise ConfigurationError(flag, item, "is not a category id (a whole number 1..10)")
        value = int(item)
        if value not in CATEGORY_IDS:
            raise ConfigurationError(flag, item, "is not a category id: ids are 1..10")
        if value in ids:
            raise ConfigurationError(flag, item, "is given twice")
        ids.append(value)
    return tuple(ids)


def _flag(param: typer.CallbackParam) -> str:
    return param.opts[0] if param.opts else str(param.name)


def _category_callback(ctx: typer.Context, param: typer.CallbackParam, value: object) -> object:
    if isinstance(value, str):
        try:
            parse_categories(value, flag=_flag(param))
        except ConfigurationError as exc:
            usage_error(ctx.command_path, exc)
    return value


def _severity_callback(ctx: typer.Context, param: typer.CallbackParam, value: object) -> object:
    if isinstance(value, str):
        choices = ("low", "medium", "high", "critical")
        if value.strip().lower() not in choices:
            usage_error(
                ctx.command_path,
                ConfigurationError(_flag(param), value, f"must be one of {', '.join(choices)}"),
            )
    return value


def parse_seed(text: str, *, flag: str = "--seed") -> int:
    """``--seed``'s value as an int: a whole number (an optional sign, ASCII digits, blanks
    around it ignored).

    Raises :class:`ConfigurationError` naming ``flag`` and the value when it is empty or not a
    whole number (``"1.5"``, ``"x"``).
    """
    item = text.strip()
    digits = item[1:] if item[:1] in {"+", "-"} else item
    if not item:
        raise ConfigurationError(flag, text, "must not be empty (a whole number)")
    if not digits.isdecimal() or not digits.isascii():
        raise ConfigurationError(flag, text, "is not a whole number")
    return int(item)


def _seed_callback(ctx: typer.Context, param: typer.CallbackParam, value: object) -> object:
    if isinstance(value, str):
        try:
            parse_seed(value, flag=_flag(param))
        except ConfigurationError as exc:
            usage_error(ctx.command_path, exc)
    return value


def _postgres_callback(ctx: typer.Context, param: typer.CallbackParam, value: object) -> object:
    if isinstance(value, str):
        try:
            if not is_postgres_url(value):
                raise ConfigurationError(  # noqa: TRY301 - one refusal path for both
                    _flag(param), value, "must be a postgresql:// URL"
                )
            check_postgres_url(_flag(param), value)
        except ConfigurationError as exc:
            usage_error(ctx.command_path, exc)
    return value


# --- the cluster run (issue 14): --cluster N [--redis URL] ----------------------------------------

CLUSTER_NODES: Final = (2, 5)
"""The smallest and largest ``--cluster N``."""


def parse_cluster(text: str, *, flag: str = "--cluster") -> int:
    """``--cluster``'s value: a whole number of nodes, 2..5 (blanks around it ignored).

    Raises :class:`ConfigurationError` naming ``flag`` and the value otherwise.
    """
    item = text.strip()
    low, high = CLUSTER_NODES
    if not item.isdecimal() or not item.isascii() or not low <= int(item) <= high:
        raise ConfigurationError(flag, text, f"must be a number of nodes, {low}..{high}")
    return int(item)


def _cluster_callback(ctx: typer.Context, param: typer.CallbackParam, value: object) -> object:
    if isinstance(value, str):
        try:
            parse_cluster(value, flag=_flag(param))
        except ConfigurationError as exc:
            usage_error(ctx.command_path, exc)
    return value


def _redis_callback(ctx: typer.Context, param: typer.CallbackParam, value: object) -> object:
    if isinstance(value, str):
        from strategylab.distributed import check_redis_url  # noqa: PLC0415 - --help stays fast

        try:
            check_redis_url(value, _flag(param))
        except ConfigurationError as exc:
            usage_error(ctx.command_path, exc)
    return value


def _check_cluster_flags(ctx: typer.Context, cluster: str | None, redis: str | None) -> None:
    """``--redis`` needs ``--cluster``; ``--category`` contradicts it (one category: the
    cluster's)."""
    if cluster is None and redis is not None:
        usage_error(_PROG, "--redis needs --cluster N (the Redis of the cluster run)")
    source = ctx.get_parameter_source("category")
    if cluster is not None and source is not None and source.name == "COMMANDLINE":
        usage_error(_PROG, "--category contradicts --cluster (the cluster run is one category)")


# --- end of the cluster run's options -------------------------------------------------------------

CategoryOption = Annotated[
    str,
    typer.Option(
        "--category",
        metavar="IDS",
        callback=_category_callback,
        help="Categories to run, comma-separated ids 1..10 (DESIGN §6), in this order.",
    ),
]
SeverityOption = Annotated[
    str,
    typer.Option(
        "--severity",
        metavar="LEVEL",
        callback=_severity_callback,
        help="How hard the faults hit: low, medium, high or critical.",
    ),
]
ReportOption = Annotated[
    Path | None,
    typer.Option(
        "--report",
        metavar="DIR",
        parser=nonempty_path("--report"),
        help="The report directory: new, empty, or one an earlier lab run wrote "
        "[default: ./lab-report-YYYYmmdd-HHMMSS].",
        show_default=False,
    ),
]
JunitOption = Annotated[
    Path | None,
    typer.Option(
        "--junit",
        metavar="FILE",
        parser=nonempty_path("--junit"),
        help="Also write the verdicts as JUnit XML (one test case per category) to FILE.",
        show_default=False,
    ),
]

lab_app = typer.Typer(
    name="lab",
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


@lab_app.callback(invoke_without_command=True)
def lab(  # noqa: PLR0917 - typer passes options positionally
    ctx: typer.Context,
    category: CategoryOption = _ALL,
    severity: SeverityOption = "medium",
    seed: Annotated[
        str,
        typer.Option(
            "--seed",
            metavar="INT",
            callback=_seed_callback,
            help="Seeds every fault choice of the run (a whole number).",
        ),
    ] = "42",
    postgres: Annotated[
        str | None,
        typer.Option(
            "--postgres",
            metavar="DSN",
            callback=_postgres_callback,
            help="Store ticks in this PostgreSQL database (postgresql://...) instead of SQLite; "
            "server faults still use a throwaway instance the lab starts.",
            show_default=False,
        ),
    ] = None,
    report: ReportOption = None,
    junit: JunitOption = None,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            "--work-dir",
            metavar="DIR",
            parser=nonempty_path("--work-dir"),
            help="Where the pipeline's data directories go [default: a new temporary directory].",
            show_default=False,
        ),
    ] = None,
    log_level: LogLevelOption = LogLevel.WARNING,
    # The cluster run (issue 14).
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            metavar="N",
            callback=_cluster_callback,
            help="Run the cluster category instead of the ten: N nodes (2..5) sharing the "
            "symbols on one PostgreSQL (--postgres, or a throwaway server) and one Redis "
            "(--redis, or a throwaway redis-server).",
            show_default=False,
        ),
    ] = None,
    redis: Annotated[
        str | None,
        typer.Option(
            "--redis",
            metavar="URL",
            callback=_redis_callback,
            help="With --cluster: the cluster's Redis (redis://HOST:PORT[/DB]); the Redis-killed "
            "fault then is skipped (the lab kills only a Redis it started).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the chaos lab's categories and judge each against its criterion.

    Exit status: 0 every category met the seed's criterion; 1 one did not, or the lab could not
    run; 2 a usage error; 128 + N when signal N interrupted it (SIGINT: 130), after healing the
    faults in force and stopping its processes.
    """
    if ctx.invoked_subcommand is not None:
        return
    configure_logging(log_level.level, sys.stderr)
    _check_cluster_flags(ctx, cluster, redis)  # the cluster run (issue 14)
    ids = parse_categories(category)
    report_dir = _report_dir(report)
    _check_junit(junit)
    raise typer.Exit(
        _run_builtin(
            categories=ids,
            severity=severity,
            seed=parse_seed(seed),
            postgres=postgres,
            report_dir=report_dir,
            junit=junit,
            work_dir=work_dir,
            cluster=None if cluster is None else parse_cluster(cluster),
            redis=redis,
        )
    )


@lab_app.command("run")
def lab_run(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", parser=nonempty_path("FILE"), help="The TOML experiment to run."
        ),
    ],
    report: ReportOption = None,
    junit: JunitOption = None,
    log_level: LogLevelOption = LogLevel.WARNING,
) -> None:
    """Run a TOML experiment (steady-state probes, a method of faults, rollbacks that always run).

    Exit status: 0 the hypothesis held through every fault; 1 it did not, or the experiment
    could not run; 2 a usage error (a missing file); 128 + N when signal N interrupted it.
    """
    configure_logging(log_level.level, sys.stderr)
    prog = f"{_PROG} run"
    if not file.is_file():
        usage_error(prog, f"FILE {str(file)!r} is not a file")
    report_dir = _report_dir(report, prog=prog)
    _check_junit(junit, prog=prog)
    raise typer.Exit(_run_experiment(file, report_dir=report_dir, junit=junit))


# --- running ------------------------------------------------------------------------------------


def _report_dir(given: Path | None, *, prog: str = _PROG) -> Path:
    """The report directory, checked now (a usage error before anything runs)."""
    from strategylab.chaos import ReportDirError, check_report_dir, default_report_dir  # noqa: PLC0415

    path = given if given is not None else default_report_dir(dt.datetime.now().astimezone())
    try:
        check_report_dir(path)
    except ReportDirError as exc:
        usage_error(prog, f"--report {exc}")
    return path


def _check_junit(junit: Path | None, *, prog: str = _PROG) -> None:
    """The JUnit file, checked now (a usage error naming ``--junit`` before anything runs)."""
    if junit is None:
        return
    from strategylab.chaos import JunitPathError, check_junit_file  # noqa: PLC0415

    try:
        check_junit_file(junit)
    except JunitPathError as exc:
        usage_error(prog, f"--junit {exc}")


def _error(message: str, prog: str = _PROG) -> int:
    sys.stderr.write(f"{prog}: error: {escape(message)}\n")
    return 1


async def _interruptible(
    body: Callable[[], Awaitable[_T]], received: list[signal.Signals]
) -> _T | None:
    """Await ``body()`` while the first SIGINT, SIGTERM or SIGHUP cancels it (the lab heals and
    stops in its own ``finally`` blocks); ``None`` when a signal did, with it in ``received``."""
    import asyncio  # noqa: PLC0415 - not on --help's path

    from strategylab._children import cancel_on_signals  # noqa: PLC0415

    with cancel_on_signals() as got:
        try:
            return await body()
        except asyncio.CancelledError:
            if not got:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return None
        finally:
            received.extend(got)


def _run_builtin(
    *,
    categories: tuple[int, ...],
    severity: str,
    seed: int,
    postgres: str | None,
    report_dir: Path,
    junit: Path | None,
    work_dir: Path | None,
    cluster: int | None = None,
    redis: str | None = None,
) -> int:
    import asyncio  # noqa: PLC0415 - not on --help's path

    from rich.console import Console  # noqa: PLC0415

    from strategylab.chaos import (  # noqa: PLC0415
        LabOptions,
        LiveView,
        Severity,
        run_lab,
        scenarios_for,
    )

    if cluster is not None:  # the cluster run (issue 14): its one category
        from strategylab.chaos import CLUSTER_CATEGORY_ID  # noqa: PLC0415

        categories = (CLUSTER_CATEGORY_ID,)
    scenarios = [] if cluster is not None else scenarios_for(categories)
    # Without --work-dir the run's data (stores, logs) goes to a temporary directory of ours:
    # removed after a passing run (the report holds what it needs), kept and named otherwise.
    temporary = work_dir is None
    work = work_dir if work_dir is not None else Path(tempfile.mkdtemp(prefix="strategylab-lab-"))
    options = LabOptions(
        categories=categories,
        severity=Severity.parse(severity),
        seed=seed,
        postgres=postgres,
        work_dir=work,
        report_dir=report_dir,
        junit=junit,
    )
    # A log (CI, a pipe) gets the whole table on one line a row, not 80 columns of wrapped cells.
    console = Console() if sys.stdout.isatty() else Console(width=140)
    received: list[signal.Signals] = []
    view = LiveView(console, categories, origin=time.monotonic())

    async def body() -> LabReport:
        if cluster is not None:  # the cluster run (issue 14)
            from strategylab.chaos import run_cluster_lab  # noqa: PLC0415

            return await run_cluster_lab(options, view, nodes=cluster, redis=redis)
        return await run_lab(options, scenarios, view)

    try:
        with view:
            result = asyncio.run(_interruptible(body, received))
    except (OSError, TimeoutError) as exc:
        code = _error(f"the lab could not run: {exc}")
    except Exception as exc:
        code = _error(f"the lab failed: {type(exc).__name__}: {exc}")
    else:
        code = _finish(
            console, result, view=view, report_dir=report_dir, junit=junit, received=received
        )
    if temporary and code == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        console.print(f"the run's data (stores, logs): {work}", markup=False, highlight=False)
    return code


def _finish(
    console: Console,
    result: LabReport | None,
    *,
    view: LiveView,
    report_dir: Path,
    junit: Path | None,
    received: Sequence[signal.Signals],
    prog: str = _PROG,
) -> int:
    """Write the report and print the table; the exit status."""
    from strategylab.chaos import print_summary  # noqa: PLC0415

    interrupted = bool(received)
    if result is None:
        sig = received[0] if received else signal.SIGINT
        console.print(f"{prog}: interrupted by {sig.name}: faults healed, processes stopped")
        done = view.progress.done
        if done:
            console.print("categories finished before the interruption:")
            for ident, name, text in done:
                console.print(f"  {ident}. {name}: {text}", markup=False, highlight=False)
        else:
            console.print("no category had finished")
        return _SIGNAL_EXIT_BASE + int(sig)
    files = _write(result, report_dir, junit, prog=prog)
    print_summary(console, result, files, interrupted=interrupted)
    if interrupted:
        return _SIGNAL_EXIT_BASE + int(received[0])
    return 0 if result.passed and files is not None else 1


def _write(
    result: LabReport, report_dir: Path, junit: Path | None, *, prog: str
) -> ReportFiles | None:
    from strategylab.chaos import (  # noqa: PLC0415
        JunitPathError,
        ReportDirError,
        prepare_report_dir,
        write_report,
    )

    try:
        return write_report(result, prepare_report_dir(report_dir), junit=junit)
    except JunitPathError as exc:
        _error(f"--junit: cannot write {exc}", prog)
    except (OSError, ReportDirError) as exc:
        _error(f"--report: cannot write the report to {str(report_dir)!r}: {exc}", prog)
    return None


def _run_experiment(file: Path, *, report_dir: Path, junit: Path | None) -> int:
    """Run the experiment (:func:`strategylab.chaos.run_experiment_file`: synchronous, its own
    event loop; Ctrl-C raises :class:`KeyboardInterrupt` after the rollbacks ran, the ``end``
    event holding the result) and write its result to ``REPORT/experiment.json`` (and
    ``junit``)."""
    from rich.console import Console  # noqa: PLC0415

    from strategylab.chaos import ExperimentFileError, run_experiment_file  # noqa: PLC0415

    prog = f"{_PROG} run"
    console = Console()
    started = time.monotonic()
    ended: list[ExperimentResult] = []

    def on_event(event: ExperimentEvent) -> None:
        console.print(f"[{event.t:7.2f} s] {event.message}", markup=False, highlight=False)
        if event.result is not None:
            ended.append(event.result)

    interrupted = False
    result: ExperimentResult | None
    try:
        result = run_experiment_file(file, on_event)
    except KeyboardInterrupt:
        interrupted = True
        result = ended[-1] if ended else None
    except ExperimentFileError as exc:
        usage_error(prog, f"FILE {exc}")
    except Exception as exc:
        return _error(f"{file}: {type(exc).__name__}: {exc}", prog)
    if result is None:
        console.print(f"{prog}: interrupted by SIGINT: rollbacks ran, nothing to report")
        return _SIGNAL_EXIT_BASE + int(signal.SIGINT)
    try:
        out = _write_experiment(result, report_dir, junit, seconds=time.monotonic() - started)
    except _JunitWriteError as exc:
        return _error(f"--junit: cannot write {str(junit)!r}: {exc.__cause__}", prog)
    except (OSError, ValueError) as exc:
        return _error(f"--report: cannot write the report to {str(report_dir)!r}: {exc}", prog)
    console.print(f"{result.status.upper()}: {result.reason or result.title}", markup=False)
    console.print(f"report: {out}", markup=False, highlight=False)
    if interrupted:
        return _SIGNAL_EXIT_BASE + int(signal.SIGINT)
    return result.exit_code


def _write_experiment(
    result: ExperimentResult,
    report_dir: Path,
    junit: Path | None,
    *,
    seconds: float,
) -> Path:
    """Write ``REPORT/experiment.json`` (and ``junit``); the JSON file's path."""
    import json  # noqa: PLC0415

    from strategylab.chaos import prepare_report_dir, write_junit_case  # noqa: PLC0415

    out = prepare_report_dir(report_dir) / "experiment.json"
    out.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n", "utf-8")
    if junit is not None:
        started = dt.datetime.fromtimestamp(result.started_at, dt.UTC).isoformat()
        try:
            write_junit_case(
                junit,
                name=str(result.title),
                failure=None if result.status == "completed" else (result.reason or result.status),
                seconds=seconds,
                started_wall=started,
            )
        except OSError as exc:
            raise _JunitWriteError from exc
    return out


class _JunitWriteError(Exception):
    """The JUnit file of ``lab run`` could not be written (the cause is the :class:`OSError`)."""
