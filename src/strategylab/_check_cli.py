"""``strategylab check``: an integrity check of a tick store against the exchange's emitted log.

A plain typer command function; ``cli.py`` registers it on its app. The store is an SQLite file
or a ``postgresql://`` URL, only ever read (:func:`strategylab.chaos.check_sqlite`).

An input that cannot be used prints one line naming it as the user gave it (``EMITTED PATH``,
``DB STORE``, ``--acks PATH``) and what is wrong, and exits 1; a ``DB`` that cannot name a store
(empty, a URL other than ``postgresql://``) is a usage error, exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

import typer

from strategylab._cli_options import JsonOption, LogLevel, LogLevelOption, nonempty_path
from strategylab._logging import escape

__all__ = ["CHECK_VIOLATION", "check_command"]

CHECK_VIOLATION: Final = 3
"""``strategylab check``'s exit status when the check ran and found the data wrong."""


def check_command(  # noqa: PLR0917 - typer passes options positionally
    emitted: Annotated[
        Path,
        typer.Argument(
            metavar="EMITTED",
            parser=nonempty_path("EMITTED"),
            help="The exchange's emitted log.",
        ),
    ],
    db: Annotated[
        str,
        typer.Argument(
            metavar="DB",
            help="The tick store, opened read-only: an SQLite file, or a postgresql:// URL.",
        ),
    ],
    acks: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            parser=nonempty_path("--acks"),
            help="The node's ack log.",
            show_default=False,
        ),
    ] = None,
    require_complete: Annotated[
        bool, typer.Option(help="Count emitted ticks that are not stored as errors.")
    ] = False,
    log_level: LogLevelOption = LogLevel.WARNING,
    as_json: JsonOption = False,
) -> None:
    """Check a tick store against the exchange's emitted log, without writing to it.

    DB is an SQLite file, opened read-only: its bytes and modification time, and those of its
    -wal, stay as they were (SQLite may still update the -shm file, the WAL index, a
    shared-memory cache it rebuilds, of a database left with a WAL by a killed writer). Or a
    postgresql:// URL, read in read-only transactions (nothing is created).

    Exit status: 0 nothing wrong; 1 an input cannot be used (missing, empty, not an emitted log,
    not a tick store, damaged, a server that cannot be reached, an ack log that is not JSON
    lines); 2 a usage error (an empty DB, a URL other than postgresql://); 3 integrity violated
    (ticks lost, duplicated, unexpected, corrupted or stored although invalid, or missing with
    --require-complete).
    """
    import asyncio  # noqa: PLC0415
    import json  # noqa: PLC0415

    from strategylab._logging import configure_logging  # noqa: PLC0415
    from strategylab._research_cli import UsageError, open_store  # noqa: PLC0415
    from strategylab.chaos import CheckInputError, check_sqlite  # noqa: PLC0415
    from strategylab.market import StoreCorruptedError  # noqa: PLC0415

    configure_logging(log_level.level, force=False)
    try:
        open_store("DB", db)  # only the name is checked here; check_sqlite opens it
    except UsageError as exc:
        typer.echo(f"strategylab check: {escape(str(exc))}", err=True)
        raise typer.Exit(2) from None
    try:
        report = asyncio.run(check_sqlite(emitted, db, acks, require_complete=require_complete))
    except (CheckInputError, StoreCorruptedError) as exc:
        # One line naming the file: escaped, since a file name may hold control characters.
        typer.echo(f"strategylab check: {escape(_named(exc))}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(report.to_dict()) if as_json else report.summary())
    raise typer.Exit(0 if report.ok else CHECK_VIOLATION)


def _named(exc: Exception) -> str:
    """``exc``'s one line, led by the argument it is about (``EMITTED``, ``DB``, ``--acks``)."""
    from strategylab.chaos import EmittedLogError  # noqa: PLC0415
    from strategylab.market import StoreCorruptedError  # noqa: PLC0415

    text = str(exc)
    if isinstance(exc, StoreCorruptedError) or exc.__cause__ is not None:
        return f"DB {text}"  # check_sqlite chains the store's own error as the cause
    if isinstance(exc, EmittedLogError) or "emitted log" in text:
        return f"EMITTED {text}"
    if "ack log" in text:
        return f"--acks {text}"
    return text
