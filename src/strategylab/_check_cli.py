"""``strategylab check``: an integrity check of a tick store against the exchange's emitted log.

A plain typer command function; ``cli.py`` registers it on its app. The store is an SQLite file
or a ``postgresql://`` URL, only ever read (:func:`strategylab.chaos.check_sqlite`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

import typer

from strategylab._cli_options import JsonOption, LogLevel, LogLevelOption
from strategylab._logging import escape

__all__ = ["CHECK_VIOLATION", "check_command"]

CHECK_VIOLATION: Final = 3
"""``strategylab check``'s exit status when the check ran and found the data wrong."""


def check_command(  # noqa: PLR0917 - typer passes options positionally
    emitted: Annotated[Path, typer.Argument(metavar="EMITTED", help="The exchange's emitted log.")],
    db: Annotated[
        str,
        typer.Argument(
            metavar="DB",
            help="The tick store, opened read-only: an SQLite file, or a postgresql:// URL.",
        ),
    ],
    acks: Annotated[Path | None, typer.Option(help="The node's ack log.")] = None,
    require_complete: Annotated[
        bool, typer.Option(help="Count emitted ticks that are not stored as errors.")
    ] = False,
    log_level: LogLevelOption = LogLevel.WARNING,
    as_json: JsonOption = False,
) -> None:
    """Check a tick store against the exchange's emitted log, without writing to it.

    DB is an SQLite file, opened read-only (its bytes and modification time stay as they were),
    or a postgresql:// URL, read in read-only transactions (nothing is created).

    Exit status: 0 nothing wrong; 1 an input cannot be used (missing, empty, not a tick store,
    damaged, a server that cannot be reached, an ack log that is not JSON lines); 2 a usage
    error; 3 integrity violated (ticks lost, duplicated, unexpected, corrupted or stored although
    invalid, or missing with --require-complete).
    """
    import asyncio  # noqa: PLC0415
    import json  # noqa: PLC0415

    from strategylab._logging import configure_logging  # noqa: PLC0415
    from strategylab.chaos import CheckInputError, check_sqlite  # noqa: PLC0415
    from strategylab.market import StoreCorruptedError  # noqa: PLC0415

    configure_logging(log_level.level, force=False)
    try:
        report = asyncio.run(check_sqlite(emitted, db, acks, require_complete=require_complete))
    except (CheckInputError, StoreCorruptedError) as exc:
        # One line naming the file: escaped, since a file name may hold control characters.
        typer.echo(f"strategylab check: {escape(str(exc))}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(report.to_dict()) if as_json else report.summary())
    raise typer.Exit(0 if report.ok else CHECK_VIOLATION)
