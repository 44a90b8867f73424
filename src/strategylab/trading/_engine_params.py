"""The parameters a strategy ran with, recorded in its order book and checked at the next start.

A book holds a strategy's state, orders and positions as its parameters made them. A strategy
started on that book with other parameters would restore a state it does not understand (and fail
at its first tick, then be disabled) or, worse, trade on it: the engine compares the parameters
before anything trades and refuses to start (:func:`parameters_refused`) unless the strategy
converts its state (:meth:`~strategylab.strategy.Strategy.migrate_state`).

Storage: one row per strategy in the book's ``meta`` table (key ``parameters:NAME``, the
parameters as canonical JSON), written through a short connection of its own after the
:class:`~strategylab.trading.PositionStore` has opened (and vetted) the file. A book written
before parameters were recorded has none: its strategies start and their parameters are recorded
from then on.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from strategylab._files import sqlite_uri
from strategylab.errors import ConfigurationError
from strategylab.strategy import JSONValue

__all__ = ["canonical", "loaded", "parameters_refused", "read_parameters", "write_parameters"]

_PREFIX = "parameters:"


def canonical(parameters: Mapping[str, JSONValue]) -> str:
    """``parameters`` as canonical JSON text (sorted keys; what is not JSON shown by ``repr``)."""
    return json.dumps(dict(parameters), sort_keys=True, separators=(", ", ": "), default=repr)


def read_parameters(book: Path, strategy: str) -> str | None:
    """The canonical parameters recorded for ``strategy`` in ``book``; None when none are.

    Raises ``sqlite3.Error`` when the book cannot be read.
    """
    with contextlib.closing(sqlite3.connect(sqlite_uri(book, "ro"), uri=True)) as db:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (_PREFIX + strategy,)).fetchone()
    return None if row is None else str(row[0])


def write_parameters(book: Path, parameters: Mapping[str, str]) -> None:
    """Record each strategy's canonical parameters in ``book``, in one durable transaction.

    Raises ``sqlite3.Error`` when the book cannot be written.
    """
    with contextlib.closing(
        sqlite3.connect(sqlite_uri(book, "rw"), uri=True, isolation_level=None)
    ) as db:
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(_PREFIX + name, text) for name, text in parameters.items()],
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


_SYMBOL_KEYS = frozenset({"symbol", "symbols"})
"""Parameters that ``--symbols`` sets (the others are ``--param NAME=VALUE``)."""


def _shown(value: JSONValue) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def _flags(parameters: Mapping[str, JSONValue], keys: set[str] | None = None) -> str:
    """``parameters`` as the flags that give them: ``--symbols AAPL and --param fast=20``."""
    chosen = {k: v for k, v in parameters.items() if keys is None or k in keys}
    symbols = [_shown(v) for k, v in sorted(chosen.items()) if k in _SYMBOL_KEYS]
    params = [f"{k}={_shown(v)}" for k, v in sorted(chosen.items()) if k not in _SYMBOL_KEYS]
    parts = []
    if symbols:
        parts.append("--symbols " + ",".join(symbols))
    if params:
        parts.append("--param " + " ".join(params))
    return " and ".join(parts) or "no parameters"


def parameters_refused(strategy: str, book: Path, old: str, new: str) -> ConfigurationError:
    """The error that refuses to start ``strategy`` with ``new`` parameters on a ``book``
    written with ``old`` ones (canonical JSON both): it names the flag that changed,
    ``--symbols`` when the symbol did, else ``--param``, and what each was and is now."""
    before, after = loaded(old), loaded(new)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    flag = "--symbols" if changed & _SYMBOL_KEYS else "--param"
    now = {k: v for k, v in after.items() if k in changed}
    dropped = sorted(k for k in changed if k not in after)
    now_text = _flags(now) if now else "no parameters"
    if dropped:
        now_text += " (" + ", ".join(dropped) + " not given)"
    if flag == "--symbols":
        value = ",".join(_shown(v) for k, v in sorted(now.items()) if k in _SYMBOL_KEYS)
    else:
        value = " ".join(f"{k}={_shown(v)}" for k, v in sorted(now.items()))
    return ConfigurationError(
        flag,
        value,
        f"strategy {strategy}'s order book {book} was written with {_flags(before)}; "
        f"now {now_text}: start with those, or use a new --book",
    )


def loaded(text: str) -> dict[str, JSONValue]:
    """Canonical parameters back as a mapping."""
    return cast("dict[str, JSONValue]", json.loads(text))
