"""The options several commands share, defined once (typer ``Annotated`` aliases).

One name, one meaning, in every command that takes it:

- ``--data-dir DIR``: the process's data directory (its files: :mod:`strategylab._layout`).
- ``--symbols A,B``: symbols, comma-separated (one or more).
- ``--exchange-url URL``: the exchange simulator, ``http://HOST:PORT`` (its feed is ``URL/ws``).
  The node, which only reads the feed, also takes the feed's ``ws://HOST:PORT/ws`` there.
- ``--feed-url URL``: a market-data WebSocket, ``ws://HOST:PORT/ws``, where it is not the
  exchange's.
- ``--db STORE``: the *tick store*: a SQLite file, or a ``postgresql://`` URL. (The trader's order
  book is ``--book``: a different thing, a different name.)
- ``--book PATH``: the trader's SQLite order book.
- ``--strategy NAME``: a built-in strategy (``ma_crossover``, ``mean_reversion``) or
  ``module:Class``.
- ``--param NAME=VALUE``: one strategy parameter, repeatable.
- ``--log-level LEVEL``: the least severe log records written (debug, info, warning, error).
- ``--json``: print the result as JSON.
- The secrets (:mod:`strategylab._secrets`): ``--signing-key-file``, ``--admin-token-file``,
  ``--audit-key-file`` (and the visible ``--signing-key`` / ``--admin-token``, with a warning).

The defaults differ by command and stay in each command's signature; the names and help live here.
Typer shows the defaults in ``--help``.
"""

from __future__ import annotations

import enum
import logging
import sys
from pathlib import Path
from typing import Annotated, Final, NoReturn

import typer

from strategylab._logging import escape

__all__ = [
    "AdminTokenFileOption",
    "AdminTokenOption",
    "AuditKeyFileOption",
    "BookOption",
    "DataDirOption",
    "DbOption",
    "ExchangeUrlOption",
    "FeedUrlOption",
    "JsonOption",
    "LogLevel",
    "LogLevelOption",
    "ParamOption",
    "SigningKeyFileOption",
    "SigningKeyOption",
    "StoreOption",
    "StrategyOption",
    "SymbolsOption",
    "is_postgres_url",
    "split_symbols",
    "usage_error",
]


class LogLevel(enum.StrEnum):
    """``--log-level``'s choices."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def level(self) -> int:
        """The :mod:`logging` level number."""
        return int(getattr(logging, self.name))


DataDirOption = Annotated[
    Path, typer.Option("--data-dir", help="The data directory (created 0700 if missing).")
]
SymbolsOption = Annotated[
    str, typer.Option("--symbols", metavar="A,B", help="Symbols, comma-separated.")
]
ExchangeUrlOption = Annotated[
    str,
    typer.Option(
        "--exchange-url", metavar="URL", help="The exchange, http://HOST:PORT (its feed: URL/ws)."
    ),
]
FeedUrlOption = Annotated[
    str | None,
    typer.Option(
        "--feed-url",
        metavar="URL",
        help="The market-data WebSocket, ws://HOST:PORT/ws [default: the exchange's /ws].",
        show_default=False,
    ),
]
DbOption = Annotated[
    str,
    typer.Option(
        "--db",
        metavar="STORE",
        help="The tick store: a SQLite file, or a postgresql:// URL.",
    ),
]
StoreOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="STORE",
        help="The tick store: a SQLite file, or a postgresql:// URL (as --postgres) "
        "[default: DATA_DIR/ticks.db].",
        show_default=False,
    ),
]
"""``--db`` where the tick store has a default (the node's ``DATA_DIR/ticks.db``)."""
BookOption = Annotated[
    Path,
    typer.Option(
        "--book",
        metavar="PATH",
        help="The trader's SQLite order book (created with its directory, 0700; its audit log "
        "and logs/trader.log go beside it).",
    ),
]
StrategyOption = Annotated[
    str,
    typer.Option(
        "--strategy",
        metavar="NAME",
        help="A built-in strategy (ma_crossover, mean_reversion) or module:Class.",
    ),
]
ParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        metavar="NAME=VALUE",
        help="A strategy parameter; repeat for each.",
        show_default=False,
    ),
]
LogLevelOption = Annotated[
    LogLevel,
    typer.Option(
        "--log-level",
        case_sensitive=False,
        help="The least severe log records written (to stderr and the log file).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]

_VISIBLE: Final = "VISIBLE to every local user in the process list: prefer"
SigningKeyOption = Annotated[
    str | None,
    typer.Option(
        "--signing-key",
        metavar="KEY",
        help=f"HMAC key of the feed (hex or text); {_VISIBLE} --signing-key-file or "
        "$STRATEGYLAB_SIGNING_KEY. None of them = unsigned.",
        show_default=False,
    ),
]
SigningKeyFileOption = Annotated[
    Path | None,
    typer.Option(
        "--signing-key-file",
        metavar="PATH",
        help="Read the feed's HMAC key from PATH (mode 0600 or narrower) [default: "
        "$STRATEGYLAB_SIGNING_KEY].",
        show_default=False,
    ),
]
AdminTokenOption = Annotated[
    str | None,
    typer.Option(
        "--admin-token",
        metavar="TOKEN",
        help=f"The admin bearer token (changes need it); {_VISIBLE} --admin-token-file or "
        "$STRATEGYLAB_ADMIN_TOKEN.",
        show_default=False,
    ),
]
AdminTokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--admin-token-file",
        metavar="PATH",
        help="Read the admin bearer token (changes need it) from PATH (mode 0600 or narrower) "
        "[default: $STRATEGYLAB_ADMIN_TOKEN].",
        show_default=False,
    ),
]
AuditKeyFileOption = Annotated[
    Path | None,
    typer.Option(
        "--audit-key-file",
        metavar="PATH",
        help="Read the audit log's HMAC key (>= 16 bytes) from PATH (mode 0600 or narrower) "
        "[default: $STRATEGYLAB_AUDIT_KEY].",
        show_default=False,
    ),
]


def split_symbols(text: str) -> tuple[str, ...]:
    """``--symbols``' value as a tuple (blanks around commas ignored, empty items dropped)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def is_postgres_url(text: str) -> bool:
    """Whether a ``--db`` value is a PostgreSQL URL rather than a SQLite file."""
    return text.startswith(("postgresql://", "postgres://"))


def usage_error(prog: str, error: object) -> NoReturn:
    """Write ``PROG: error: MESSAGE`` (escaped, one line) to stderr and exit 2 (a usage error)."""
    sys.stderr.write(f"{prog}: error: {escape(str(error))}\n")
    raise typer.Exit(2)
