"""The shared tick store: PostgreSQL through psycopg 3 (async).

A batch is one transaction. Three write methods are offered because their speed differs with the
batch size (measured on the real server, see the report in ``tests/test_store_pg.py``):

- ``"copy"`` (the default): binary ``COPY`` straight into the tick table. The primary key
  ``(symbol, seq)`` refuses a row already stored (or twice in the batch) with a unique violation,
  which rolls the whole transaction back; the batch is then merged instead, in a new transaction:
  its first occurrence of each ``(symbol, seq)`` is copied into a per-connection temporary staging
  table (``ON COMMIT DELETE ROWS``) and ``INSERT ... SELECT ... ORDER BY symbol, seq ON CONFLICT
  (symbol, seq) DO NOTHING`` keeps the stored rows. So the common batch (new ticks only) costs one
  ``COPY`` (0.9-1.0x of a bare ``COPY``, see ``bench/ingest.py``), and a replay after a crash (a
  batch overlapping the stored range) is stored exactly once. After a merge that met stored rows
  the next batch is merged directly (a replay is usually followed by more of the replay), until a
  merge meets none; then ``COPY`` is tried again;
- ``"unnest"``: one ``INSERT ... SELECT * FROM unnest(%s, ...) ON CONFLICT DO NOTHING`` with the
  columns sent as seven arrays;
- ``"executemany"``: psycopg's pipelined ``executemany`` of the ``INSERT ... ON CONFLICT``.

Whatever the method, a tick already stored is never overwritten and, within one batch, the first
occurrence of a ``(symbol, seq)`` is the one stored (the semantics of ``INSERT ... ON CONFLICT DO
NOTHING`` applied row by row in batch order, and of the SQLite store's ``INSERT OR IGNORE``).
The table layout is the one every version of this store created (``PRIMARY KEY (symbol, seq)``),
so a table created by older code opens and is written as is.

A cluster node writes with :meth:`PostgresTickStore.write_fenced` (issue 14, see
:mod:`._pg_fence`): the same methods, with the lease rows of the batch's symbols share-locked and
checked in the same transaction; a batch whose lease moved raises
:class:`~strategylab.market.FencedError` and is rolled back whole. :meth:`~PostgresTickStore.write`
is unchanged (``bench/ingest.py`` and ``bench/cluster_ingest.py`` measure both against raw COPY).

Every operation (connect included) has a deadline, ``timeout``: a server that stops answering
(a blackholed link) raises psycopg's ``OperationalError`` like a lost connection, instead of
hanging the writer. Connections live in a small pool of its own (``pool_size`` connections,
opened lazily; no ``psycopg_pool`` dependency). A connection that failed is closed and dropped,
and the next call opens a new one: a lost connection surfaces once as psycopg's
``OperationalError`` (classified DATABASE_CONNECTION_LOST) and the following write reconnects.

``read_only=True`` is the store of the tools that only read (``check``, ``backtest``,
``optimize``; see :func:`~strategylab.market.open_tick_reader`): ``open`` creates nothing and
refuses a database without the tick table (:class:`~strategylab.market.StoreUnusableError`),
every connection runs ``SET default_transaction_read_only = on`` (the server refuses any write),
the write methods raise, and driver errors come out translated, naming the URL without its
password: :class:`~strategylab.market.StoreUnreachableError` for a server that cannot be
reached, :class:`~strategylab.market.StoreUnusableError` otherwise.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, Literal

import msgspec
import psycopg
from psycopg import sql

from strategylab.errors import StrategyLabError
from strategylab.fault_tolerance import KnobValue, ScalingKnob, scale_knobs

from ._pg_fence import Fence, check_fence
from ._reader import StoreUnreachableError, StoreUnusableError, TickBounds, TickSpan
from ._store import QuarantinedTick
from ._tick import Tick

__all__ = ["PostgresTickStore", "WriteMethod"]

WriteMethod = Literal["copy", "unnest", "executemany"]
_COLUMNS: Final = ("symbol", "seq", "ts", "bid", "ask", "bid_size", "ask_size")
_COPY_TYPES: Final = ("text", "int8", "int8", "float8", "float8", "float8", "float8")
"""The tick table's column types, for binary ``COPY`` (every version of the table has them)."""
_astuple = msgspec.structs.astuple


