"""The options several commands share, defined once (typer ``Annotated`` aliases).

One name, one meaning, in every command that takes it:

- ``--data-dir DIR``: the process's data directory (its files: :mod:`strategylab._layout`).
- ``--symbols A,B``: symbols, comma-separated (one or more).
- ``--exchange-url URL``: the exchange simulator, ``http://HOST:PORT`` (its feed is ``URL/ws``),
  or its feed ``ws://HOST:PORT/ws`` (its orders are then ``http://HOST:PORT``): the same two
  forms, the same meaning, in ``node`` and ``trade``.
- ``--feed-url URL``: a market-data WebSocket, ``ws://HOST:PORT/ws``, where it is not the
  exchange's.

Every URL option is checked at parse time (:func:`url_callback`: the scheme the flag takes, a
host, a port in 1..65535), every path option refuses an empty value (:func:`nonempty_path`: it
would be the current directory), and ``--symbols`` is checked by :func:`symbols_callback`; each
refusal is one line naming the flag, exit 2.
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
import re
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Annotated, Final, NoReturn
from urllib.parse import SplitResult, urlsplit

import typer

from strategylab._logging import escape
from strategylab.errors import ConfigurationError

__all__ = [
    "EXCHANGE_SCHEMES",
    "FEED_SCHEMES",
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
    "check_postgres_url",
    "check_url",
    "is_postgres_url",
    "nonempty_path",
    "split_symbols",
    "symbols_callback",
    "url_callback",
    "usage_error",
]

EXCHANGE_SCHEMES: Final = ("http", "https", "ws", "wss")
"""``--exchange-url``'s (and ``--backup-url``'s) schemes: the exchange, or its feed ``/ws``."""
FEED_SCHEMES: Final = ("ws", "wss")
"""``--feed-url``'s schemes."""


def check_url(flag: str, url: str, schemes: Collection[str]) -> str:
    """``url`` when it is ``SCHEME://HOST[:PORT][/PATH]`` with a scheme in ``schemes``, a host,
    and a port in 1..65535 if one is given.

    Raises :class:`ConfigurationError` naming ``flag`` otherwise (an empty value, blanks or
    control characters, an unknown scheme, no host, a port out of range or not a number).
    """
    allowed = " or ".join(f"{scheme}://" for scheme in schemes)
    if not url:
        raise ConfigurationError(flag, url, "must not be empty")
    if any(not ch.isprintable() or ch.isspace() for ch in url):
        raise ConfigurationError(flag, url, "must not hold blanks or control characters")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError as exc:  # a malformed [IPv6] literal, an unbalanced bracket
        raise ConfigurationError(flag, url, f"is not a valid URL ({exc})") from None
    if parts.scheme not in schemes or not url.startswith(f"{parts.scheme}://"):
        raise ConfigurationError(flag, url, f"must start with {allowed}")
    if not hostname:
        raise ConfigurationError(flag, url, "has no host")
    _refuse_extras(flag, url, parts)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ConfigurationError(flag, url, "the port must be a number in 1..65535")
    return url


def _refuse_extras(flag: str, url: str, parts: SplitResult) -> None:
    """Refuse what an endpoint URL must not hold: credentials, a query or fragment, a malformed
    bracketed address (``[::1]]``)."""
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(flag, "(hidden)", "must not hold a user name or password")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ConfigurationError(flag, url, "must not hold a query (?...) or fragment (#...)")
    host_part = parts.netloc.rsplit("@", 1)[-1]
    if host_part.startswith("[") and not re.fullmatch(r"\[[0-9A-Fa-f:.]+\](:[0-9]*)?", host_part):
        raise ConfigurationError(flag, url, "has a malformed [IPv6] address")


