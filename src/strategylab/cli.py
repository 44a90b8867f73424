"""The ``strategylab`` command."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from strategylab import __version__
from strategylab._check_cli import check_command
from strategylab._cli_options import (
    AdminTokenFileOption,
    JsonOption,
    LogLevel,
    LogLevelOption,
    nonempty_path,
)
from strategylab._import_cli import import_command
from strategylab._lab_cli import lab_app
from strategylab._logging import configure_logging, escape
from strategylab._node_cli import node_command, trade_command
from strategylab._research_cli import backtest_command, optimize_command
from strategylab._serve_cli import exchange_command, proxy_command

app = typer.Typer(
    name="strategylab",
    help="Strategy Lab: fault tolerance for trading systems, proved with real faults.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: typer's rich renderer costs ~80 ms of imports on every start (bench/startup.py).
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"strategylab {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Strategy Lab: fault tolerance for trading systems, proved with real faults."""


@app.command()
def demo(
    data_dir: Annotated[
        Path,
        typer.Option(
            help="Where the exchange log and the node's SQLite store are kept: a new or empty "
            "directory, or one an earlier demo created (only what it created is cleared)."
        ),
    ] = Path("strategylab-data"),
    ticks: Annotated[int, typer.Option(min=10_000, help="Ticks the exchange emits.")] = 400_000,
    tick_rate: Annotated[
        int, typer.Option(min=1_000, max=200_000, help="Ticks per second from the exchange.")
    ] = 20_000,
    log_level: LogLevelOption = LogLevel.WARNING,
    seed: Annotated[
        int,
        typer.Option(
            help="Seed of the fault schedule (which faults, at which points, with what "
            "parameters), the exchange's market and the proxy's choices."
        ),
    ] = 42,
) -> None:
    """Ingest market data through real faults, then prove nothing was lost.

    Exit status: 0 nothing lost, duplicated, corrupted or missing; 1 a finding, or a process
    that could not start; 2 a usage error (a --data-dir the demo did not create and will not
    clear); 128 + N when signal N (SIGINT, SIGTERM, SIGHUP) interrupted it, after its processes
    were stopped in order.
    """
    from strategylab._demo import run_demo as run_market_demo  # noqa: PLC0415

    configure_logging(log_level.level, sys.stderr)
    raise typer.Exit(
        run_market_demo(
            data_dir=data_dir, ticks=ticks, tick_rate=tick_rate, log_level=log_level, seed=seed
        )
    )


@app.command("demo-core")
def demo_core(
    calls: Annotated[int, typer.Option(min=50, help="Calls to make in each phase.")] = 300,
    faults: Annotated[int, typer.Option(min=1, max=20, help="Times the service is killed.")] = 3,
    log_level: LogLevelOption = LogLevel.WARNING,
) -> None:
    """Protect a real flaky TCP service with retry + circuit breaker and show the recovery."""
    from strategylab._demo_core import run_demo  # noqa: PLC0415 - keep `--help` fast

    configure_logging(log_level.level, sys.stderr)
    code = run_demo(calls=calls, faults=faults)
    raise typer.Exit(code)


audit_app = typer.Typer(
    name="audit", help="Check the recovery audit log.", no_args_is_help=True, add_completion=False
)
app.add_typer(audit_app)


