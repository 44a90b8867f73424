"""The live engine's durable book: orders, fills, positions and strategy state in one SQLite file.

Write-ahead: an order is recorded ``inflight`` with its client order id, in a committed (fsynced,
``synchronous=FULL``) transaction, *before* it is sent, so a crash mid-send leaves a row that
reconciliation resolves by asking the exchange. A fill is recorded once (its exchange id is the
primary key) in the same transaction that moves the position, so a position is always the sum of
the recorded fills.

Order statuses: ``inflight`` (sent or about to be; outcome unknown), ``open``, ``filled``,
``cancelled``, ``rejected`` (by the exchange), ``void`` (the exchange never accepted it and it was
not resent).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from strategylab._files import (
    check_sqlite_files,
    create_private_file,
    make_private_dir,
    sqlite_probe_uri,
    sqlite_uri,
)
from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import is_corruption
from strategylab.market import StoreCorruptedError
from strategylab.strategy import JSONValue, OrderRequest, OrderType, Side

__all__ = ["PersistedOrder", "PersistedPosition", "PositionStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    cid TEXT PRIMARY KEY, strategy TEXT NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL,
    qty REAL NOT NULL, type TEXT NOT NULL, price REAL, status TEXT NOT NULL,
    order_id TEXT, filled_qty REAL NOT NULL DEFAULT 0, reason TEXT
);
CREATE INDEX IF NOT EXISTS orders_status ON orders (status);
CREATE TABLE IF NOT EXISTS fills (
    fill_id TEXT PRIMARY KEY, cid TEXT NOT NULL, strategy TEXT NOT NULL, symbol TEXT NOT NULL,
    side TEXT NOT NULL, qty REAL NOT NULL, price REAL NOT NULL, ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (
    strategy TEXT NOT NULL, symbol TEXT NOT NULL, qty REAL NOT NULL,
    PRIMARY KEY (strategy, symbol)
);
CREATE TABLE IF NOT EXISTS strategies (
    name TEXT PRIMARY KEY, state TEXT NOT NULL DEFAULT '{}', next_order INTEGER NOT NULL DEFAULT 1,
    failures INTEGER NOT NULL DEFAULT 0, enabled INTEGER NOT NULL DEFAULT 1
);
"""

OPEN_STATUSES = frozenset({"inflight", "open"})


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistedOrder:
    """One order row."""

    cid: str
    strategy: str
    symbol: str
    side: Side
    qty: float
    type: OrderType
    price: float | None
    status: str
    order_id: str | None
    filled_qty: float
    reason: str | None

    @property
    def request(self) -> OrderRequest:
        """The order as the strategy asked for it."""
        return OrderRequest(
            symbol=self.symbol, side=self.side, qty=self.qty, type=self.type, price=self.price
        )

    @property
    def remaining_signed(self) -> float:
        """Signed quantity (units) that may still move the position: 0 once cancelled, rejected
        or void; for a ``filled`` order, what its recorded fills do not yet cover (the exchange
        said filled, the fill itself is not recorded yet)."""
        if self.status not in OPEN_STATUSES and self.status != "filled":
            return 0.0
        return max(self.qty - self.filled_qty, 0.0) * self.side.sign


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistedPosition:
    """One strategy's position in one symbol."""

    strategy: str
    symbol: str
    qty: float


def _order(row: tuple[object, ...]) -> PersistedOrder:
    cid, strategy, symbol, side, qty, kind, price, status, order_id, filled, reason = row
    return PersistedOrder(
        cid=str(cid),
        strategy=str(strategy),
        symbol=str(symbol),
        side=Side(side),
        qty=float(cast("float", qty)),
        type=OrderType(kind),
        price=None if price is None else float(cast("float", price)),
        status=str(status),
        order_id=None if order_id is None else str(order_id),
        filled_qty=float(cast("float", filled)),
        reason=None if reason is None else str(reason),
    )


_ORDER_COLUMNS = (
    "cid, strategy, symbol, side, qty, type, price, status, order_id, filled_qty, reason"
)


_BOOK_TABLES: Final = frozenset({"meta", "orders", "fills", "positions", "strategies"})


def _holds_engine_id(db: sqlite3.Connection) -> bool:
    """Whether ``db``'s ``meta`` table holds an engine id, as every book has from its first
    opening: a file with only some of the book's table names (another application's ``orders``,
    a ``meta`` of another shape) is not one."""
    try:
        row = db.execute("SELECT 1 FROM meta WHERE key = 'engine_id'").fetchone()
    except sqlite3.Error:  # a `meta` without those columns
        return False
    return row is not None


def _refuse_foreign(path: Path) -> None:
    """Refuse an existing SQLite file that holds tables a book does not have (a tick store, say):
    writing the book's tables into it, and trading, would spoil both. A missing or empty file is
    a new book. Raises :class:`ConfigurationError` naming ``--book`` and the tables found.

    Read-only: closing a read-write connection would checkpoint the file's WAL into it. A file
    SQLite cannot read is left to the opening that follows (which says it is damaged).
    """
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        with contextlib.closing(sqlite3.connect(sqlite_probe_uri(path), uri=True)) as db:
            tables = sorted(
                str(row[0])
                for row in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'"
                )
            )
            marked = _holds_engine_id(db) if "meta" in tables else False
    except sqlite3.Error:
        return
    if tables and (set(tables) - _BOOK_TABLES or not marked):
        raise ConfigurationError(
            "--book", str(path), f"is not an order book (it holds tables: {', '.join(tables)})"
        )


