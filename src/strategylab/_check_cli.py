"""``strategylab check``: an integrity check of a tick store against the exchange's emitted log.

A plain typer command function; ``cli.py`` registers it on its app. The store is an SQLite file
or a ``postgresql://`` URL (the ``DB`` argument), or a PostgreSQL store named by ``--postgres URL``
(with ``--pg-table``/``--pg-schema`` when its table is not ``ticks`` on the URL's search_path),
only ever read (:func:`strategylab.chaos.check_store`): the store of one node, or the one a
cluster of nodes shares.

An input that cannot be used prints one line naming it as the user gave it (``EMITTED PATH``,
``DB STORE``, ``--postgres URL``, ``--acks PATH``) and what is wrong, and exits 1; a store that
cannot be named (an empty ``DB``, a URL other than ``postgresql://``, both ``DB`` and
``--postgres`` or neither, ``--pg-table`` with an SQLite file) is a usage error, exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

import typer

from strategylab._cli_options import JsonOption, LogLevel, LogLevelOption, nonempty_path
from strategylab._logging import escape
from strategylab._research_store import PG_SCHEMA_HELP, PG_TABLE_HELP

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
        str | None,
        typer.Argument(
            metavar="DB",
            help="The tick store, opened read-only: an SQLite file, or a postgresql:// URL "
            "(or give --postgres instead).",
            show_default=False,
        ),
    ] = None,
    postgres: Annotated[
        str | None,
        typer.Option(
            "--postgres",
            metavar="URL",
            help="A PostgreSQL tick store: postgresql://[USER@]HOST[:PORT]/DATABASE (not with DB).",
            show_default=False,
        ),
    ] = None,
    pg_table: Annotated[
        str | None,
        typer.Option("--pg-table", metavar="NAME", help=PG_TABLE_HELP, show_default=False),
    ] = None,
    pg_schema: Annotated[
        str | None,
        typer.Option("--pg-schema", metavar="NAME", help=PG_SCHEMA_HELP, show_default=False),
    ] = None,
    acks: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="PATH",
            parser=nonempty_path("--acks"),
            help="The node's ack log; repeat it for the nodes of a cluster sharing the store (the "
            "highest acknowledged seq per symbol over all of them).",
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
    postgresql:// URL, read in read-only transactions (nothing is created); --postgres URL says
    the same without DB, e.g. for the store several nodes share.

    Exit status: 0 nothing wrong; 1 an input cannot be used (missing, empty, not an emitted log,
    not a tick store, damaged, a server that cannot be reached, an ack log that is not JSON
    lines); 2 a usage error (an empty DB, a URL other than postgresql://, both DB and --postgres
    or neither); 3 integrity violated (ticks lost, duplicated, unexpected, corrupted or stored
    although invalid, or missing with --require-complete).
    """
    import asyncio  # noqa: PLC0415
    import json  # noqa: PLC0415

    from strategylab._logging import configure_logging  # noqa: PLC0415
    from strategylab._research_cli import UsageError, open_store  # noqa: PLC0415
    from strategylab._research_store import choose_store  # noqa: PLC0415
    from strategylab.chaos import CheckInputError, check_store  # noqa: PLC0415
    from strategylab.market import StoreCorruptedError  # noqa: PLC0415

    configure_logging(log_level.level, force=False)
    try:
        store = choose_store(
            db=db, postgres=postgres, pg_table=pg_table, pg_schema=pg_schema, db_flag="DB"
        )
        # Only the name is checked here; check_store opens it.
        open_store(store.flag, store.store, table=store.table, schema=store.schema)
    except UsageError as exc:
        typer.echo(f"strategylab check: {escape(str(exc))}", err=True)
        raise typer.Exit(2) from None
    try:
        report = asyncio.run(
            check_store(
                emitted,
                store.store,
                None if not acks else acks[0] if len(acks) == 1 else list(acks),
                require_complete=require_complete,
                table=store.table,
                schema=store.schema,
            )
        )
    except (CheckInputError, StoreCorruptedError) as exc:
        # One line naming the file: escaped, since a file name may hold control characters.
        typer.echo(f"strategylab check: {escape(_named(exc, store.flag))}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(report.to_dict()) if as_json else report.summary())
    raise typer.Exit(0 if report.ok else CHECK_VIOLATION)


def _named(exc: Exception, store_flag: str = "DB") -> str:
    """``exc``'s one line, led by the argument it is about (``EMITTED``, ``DB`` or
    ``--postgres``, ``--acks``)."""
    from strategylab.chaos import EmittedLogError  # noqa: PLC0415
    from strategylab.market import StoreCorruptedError  # noqa: PLC0415

    text = str(exc)
    if isinstance(exc, StoreCorruptedError) or exc.__cause__ is not None:
        return f"{store_flag} {text}"  # check_store chains the store's own error as the cause
    if isinstance(exc, EmittedLogError) or "emitted log" in text:
        return f"EMITTED {text}"
    if "ack log" in text:
        return f"--acks {text}"
    return text
