"""Fencing tokens for the PostgreSQL tick store: the writes of a node that lost a lease are
refused by the store itself, not merely skipped by the node.

The lease table (``strategylab_leases`` by default, kept by
:class:`strategylab.distributed.SymbolLeases`) holds one row per ``(cluster, symbol)`` with the
current ``owner`` and its fencing ``token``; every acquisition increments the token. A fenced
write (:meth:`PostgresTickStore.write_fenced`) takes, in the same transaction as its ``COPY`` or
``INSERT``, ``SELECT ... FOR SHARE`` on the lease rows of the batch's symbols and compares them
with the writer's :class:`Fence`. A lease that moved (another owner, another token, no row)
raises :class:`FencedError` and the transaction, the whole batch, is rolled back. Because an
acquisition is an ``UPDATE`` of that row, which waits for the share lock, a takeover is ordered
after any write in flight: the new owner's resume point (the highest stored sequence, read after
its acquisition committed) already includes that write, and a fenced-out writer can never land a
row after it (the pattern of Kleppmann, "How to do distributed locking", 2016, with the token
checked by the storage rather than sent to it).

A lease that expired but was not yet taken (same owner, same token) still admits the write: no
one else can have written that symbol since.

A writer stalled in the middle of its ``COPY ... FROM STDIN`` (a ``SIGSTOP`` after the server
accepted the ``COPY``) is NOT bounded by ``statement_timeout``: PostgreSQL acts on a cancel only
when the client sends again, so its locks would stay while it is stopped. Every fenced
transaction therefore names its session (``application_name``, :func:`fence_session_name`), and
an acquirer terminates the fenced transactions of an owner whose lease expired once they are
older than their ``hold_timeout`` (:meth:`strategylab.distributed.SymbolLeases.acquire`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

import psycopg
from psycopg import sql

from strategylab.errors import StrategyLabError

__all__ = [
    "DEFAULT_LEASE_TABLE",
    "FENCE_SESSION_PREFIX",
    "Fence",
    "FencedError",
    "fence_session_name",
]

DEFAULT_LEASE_TABLE: Final = "strategylab_leases"
FENCE_SESSION_PREFIX: Final = "slfence-"


def fence_session_name(cluster: str, owner: str) -> str:
    """The ``application_name`` of ``owner``'s fenced write transactions in ``cluster``:
    ``slfence-`` and the first 20 hex digits of MD5 over ``cluster/owner`` (under the 63-byte
    limit; in SQL ``'slfence-' || left(md5(cluster || '/' || owner), 20)``)."""
    digest = hashlib.md5(f"{cluster}/{owner}".encode(), usedforsecurity=False).hexdigest()
    return f"{FENCE_SESSION_PREFIX}{digest[:20]}"


class FencedError(StrategyLabError):
    """A fenced write was refused: the lease of ``symbol`` moved since the writer got it.

    ``token`` is the token the writer wrote with (None: it holds no lease for the symbol),
    ``current`` the lease's token now (None: no lease row), ``owner`` its owner now (None:
    released). ``symbols`` names every fenced-out symbol of the batch (``symbol`` is the first);
    ``rows`` is how many ticks the rolled-back batch held: none of them was stored.
    """

    def __init__(
        self,
        symbol: str,
        token: int | None,
        current: int | None,
        *,
        owner: str | None = None,
        symbols: tuple[str, ...] = (),
        rows: int = 0,
    ) -> None:
        others = [s for s in symbols if s != symbol]
        more = f" (and {len(others)} more: {', '.join(others[:5])})" if others else ""
        held = "no lease" if token is None else f"token {token}"
        now = "no lease row" if current is None else f"token {current} owned by {owner or 'nobody'}"
        super().__init__(
            f"fenced out: symbol {symbol!r} written with {held}, the lease is now at {now}"
            f"{more}; the batch of {rows} ticks was rolled back"
        )
        self.symbol = symbol
        self.token = token
        self.current = current
        self.owner = owner
        self.symbols = symbols or (symbol,)
        self.rows = rows


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Fence:
    """Who writes, and with which fencing token per symbol.

    ``cluster`` and ``owner`` name the lease rows (``owner``: the member id the leases were
    acquired under), ``tokens`` maps each symbol the writer holds to its token. ``table`` and
    ``schema`` name the lease table. ``hold_timeout`` (seconds) bounds how long a fenced write
    may hold its share locks: the transaction's ``statement_timeout`` and
    ``idle_in_transaction_session_timeout``, so that a writer cut off mid-transaction (a
    partition, a ``SIGSTOP``) cannot hold a takeover back for longer than that. Keep it well
    under the lease's ``ttl`` (the leases use ``ttl / 2``; the default 1.0 s is half the default
    ``ttl`` of 2 s): an acquisition skips share-locked rows, so a paused writer's locks must go
    before its lease expires. A write cut short is rolled back whole (psycopg's
    ``QueryCanceled``, or the connection closed by the server) and the ingestor retries it.
    PostgreSQL applies ``statement_timeout`` per statement and the idle timeout between them, so
    a stalled writer holds the locks at most ``hold_timeout`` after it stalls.
    """

    cluster: str
    owner: str
    tokens: Mapping[str, int]
    table: str = DEFAULT_LEASE_TABLE
    schema: str | None = None
    hold_timeout: float = 1.0

    def __post_init__(self) -> None:
        for key in ("cluster", "owner", "table"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{key}={value!r}: must be a non-empty str")
        if not (math.isfinite(self.hold_timeout) and self.hold_timeout > 0):
            raise ValueError(f"hold_timeout={self.hold_timeout!r}: must be > 0 seconds")

    @property
    def identifier(self) -> sql.Identifier:
        """The lease table, schema-qualified when ``schema`` is set."""
        return sql.Identifier(*((self.schema,) if self.schema else ()), self.table)


async def check_fence(
    conn: psycopg.AsyncConnection[Any], fence: Fence, symbols: Iterable[str], rows: int
) -> None:
    """Inside the writer's transaction: bound how long it may hold locks, share-lock the lease
    rows of ``symbols`` (sorted: a fixed lock order) and raise :class:`FencedError` for any
    that ``fence`` does not hold (the caller's transaction then rolls back)."""
    wanted = sorted(set(symbols))
    millis = max(1, round(fence.hold_timeout * 1000))
    # Session settings for this transaction only (SET LOCAL); no parameters: one simple query
    # (the name is hex digits and a fixed prefix: nothing to quote).
    await conn.execute(
        f"SET LOCAL statement_timeout = {millis}; "
        f"SET LOCAL idle_in_transaction_session_timeout = {millis}; "
        f"SET LOCAL application_name = '{fence_session_name(fence.cluster, fence.owner)}'"
    )
    cur = await conn.execute(
        sql.SQL(
            "SELECT symbol, owner, token FROM {} WHERE cluster = %s AND symbol = ANY(%s) "
            "ORDER BY symbol FOR SHARE"
        ).format(fence.identifier),
        (fence.cluster, wanted),
    )
    found = {str(s): (o, int(t)) for s, o, t in await cur.fetchall()}
    tokens = fence.tokens
    fenced: list[tuple[str, int | None, int | None, str | None]] = []
    for symbol in wanted:
        mine = tokens.get(symbol)
        owner, current = found.get(symbol, (None, None))
        if mine is None or current != mine or owner != fence.owner:
            fenced.append((symbol, mine, current, owner))
    if fenced:
        symbol, mine, current, owner = fenced[0]
        raise FencedError(
            symbol,
            mine,
            current,
            owner=owner,
            symbols=tuple(f[0] for f in fenced),
            rows=rows,
        )