def _open_book(path: Path) -> sqlite3.Connection:
    """Open (or create, 0600 in a 0700 directory) the book at ``path`` with its schema.

    SQLite follows symlinks and blocks on a FIFO, so the file and its -wal/-shm/-journal are
    checked first: :class:`UnsafePathError` names a symlink, a file that is not regular or a
    planted hard link. An SQLite file holding tables a book has not (a tick store) raises
    :class:`ConfigurationError` naming ``--book``. A file that is not an SQLite database (or is
    damaged) raises
    :class:`StoreCorruptedError` naming it; it is never moved aside or rebuilt, since the book is
    the only record of what was sent.
    """
    make_private_dir(path.parent)
    check_sqlite_files(path)
    _refuse_foreign(path)
    create_private_file(path)  # -wal and -shm get the file's mode from SQLite
    db = sqlite3.connect(
        sqlite_uri(path, "rw"), uri=True, isolation_level=None, check_same_thread=False
    )
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
    except sqlite3.DatabaseError as exc:
        db.close()
        if not is_corruption(exc):
            raise
        raise StoreCorruptedError(path, f"not a usable SQLite book ({exc})") from None
    except BaseException:
        db.close()
        raise
    return db


class PositionStore:
    """The SQLite book at ``path`` (created if missing; WAL, ``synchronous=FULL``).

    Calls are synchronous and short (one small transaction each); the engine makes them from the
    event loop, which is what keeps the write-ahead order strictly before the send.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db = _open_book(self.path)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'engine_id'").fetchone()
        if row is None:
            engine_id = uuid.uuid4().hex[:8]
            self._db.execute("INSERT INTO meta VALUES ('engine_id', ?)", (engine_id,))
        else:
            engine_id = str(row[0])
        self.engine_id = engine_id
        """Random per database: prefixes client order ids so a new book never reuses an old id."""

    def close(self) -> None:
        """Close the file."""
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # ------------------------------------------------------------------ strategies

    def ensure_strategy(self, name: str) -> None:
        """Create the strategy's row if it has none."""
        self._db.execute("INSERT OR IGNORE INTO strategies (name) VALUES (?)", (name,))

    def load_state(self, name: str) -> dict[str, JSONValue]:
        """The strategy's last persisted state ({} if none)."""
        row = self._db.execute("SELECT state FROM strategies WHERE name = ?", (name,)).fetchone()
        return {} if row is None else cast("dict[str, JSONValue]", json.loads(row[0]))

    def save_state(self, name: str, state: dict[str, JSONValue]) -> None:
        """Persist the strategy's state."""
        self._db.execute(
            "UPDATE strategies SET state = ? WHERE name = ?", (json.dumps(state), name)
        )

    def set_strategy_health(self, name: str, *, failures: int, enabled: bool) -> None:
        """Persist the failure count and whether the strategy is enabled."""
        self._db.execute(
            "UPDATE strategies SET failures = ?, enabled = ? WHERE name = ?",
            (failures, int(enabled), name),
        )

    def strategy_health(self, name: str) -> tuple[int, bool]:
        """(failures, enabled) as persisted."""
        row = self._db.execute(
            "SELECT failures, enabled FROM strategies WHERE name = ?", (name,)
        ).fetchone()
        return (0, True) if row is None else (int(row[0]), bool(row[1]))

    # ------------------------------------------------------------------ orders

    def record_inflight(
        self, strategy: str, request: OrderRequest, state: dict[str, JSONValue] | None
    ) -> str:
        """Allocate the next client order id and record the order in flight, durably; returns it.

        The strategy's ``state`` (as of deciding this order) is saved in the same transaction.
        """
        with self._tx() as db:
            row = db.execute(
                "SELECT next_order FROM strategies WHERE name = ?", (strategy,)
            ).fetchone()
            number = 1 if row is None else int(row[0])
            cid = f"{self.engine_id}-{strategy}-{number}"
            db.execute(
                "INSERT INTO strategies (name, next_order) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET next_order = excluded.next_order",
                (strategy, number + 1),
            )
            db.execute(
                f"INSERT INTO orders ({_ORDER_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",  # noqa: S608
                (
                    cid,
                    strategy,
                    request.symbol,
                    request.side.value,
                    request.qty,
                    request.type.value,
                    request.price,
                    "inflight",
                    None,
                    0.0,
                    None,
                ),
            )
            if state is not None:
                db.execute(
                    "UPDATE strategies SET state = ? WHERE name = ?", (json.dumps(state), strategy)
                )
        return cid

    def next_order(self, strategy: str) -> int:
        """The number the strategy's next client order id takes (1 for a new strategy)."""
        row = self._db.execute(
            "SELECT next_order FROM strategies WHERE name = ?", (strategy,)
        ).fetchone()
        return 1 if row is None else int(row[0])

    def record_intents(
        self,
        strategy: str,
        orders: list[tuple[str, OrderRequest]],
        state: dict[str, JSONValue],
        *,
        next_order: int,
    ) -> None:
        """Record ``orders`` (client id, request) in flight together with the strategy's
        ``state`` and its ``next_order`` number, in one durable transaction: a decision and the
        orders it led to are saved together or not at all."""
        with self._tx() as db:
            db.executemany(
                f"INSERT INTO orders ({_ORDER_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",  # noqa: S608
                [
                    (
                        cid,
                        strategy,
                        r.symbol,
                        r.side.value,
                        r.qty,
                        r.type.value,
                        r.price,
                        "inflight",
                        None,
                        0.0,
                        None,
                    )
                    for cid, r in orders
                ],
            )
            db.execute(
                "INSERT INTO strategies (name, state, next_order) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET state = excluded.state, "
                "next_order = MAX(next_order, excluded.next_order)",
                (strategy, json.dumps(state), next_order),
            )

    def update_order(
        self,
        cid: str,
        *,
        status: str,
        order_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Set an order's status (and exchange id / reason when known)."""
        self._db.execute(
            "UPDATE orders SET status = ?, order_id = COALESCE(?, order_id), "
            "reason = COALESCE(?, reason) WHERE cid = ?",
            (status, order_id, reason, cid),
        )

    def order(self, cid: str) -> PersistedOrder | None:
        """The order with this client id."""
        row = self._db.execute(
            f"SELECT {_ORDER_COLUMNS} FROM orders WHERE cid = ?",  # noqa: S608
            (cid,),
        ).fetchone()
        return None if row is None else _order(row)

    def orders(self, statuses: frozenset[str] | None = None) -> list[PersistedOrder]:
        """Every order (or those with one of ``statuses``), in insertion order."""
        rows = self._db.execute(
            f"SELECT {_ORDER_COLUMNS} FROM orders ORDER BY rowid"  # noqa: S608
        ).fetchall()
        orders = [_order(r) for r in rows]
        return orders if statuses is None else [o for o in orders if o.status in statuses]

    def count_orders(self) -> dict[str, int]:
        """Orders per status."""
        rows = self._db.execute("SELECT status, COUNT(*) FROM orders GROUP BY status").fetchall()
        return {str(s): int(n) for s, n in rows}

    # ------------------------------------------------------------------ fills and positions

    def has_fill(self, fill_id: str) -> bool:
        """Whether this exchange fill is recorded."""
        row = self._db.execute("SELECT 1 FROM fills WHERE fill_id = ?", (fill_id,)).fetchone()
        return row is not None

    def record_fill(
        self,
        *,
        fill_id: str,
        cid: str,
        strategy: str,
        symbol: str,
        side: Side,
        qty: float,
        price: float,
        ts: int,
        order_status: str | None,
    ) -> bool:
        """Record a fill and move the position, atomically; False if it was already recorded."""
        with self._tx() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO fills VALUES (?,?,?,?,?,?,?,?)",
                (fill_id, cid, strategy, symbol, side.value, qty, price, ts),
            )
            if cursor.rowcount == 0:
                return False
            db.execute(
                "INSERT INTO positions VALUES (?, ?, ?) ON CONFLICT (strategy, symbol) "
                "DO UPDATE SET qty = qty + excluded.qty",
                (strategy, symbol, qty * side.sign),
            )
            db.execute(
                "UPDATE orders SET filled_qty = filled_qty + ?, "
                "status = COALESCE(?, status) WHERE cid = ?",
                (qty, order_status, cid),
            )
        return True

    def positions(self) -> list[PersistedPosition]:
        """Every (strategy, symbol) position, sorted."""
        rows = self._db.execute(
            "SELECT strategy, symbol, qty FROM positions ORDER BY strategy, symbol"
        ).fetchall()
        return [PersistedPosition(strategy=str(a), symbol=str(b), qty=float(c)) for a, b, c in rows]

    def positions_from_fills(self) -> dict[tuple[str, str], float]:
        """(strategy, symbol) → the sum of recorded signed fills: what positions must equal."""
        rows = self._db.execute(
            "SELECT strategy, symbol, SUM(CASE side WHEN 'buy' THEN qty ELSE -qty END) "
            "FROM fills GROUP BY strategy, symbol"
        ).fetchall()
        return {(str(a), str(b)): float(c) for a, b, c in rows}

    def set_position(self, strategy: str, symbol: str, qty: float) -> None:
        """Overwrite a position (reconciliation only)."""
        self._db.execute(
            "INSERT INTO positions VALUES (?, ?, ?) ON CONFLICT (strategy, symbol) "
            "DO UPDATE SET qty = excluded.qty",
            (strategy, symbol, qty),
        )

    def fill_count(self) -> int:
        """Fills recorded."""
        return int(self._db.execute("SELECT COUNT(*) FROM fills").fetchone()[0])