def _shown_dsn(dsn: str) -> str:
    """``dsn`` for messages and logs: its host, port, user and database, never a password."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://(invalid URL)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = str(parts.get("host") or "")
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"


def _first_occurrences(ticks: Sequence[Tick]) -> Sequence[Tick]:
    """``ticks`` without the later repeats of a ``(symbol, seq)`` (order kept)."""
    first: dict[tuple[str, int], Tick] = {}
    for tick in ticks:
        first.setdefault((tick.symbol, tick.seq), tick)
    return ticks if len(first) == len(ticks) else list(first.values())


def _sever(conn: psycopg.AsyncConnection[Any], severed: list[bool]) -> None:
    # shutdown() on a duplicate of libpq's descriptor: the socket stays open (no fd reuse race),
    # but every pending read sees EOF, so libpq reports the connection lost.
    with contextlib.suppress(OSError, psycopg.Error):
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
        severed.append(True)


class _PoolSlots:
    """A semaphore whose size can change while it is held (the pool's connection slots).

    Growing wakes waiters at once; shrinking lets the holders over the new size finish and
    admits no one until the count is under it. FIFO, like :class:`asyncio.Semaphore`."""

    __slots__ = ("_size", "_used", "_waiters")

    def __init__(self, size: int) -> None:
        self._size = size
        self._used = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def size(self) -> int:
        return self._size

    @property
    def in_use(self) -> int:
        return self._used

    def resize(self, size: int) -> None:
        self._size = size
        self._wake()

    async def __aenter__(self) -> None:
        if self._used < self._size and not self._waiters:
            self._used += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # granted, then cancelled: hand the slot on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    async def __aexit__(self, *_exc: object) -> None:
        self._release()

    def _release(self) -> None:
        self._used -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._used < self._size:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._used += 1
                waiter.set_result(None)


class PostgresTickStore:
    """A :class:`~strategylab.market.TickStore` on PostgreSQL (also a ``Component``, and
    ``Scalable``: RESOURCE_SCALING grows the connection pool up to ``max_pool_size``)."""

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "ticks",
        schema: str | None = None,
        pool_size: int = 2,
        max_pool_size: int | None = None,
        method: WriteMethod = "copy",
        connect_timeout: float = 5.0,
        timeout: float | None = 30.0,
        name: str = "postgres",
        read_only: bool = False,
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size={pool_size!r}: must be >= 1")
        ceiling = 4 * pool_size if max_pool_size is None else max_pool_size
        if ceiling < pool_size:
            raise ValueError(f"max_pool_size={max_pool_size!r}: must be >= pool_size ({pool_size})")
        if method not in {"copy", "unnest", "executemany"}:
            raise ValueError(f"method={method!r}: expected 'copy', 'unnest' or 'executemany'")
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout={connect_timeout!r}: must be > 0")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout={timeout!r}: must be > 0 or None")
        self.dsn = dsn
        self.read_only = read_only
        self._shown = _shown_dsn(dsn)
        self._has_quarantine = True
        self.method: WriteMethod = method
        self._schema = schema
        self._table_name = table
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._name = name
        self._table = sql.Identifier(*((schema,) if schema else ()), table)
        self._quarantine_table = sql.Identifier(
            *((schema,) if schema else ()), f"{table}_quarantine"
        )
        self._stage = sql.Identifier(f"_stage_{table}")
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = _PoolSlots(pool_size)
        self._knob = ScalingKnob(
            name="pool_size",
            getter=lambda: self._slots.size,
            setter=self._resize_pool,
            lower=1,
            upper=ceiling,
        )
        self._staged: set[int] = set()
        self._merging = False
        self._merges = 0
        self._opened = False
        self._reconnects = 0
        self._lost = 0

    @property
    def name(self) -> str:
        """The component name (``"postgres"`` unless given)."""
        return self._name

    @property
    def shown_url(self) -> str:
        """The server's URL for messages and logs: host, port, user, database, no password."""
        return self._shown

    @property
    def reconnects(self) -> int:
        """Connections opened to replace one that failed."""
        return self._reconnects

    @property
    def merges(self) -> int:
        """Batches of the ``"copy"`` method stored by the merge (a ``COPY`` straight into the
        table met a stored or repeated ``(symbol, seq)``, or the batch before had)."""
        return self._merges

    @property
    def pool_size(self) -> int:
        """Connections that may be open at once now (RESOURCE_SCALING changes it)."""
        return self._slots.size

    @property
    def connections_in_use(self) -> int:
        """Connections held by an operation right now."""
        return self._slots.in_use

    def knobs(self) -> tuple[KnobValue, ...]:
        """The scalable resources (``pool_size``) with their values and bounds."""
        return (self._knob.snapshot(),)

    async def scale(self, factor: float) -> bool:
        """``Scalable.scale``: resize the pool to ``pool_size * factor`` within
        ``[1, max_pool_size]``; False when it is already at the bound.

        Growing admits waiting operations at once (each opens its connection lazily);
        shrinking closes idle connections beyond the new size and lets busy ones finish."""
        moved = scale_knobs((self._knob,), factor)
        surplus = len(self._idle) - self._slots.size
        if surplus > 0:
            extra, self._idle = self._idle[:surplus], self._idle[surplus:]
            for conn in extra:
                self._staged.discard(id(conn))
                with contextlib.suppress(psycopg.Error, OSError):
                    await conn.close()
        return moved

    def _resize_pool(self, size: int) -> None:
        self._slots.resize(size)

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect and create the schema and tables if needed.

        ``read_only``: connect and check that the tick table exists, creating nothing; raises
        :class:`~strategylab.market.StoreUnusableError` (no tick table, an invalid URL) or
        :class:`~strategylab.market.StoreUnreachableError`.
        """
        self._opened = True
        if self.read_only:
            await self._open_read_only()
            return
        async with self._connection() as conn, conn.transaction():
            if self._schema:
                await conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema))
                )
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (symbol text NOT NULL, seq bigint NOT NULL, "
                    "ts bigint NOT NULL, bid double precision NOT NULL, "
                    "ask double precision NOT NULL, bid_size double precision NOT NULL, "
                    "ask_size double precision NOT NULL, PRIMARY KEY (symbol, seq))"
                ).format(self._table)
            )
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, "
                    "received_ns bigint NOT NULL, reason text NOT NULL, raw text NOT NULL, "
                    "symbol text, seq bigint)"
                ).format(self._quarantine_table)
            )

    async def _open_read_only(self) -> None:
        try:
            rows = await self._fetch(
                sql.SQL("SELECT to_regclass(%s), to_regclass(%s)"),
                (
                    self._qualified(self._table_name),
                    self._qualified(f"{self._table_name}_quarantine"),
                ),
            )
        except BaseException:
            await self.aclose()
            raise
        ticks, quarantine = rows[0]
        self._has_quarantine = quarantine is not None
        if ticks is None:
            self._opened = False
            await self.aclose()
            raise StoreUnusableError(
                f"{self._shown}: a PostgreSQL database, but not a tick store "
                f"(no table {self._qualified(self._table_name)})"
            )

    def _qualified(self, table: str) -> str:
        # to_regclass parses the text as SQL would: quote each part, so any name is exact.
        parts = (*((self._schema,) if self._schema else ()), table)
        return ".".join('"' + part.replace('"', '""') + '"' for part in parts)

    async def aclose(self) -> None:
        """Close every idle connection; safe to call twice."""
        self._opened = False
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
        self._staged.clear()

    async def start(self) -> None:
        """``Component.start``: :meth:`open`."""
        await self.open()

    async def stop(self) -> None:
        """``Component.stop``: :meth:`aclose`."""
        await self.aclose()

    async def health(self) -> bool:
        """True when a ``SELECT 1`` round trip to the server just succeeded."""
        if not self._opened:
            return False
        try:
            async with self._connection() as conn:
                await conn.execute("SELECT 1")
                await conn.rollback()
        except (psycopg.Error, OSError, TimeoutError):
            return False
        return True

    # ------------------------------------------------------------------ TickStore

    async def write(self, ticks: Sequence[Tick]) -> int:
        """Commit ``ticks`` durably; returns how many were new (stored ticks are kept, and the
        first occurrence of a ``(symbol, seq)`` in the batch wins).

        Raises psycopg's errors (``OperationalError`` for a lost or silent server). With the
        ``"copy"`` method a batch that meets stored ticks takes two transactions (the refused
        ``COPY``, rolled back, then the merge); either way it is committed once or not at all.
        """
        self._refuse_if_read_only()
        if not ticks:
            return 0
        if self.method == "copy":
            return await self._write_copy(ticks)
        async with self._connection() as conn, conn.transaction():
            if self.method == "unnest":
                return await self._write_unnest(conn, ticks)
            return await self._write_executemany(conn, ticks)

    async def write_fenced(self, ticks: Sequence[Tick], fence: Fence) -> int:
        """:meth:`write`, admitted only while ``fence`` holds the lease of every symbol of the
        batch (issue 14; see :mod:`._pg_fence`): returns how many ticks were new.

        In the same transaction as the ``COPY`` (or the merge, or the ``INSERT``) the lease rows
        of the batch's symbols are share-locked and compared with ``fence``; raises
        :class:`~strategylab.market.FencedError` (naming the symbol, the token written with and
        the current one) when one moved, and then nothing of the batch is stored. A takeover
        (an ``UPDATE`` of the lease row) waits for a write in flight, so it is ordered after it.
        Raises psycopg's errors like :meth:`write` (an undefined lease table included).
        """
        self._refuse_if_read_only()
        if not ticks:
            return 0
        if self.method == "copy":
            return await self._write_copy(ticks, fence)
        async with self._connection() as conn, conn.transaction():
            await check_fence(conn, fence, {t.symbol for t in ticks}, len(ticks))
            if self.method == "unnest":
                return await self._write_unnest(conn, ticks)
            return await self._write_executemany(conn, ticks)

    async def last_seqs(self) -> dict[str, int]:
        """The highest stored sequence per symbol (where a feed resumes).

        A loose index scan (a recursive CTE: one primary-key seek per symbol to find the next,
        one for its highest seq), so the answer takes milliseconds however many ticks are
        stored; ``GROUP BY symbol`` reads every row, and a bounded caller (a FailoverStore's
        ``stall_timeout``) gave up on it once the table held millions."""
        rows = await self._fetch(
            sql.SQL(
                "WITH RECURSIVE s(symbol) AS ("
                "SELECT (SELECT min(symbol) FROM {t}) "
                "UNION ALL SELECT (SELECT min(symbol) FROM {t} WHERE symbol > s.symbol) "
                "FROM s WHERE s.symbol IS NOT NULL) "
                "SELECT symbol, (SELECT max(seq) FROM {t} AS x WHERE x.symbol = s.symbol) "
                "FROM s WHERE symbol IS NOT NULL"
            ).format(t=self._table)
        )
        return {str(symbol): int(seq) for symbol, seq in rows}

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        """Stored ticks of ``symbol`` from ``from_seq`` to ``to_seq`` (inclusive), in order."""
        upper = to_seq if to_seq is not None else (1 << 63) - 1
        rows = await self._fetch(
            sql.SQL(
                "SELECT symbol, seq, ts, bid, ask, bid_size, ask_size FROM {} "
                "WHERE symbol = %s AND seq BETWEEN %s AND %s ORDER BY seq"
            ).format(self._table),
            (symbol, from_seq, upper),
        )
        return [Tick(*row) for row in rows]

    async def symbols(self) -> list[str]:
        """Every symbol with a stored tick, sorted."""
        rows = await self._fetch(
            sql.SQL("SELECT DISTINCT symbol FROM {} ORDER BY symbol").format(self._table)
        )
        return [str(row[0]) for row in rows]

    async def count(self) -> int:
        """How many ticks are stored."""
        rows = await self._fetch(sql.SQL("SELECT COUNT(*) FROM {}").format(self._table))
        return int(rows[0][0])

    async def duplicates(self) -> int:
        """Rows beyond the first per (symbol, seq): 0, since that is the primary key."""
        rows = await self._fetch(
            sql.SQL(
                "SELECT COALESCE(SUM(n - 1), 0) FROM "
                "(SELECT COUNT(*) AS n FROM {} GROUP BY symbol, seq HAVING COUNT(*) > 1) AS d"
            ).format(self._table)
        )
        return int(rows[0][0])

    async def quarantine(self, entries: Sequence[QuarantinedTick]) -> None:
        """Keep refused input with its reason (one transaction)."""
        self._refuse_if_read_only()
        if not entries:
            return
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(
                sql.SQL(
                    "INSERT INTO {} (received_ns, reason, raw, symbol, seq) "
                    "VALUES (%s, %s, %s, %s, %s)"
                ).format(self._quarantine_table),
                [(e.received_ns, e.reason, e.raw, e.symbol, e.seq) for e in entries],
            )

    async def quarantined(self) -> list[QuarantinedTick]:
        """Everything quarantined, oldest first ([] read-only without a quarantine table)."""
        if not self._has_quarantine:
            return []
        rows = await self._fetch(
            sql.SQL("SELECT received_ns, reason, raw, symbol, seq FROM {} ORDER BY id").format(
                self._quarantine_table
            )
        )
        return [
            QuarantinedTick(received_ns=r[0], reason=r[1], raw=r[2], symbol=r[3], seq=r[4])
            for r in rows
        ]

    async def span(self, symbol: str, bounds: TickBounds | None = None) -> TickSpan:
        """``symbol``'s stored ticks inside ``bounds`` (None: all of them)."""
        where, values = (bounds or TickBounds()).where("%s")
        # Only the fixed clauses of TickBounds.where are joined in; values are bound.
        query = sql.SQL("SELECT MIN(seq), MAX(seq), COUNT(*) FROM {} WHERE symbol = %s {}").format(
            self._table, sql.SQL(where)
        )
        rows = await self._fetch(query, (symbol, *values))
        low, high, count = rows[0]
        return TickSpan(first_seq=low, last_seq=high, count=int(count))

    def _refuse_if_read_only(self) -> None:
        if self.read_only:
            raise RuntimeError(f"{self._name}: opened read_only, it does not write")

    # ------------------------------------------------------------------ write methods

    async def _write_copy(self, ticks: Sequence[Tick], fence: Fence | None = None) -> int:
        # ``fence``: write_fenced's check, in each transaction (None: the plain path, unchanged).
        symbols = None if fence is None else {t.symbol for t in ticks}
        async with self._connection() as conn:
            if not self._merging:
                try:
                    async with conn.transaction():
                        if fence is not None and symbols is not None:
                            await check_fence(conn, fence, symbols, len(ticks))
                        await self._copy(conn, self._table, ticks)
                    return len(ticks)
                except psycopg.errors.UniqueViolation:
                    # Rolled back: nothing of the batch is stored. Merge it instead.
                    pass
            self._merges += 1
            unique = _first_occurrences(ticks)
            async with conn.transaction():
                if fence is not None and symbols is not None:
                    await check_fence(conn, fence, symbols, len(ticks))
                new = await self._merge(conn, unique)
            # Stored rows met: a replay, whose next batch likely overlaps too. None met (the
            # COPY failed on a duplicate inside the batch only): back to COPY.
            self._merging = new < len(unique)
            return new

    async def _copy(
        self, conn: psycopg.AsyncConnection[Any], table: sql.Identifier, ticks: Sequence[Tick]
    ) -> None:
        async with (
            conn.cursor() as cur,
            cur.copy(
                sql.SQL(
                    "COPY {} (symbol, seq, ts, bid, ask, bid_size, ask_size) FROM STDIN "
                    "(FORMAT BINARY)"
                ).format(table)
            ) as copy,
        ):
            copy.set_types(_COPY_TYPES)
            for tick in ticks:
                await copy.write_row(_astuple(tick))

    async def _merge(self, conn: psycopg.AsyncConnection[Any], ticks: Sequence[Tick]) -> int:
        if id(conn) not in self._staged:
            await conn.execute(
                sql.SQL(
                    "CREATE TEMPORARY TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) "
                    "ON COMMIT DELETE ROWS"
                ).format(self._stage, self._table)
            )
            self._staged.add(id(conn))
        await self._copy(conn, self._stage, ticks)
        async with conn.cursor() as cur:
            await cur.execute(
                sql.SQL(
                    "INSERT INTO {} SELECT symbol, seq, ts, bid, ask, bid_size, ask_size FROM {} "
                    "ORDER BY symbol, seq ON CONFLICT (symbol, seq) DO NOTHING"
                ).format(self._table, self._stage)
            )
            return max(cur.rowcount, 0)

    async def _write_unnest(self, conn: psycopg.AsyncConnection[Any], ticks: Sequence[Tick]) -> int:
        columns: list[list[Any]] = [[], [], [], [], [], [], []]
        for tick in ticks:
            for column, value in zip(columns, _astuple(tick), strict=True):
                column.append(value)
        async with conn.cursor() as cur:
            await cur.execute(
                sql.SQL(
                    "INSERT INTO {} SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], "
                    "%s::float8[], %s::float8[], %s::float8[], %s::float8[]) "
                    "ON CONFLICT (symbol, seq) DO NOTHING"
                ).format(self._table),
                columns,
            )
            return max(cur.rowcount, 0)

    async def _write_executemany(
        self, conn: psycopg.AsyncConnection[Any], ticks: Sequence[Tick]
    ) -> int:
        async with conn.cursor() as cur:
            await cur.executemany(
                sql.SQL(
                    "INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (symbol, seq) DO NOTHING"
                ).format(self._table),
                [_astuple(tick) for tick in ticks],
            )
            return max(cur.rowcount, 0)

    # ------------------------------------------------------------------ connections

    async def _fetch(
        self, query: sql.SQL | sql.Composed, params: Sequence[object] = ()
    ) -> list[tuple[Any, ...]]:
        try:
            async with self._connection() as conn:
                cur = await conn.execute(query, params)
                rows = await cur.fetchall()
                await conn.rollback()
                return rows
        except psycopg.Error as exc:
            if not self.read_only:
                raise
            raise self._translate(exc) from None

    def _translate(self, exc: psycopg.Error) -> StrategyLabError:
        """A read-only store's driver error as one line naming the URL (never its password)."""
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, psycopg.OperationalError):
            return StoreUnreachableError(f"{self._shown}: cannot reach the server: {first}")
        return StoreUnusableError(f"{self._shown}: {first}")

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if not self._opened:
            raise RuntimeError(f"{self._name}: store is not open (call open() first)")
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed or conn.broken:
                if conn is not None:
                    self._discard(conn)
                conn = await self._connect()  # bounded by connect_timeout
            # A deadline on the work: a blackholed link must not hang a writer. Cancelling the
            # task would make psycopg try a server-side cancel for up to 10 s; shutting the
            # socket down fails the pending operation at once, as a lost connection.
            severed: list[bool] = []
            watchdog = (
                asyncio.get_running_loop().call_later(self._timeout, _sever, conn, severed)
                if self._timeout is not None
                else None
            )
            try:
                yield conn
            except BaseException as exc:
                await self._release_failed(conn, exc)
                if severed and isinstance(exc, psycopg.Error):
                    raise psycopg.OperationalError(
                        f"{self._name}: no answer from the server within {self._timeout}s"
                    ) from exc
                raise
            finally:
                if watchdog is not None:
                    watchdog.cancel()
            self._idle.append(conn)

    async def _release_failed(self, conn: psycopg.AsyncConnection[Any], exc: BaseException) -> None:
        # A healthy connection whose transaction rolled back goes back to the pool. A broken one,
        # one we cannot roll back, or one interrupted mid-protocol (cancelled, timed out) is
        # dropped, and the next call opens a new one.
        if not isinstance(exc, asyncio.CancelledError) and await self._reset(conn):
            self._idle.append(conn)
            return
        self._discard(conn)
        with contextlib.suppress(psycopg.Error, OSError):
            await conn.close()

    async def _reset(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        if conn.broken or conn.closed:
            return False
        try:
            await conn.rollback()
        except (psycopg.Error, OSError):
            return False
        return conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(
            self.dsn, connect_timeout=max(1, round(self._connect_timeout))
        )
        if self.read_only:
            # Set before any query: the server refuses every write on this connection.
            try:
                await conn.execute("SET default_transaction_read_only = on")
                await conn.commit()
            except BaseException:
                await conn.close()
                raise
        if self._lost:
            self._lost -= 1
            self._reconnects += 1
        return conn

    def _discard(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._staged.discard(id(conn))
        self._lost += 1