def url_callback(
    schemes: Collection[str],
) -> Callable[[typer.Context, typer.CallbackParam, object], object]:
    """A typer option callback that checks the option's URL(s) with :func:`check_url` at parse
    time, exiting 2 with one line naming the flag (a ``None`` value is left to the command)."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: object) -> object:
        flag = param.opts[0] if param.opts else str(param.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if item is not None:
                try:
                    check_url(flag, str(item), schemes)
                except ConfigurationError as exc:
                    usage_error(ctx.command_path, exc)
        return value

    return check


def nonempty_path(flag: str) -> Callable[[object], Path]:
    """A ``parser=`` for the path option ``flag``: an empty value is refused with one line naming
    the flag, exit 2 (``Path("")`` would silently be the current directory)."""

    def parse(value: object) -> Path:
        if isinstance(value, Path):
            return value
        text = str(value)
        if not text.strip():  # "" or only blanks: never the current directory or a blank name
            # A parser sees no context (typer passes only the value): the program's name.
            usage_error("strategylab", f"{flag}: must not be empty")
        return Path(text)

    return parse


def symbols_callback(ctx: typer.Context, param: typer.CallbackParam, value: object) -> object:
    """A typer option callback that checks ``--symbols`` with :func:`split_symbols` at parse
    time, for every command that takes it: one line naming the flag, exit 2."""
    if isinstance(value, str):
        try:
            split_symbols(value, flag=param.opts[0] if param.opts else "--symbols")
        except ConfigurationError as exc:
            usage_error(ctx.command_path, exc)
    return value


def _nonempty_text(ctx: typer.Context, param: typer.CallbackParam, value: object) -> object:
    """Option callback of a text option that names a file or store: refuses an empty value."""
    flag = param.opts[0] if param.opts else str(param.name)
    if isinstance(value, str) and not value.strip():
        usage_error(ctx.command_path, f"{flag}: must not be empty")
    if isinstance(value, str) and is_postgres_url(value):
        try:
            check_postgres_url(flag, value)
        except ConfigurationError as exc:
            usage_error(ctx.command_path, exc)
    return value


def check_postgres_url(flag: str, url: str) -> str:
    """``url`` when it is a well-formed ``postgresql://`` (or ``postgres://``) URL, as libpq reads
    one: ``postgresql://[USER[:PASSWORD]@][HOST][:PORT][/DATABASE][?PARAMS]``, with a port in
    1..65535 and at least a host or a database named (``postgresql://`` alone is refused: it would
    silently be the local socket's default database).

    Raises :class:`ConfigurationError` naming ``flag``; the message never holds the password.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise ConfigurationError(
            flag, _without_password(url), f"is not a valid URL ({exc})"
        ) from None
    if port == 0:
        raise ConfigurationError(flag, _without_password(url), "the port must be in 1..65535")
    if not host and parts.path in {"", "/"}:
        raise ConfigurationError(
            flag, _without_password(url), "names neither a server nor a database"
        )
    return url


def _without_password(url: str) -> str:
    """``url`` with any ``:PASSWORD@`` replaced by ``@`` (for messages)."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1@", url)


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
    Path,
    typer.Option(
        "--data-dir",
        metavar="DIR",
        parser=nonempty_path("--data-dir"),
        help="The data directory (created 0700 if missing).",
    ),
]
SymbolsOption = Annotated[
    str,
    typer.Option(
        "--symbols",
        metavar="A,B",
        callback=symbols_callback,
        help="Symbols, comma-separated.",
    ),
]
ExchangeUrlOption = Annotated[
    str,
    typer.Option(
        "--exchange-url",
        metavar="URL",
        callback=url_callback(EXCHANGE_SCHEMES),
        help="The exchange, http://HOST:PORT (its feed: URL/ws); or its feed, ws://HOST:PORT/ws "
        "(its orders: http://HOST:PORT).",
    ),
]
FeedUrlOption = Annotated[
    str | None,
    typer.Option(
        "--feed-url",
        metavar="URL",
        callback=url_callback(FEED_SCHEMES),
        help="The market-data WebSocket, ws://HOST:PORT/ws [default: the exchange's /ws].",
        show_default=False,
    ),
]
DbOption = Annotated[
    str,
    typer.Option(
        "--db",
        metavar="STORE",
        callback=_nonempty_text,
        help="The tick store: a SQLite file, or a postgresql:// URL.",
    ),
]
StoreOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="STORE",
        callback=_nonempty_text,
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
        parser=nonempty_path("--book"),
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
        parser=nonempty_path("--signing-key-file"),
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
        parser=nonempty_path("--admin-token-file"),
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
        parser=nonempty_path("--audit-key-file"),
        help="Read the audit log's HMAC key (>= 16 bytes) from PATH (mode 0600 or narrower) "
        "[default: $STRATEGYLAB_AUDIT_KEY].",
        show_default=False,
    ),
]


_SYMBOL: Final = re.compile(r"[A-Za-z0-9._\-:/]{1,32}")


def split_symbols(text: str, *, flag: str = "--symbols") -> tuple[str, ...]:
    """``--symbols``' value as a tuple (blanks around commas ignored).

    Raises :class:`ConfigurationError` naming ``flag`` when an item is empty (``A,,B``, ``A,``),
    is not 1..32 of the ASCII letters, digits and ``. _ - : /`` (a control character, a newline,
    a blank inside a name), or is given twice.
    """
    names = tuple(part.strip(" ") for part in text.split(","))
    if not any(names):
        raise ConfigurationError(flag, text, "must name at least one symbol")
    for name in names:
        if not name:
            raise ConfigurationError(flag, text, "has an empty item (two commas, or one at an end)")
        if not _SYMBOL.fullmatch(name):
            raise ConfigurationError(
                flag, name, "a symbol is 1..32 of A-Z a-z 0-9 . _ - : / (no blanks or controls)"
            )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigurationError(flag, text, f"{name!r} is given twice")
        seen.add(name)
    return names


def is_postgres_url(text: str) -> bool:
    """Whether a ``--db`` value is a PostgreSQL URL rather than a SQLite file."""
    return text.startswith(("postgresql://", "postgres://"))


def usage_error(prog: str, error: object) -> NoReturn:
    """Write ``PROG: error: MESSAGE`` (escaped, one line) to stderr and exit 2 (a usage error)."""
    sys.stderr.write(f"{prog}: error: {escape(str(error))}\n")
    raise typer.Exit(2)