@audit_app.command("verify")
def audit_verify(  # noqa: PLR0917 - typer passes options positionally
    path: Annotated[
        Path,
        typer.Argument(
            metavar="PATH", parser=nonempty_path("PATH"), help="The audit log (audit.jsonl)."
        ),
    ],
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            "--audit-key-file",
            metavar="PATH",
            parser=nonempty_path("--key-file"),
            help="File holding the HMAC key of a keyed log, mode 0600 or narrower "
            "(default: $STRATEGYLAB_AUDIT_KEY); --audit-key-file as for node and trade.",
        ),
    ] = None,
    anchor: Annotated[
        list[Path] | None,
        typer.Option(
            "--anchor",
            metavar="PATH",
            parser=nonempty_path("--anchor"),
            help="An anchor source whose heads the log must contain: the anchor file, or a saved "
            "stdout of the node or trader (its audit_anchor lines; other lines are skipped). "
            "Repeatable.",
        ),
    ] = None,
    head: Annotated[
        str | None,
        typer.Option(metavar="SEQ:HASH", help="A head noted elsewhere that the log must contain."),
    ] = None,
    max_line: Annotated[
        int, typer.Option(min=1024, help="The longest line accepted, bytes (default 1 MiB).")
    ] = 1024 * 1024,
    allow_empty: Annotated[
        bool,
        typer.Option(
            "--allow-empty",
            help="Accept a log with no records (a node or trader that never recovered from an "
            "error leaves one): exit 0, saying nothing was verified.",
        ),
    ] = False,
    log_level: LogLevelOption = LogLevel.WARNING,
) -> None:
    """Verify the audit log's hash chain, HMACs and anchors (exit 1 on the first problem).

    Exit status: 0 intact; 1 tampered or unreadable, or empty (no records: nothing to verify)
    without --allow-empty; 2 a usage error (a missing file, a key file others can read, a
    malformed --head).
    """
    import re  # noqa: PLC0415

    from strategylab.errors import AuditIntegrityError  # noqa: PLC0415
    from strategylab.fault_tolerance import AuditLog, load_audit_key  # noqa: PLC0415

    configure_logging(log_level.level, sys.stderr)
    prog = "strategylab audit verify"
    given = [("audit log", path), ("--key-file", key_file)]
    for label, file in given + [("--anchor", source) for source in anchor or ()]:
        if file is not None and not file.is_file():
            typer.echo(f"{prog}: {label} {str(file)!r} is not a file", err=True)
            raise typer.Exit(2)
    expected: tuple[int, str] | None = None
    if head is not None:
        match = re.fullmatch(r"([1-9][0-9]*):([0-9a-f]{64})", head)
        if match is None:
            typer.echo(
                f"{prog}: --head {escape(head)!r}: must be SEQ:HASH (64 hex digits)", err=True
            )
            raise typer.Exit(2)
        expected = (int(match[1]), match[2])
    try:
        key = load_audit_key(key_file, option="--key-file")
    except (OSError, ValueError) as exc:
        typer.echo(f"{prog}: {escape(str(exc))}", err=True)
        raise typer.Exit(2) from None
    try:
        result = AuditLog.verify(
            path, key=key, anchor=anchor or None, expected_head=expected, max_line=max_line
        )
    except AuditIntegrityError as exc:
        typer.echo(f"{prog}: FAILED: {escape(str(exc))}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"{prog}: cannot read: {escape(str(exc))}", err=True)
        raise typer.Exit(1) from None
    if result.records == 0:
        # An empty file proves nothing: a truncated log looks the same as one never written.
        if not allow_empty:
            typer.echo(
                f"{prog}: {escape(str(path))!r} holds no records: nothing to verify "
                "(--allow-empty accepts an empty log)",
                err=True,
            )
            raise typer.Exit(1)
        typer.echo(f"{prog}: ok: EMPTY log, 0 records: nothing was verified")
        raise typer.Exit(0)
    keyed = "keyed (HMAC-SHA256)" if result.keyed else "unkeyed"
    typer.echo(
        f"{prog}: ok: {result.records} records, head {result.head_seq} {result.head_hash}, "
        f"{keyed}, {result.anchors} anchors checked"
    )
    raise typer.Exit(0)


def _ops_check(name: str) -> Callable[[typer.Context, typer.CallbackParam, object], object]:
    """An option callback that runs :mod:`strategylab._ops_cli`'s check ``name``, imported only
    when ``status`` or ``kill`` runs (``--help`` stays fast)."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: object) -> object:
        from strategylab import _ops_cli  # noqa: PLC0415

        checker: Callable[[typer.Context, typer.CallbackParam, object], object] = getattr(
            _ops_cli, name
        )
        return checker(ctx, param, value)

    return check


_StatusUrlOption = Annotated[
    str,
    typer.Option(
        "--url",
        metavar="URL",
        callback=_ops_check("check_url_option"),
        help="The node's status service, http://HOST:PORT (the status_url of its ready line).",
    ),
]
_HttpTimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        callback=_ops_check("check_timeout_option"),
        help="Seconds the whole request may take.",
    ),
]


@app.command("status")
def status(
    url: _StatusUrlOption, as_json: JsonOption = False, timeout: _HttpTimeoutOption = 5.0
) -> None:
    """Print a running node's status (GET URL/status) as tables, or as JSON with --json.

    Exit status: 0 printed; 1 the node cannot be reached, answered an HTTP error or something
    that is not JSON (one line naming the URL and why); 2 a usage error.
    """
    from strategylab._ops_cli import run_status  # noqa: PLC0415 - keep `--help` fast

    run_status(url=url, as_json=as_json, timeout=timeout)


@app.command("kill")
def kill(  # noqa: PLR0917 - typer passes options positionally
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            metavar="URL",
            callback=_ops_check("check_url_option"),
            help="The node's status service, http://HOST:PORT (the status_url of its ready "
            "line). Not with --cluster.",
            show_default=False,
        ),
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason",
            metavar="TEXT",
            callback=_ops_check("check_reason_option"),
            help="Why the kill switch is pulled (recorded in the audit log and the snapshot); "
            "one line, at most 500 characters. Required unless --clear.",
            show_default=False,
        ),
    ] = None,
    admin_token_file: AdminTokenFileOption = None,
    timeout: _HttpTimeoutOption = 5.0,
    # Cluster kill switch (issue 14, H2): --cluster NAME --redis URL [--clear [--kill-id ID]].
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            metavar="NAME",
            help="Halt the trading of every node started with --cluster NAME (with --redis), "
            "including nodes down now or started later, until --clear.",
            show_default=False,
        ),
    ] = None,
    redis: Annotated[
        str | None,
        typer.Option(
            "--redis",
            metavar="URL",
            help="The cluster's Redis, redis://HOST:PORT[/DB] (with --cluster).",
            show_default=False,
        ),
    ] = None,
    clear: Annotated[
        bool,
        typer.Option(
            "--clear",
            help="With --cluster: clear the cluster's kill (needs the admin token that pulled "
            "it); the nodes resume trading.",
        ),
    ] = False,
    kill_id: Annotated[
        str | None,
        typer.Option(
            "--kill-id",
            metavar="ID",
            help="With --clear: the kill to clear when its key was lost from Redis (the id a "
            "halted node shows in /status).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Pull a running node's kill switch (POST URL/admin/kill): trading halts, open orders are
    cancelled, state is snapshotted and the node exits.

    With --cluster NAME --redis URL instead: pull the cluster's kill switch, a durable Redis key
    (strategylab:cluster:NAME:kill) plus a pub/sub notice. Every node started with --cluster NAME
    --redis URL halts its trading (new orders refused, open orders cancelled) within 100 ms and
    stays up, ingesting and serving /status; a node down now, or started later, starts halted.
    --clear lifts it: it needs the admin token that pulled it, and each node resumes only on a
    clear it verifies with its own token (HMAC-SHA256), so a bare DEL of the key, or Redis losing
    it, keeps the nodes halted (clear such a lost kill with --clear --kill-id ID). Both wait up
    to 1 s for each running node's acknowledgement and print per node what it did ("nodes"),
    with a line on stderr for each node that did not halt / resume and why.

    The admin token comes from --admin-token-file PATH or $STRATEGYLAB_ADMIN_TOKEN (never from
    the command line, where every local user could read it). Exit status: 0 the node accepted
    (its JSON answer is printed) or the cluster kill was written; 1 the node or Redis cannot be
    reached, the node refused the token, has its admin routes off, or answered an error, the
    token is not the one that pulled the cluster kill, or there is no cluster kill to clear, a
    running node did not halt / resume (or, for a kill, no running node of the cluster
    acknowledged it: the kill stays recorded); 2 a usage error (no token, a bad flag or --redis
    URL).
    """
    if cluster is not None or redis is not None or clear or kill_id is not None:
        from strategylab._ops_cli import run_cluster_kill  # noqa: PLC0415 - keep `--help` fast

        run_cluster_kill(
            url=url,
            cluster=cluster,
            redis_url=redis,
            reason=reason,
            clear=clear,
            kill_id=kill_id,
            admin_token_file=admin_token_file,
            timeout=timeout,
        )
    from strategylab._cli_options import usage_error  # noqa: PLC0415
    from strategylab._ops_cli import run_kill  # noqa: PLC0415 - keep `--help` fast

    if url is None:
        usage_error("strategylab kill", "--url is required (or --cluster NAME --redis URL)")
    if reason is None:
        usage_error("strategylab kill", "--reason is required")
    run_kill(url=url, reason=reason, admin_token_file=admin_token_file, timeout=timeout)


app.command("exchange")(exchange_command)
app.command("node")(node_command)
app.command("trade")(trade_command)
app.command("proxy")(proxy_command)
app.command("check")(check_command)
app.command("backtest")(backtest_command)
app.command("optimize")(optimize_command)
app.command("import")(import_command)
app.add_typer(lab_app)


def main() -> None:
    """Console-script entry point: escaped logging (:mod:`strategylab._logging`), then the app."""
    configure_logging()
    app()
