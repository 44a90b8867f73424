"""Category 8's order-lifecycle races: the venue races while the pipeline's trader trades, the
trader is SIGKILLed in the window, and its restart must reconcile against the racing venue.

:class:`OrderRaces` switches the exchange simulator's three races on at once
(:class:`~strategylab.chaos.PartialFills`, :class:`~strategylab.chaos.RestingFills`,
:class:`~strategylab.chaos.FillCancelRace`), then, once the races have struck the trader's orders
(or 40 % of the window passed), SIGKILLs the node's trader child; the node's supervisor restarts
it and the new process reconciles its book with the exchange while the races are still on. Heal
waits (at most 5 s) until the node reports the restarted trader trading, then clears the three
races and waits for the killed trader's exit.

:func:`read_book` reads the trader's book (its SQLite file, read-only) and :func:`read_exchange`
the exchange's own orders, fills and positions (its HTTP API directly, never through the lab's
proxy); :func:`compare` sets one against the other (:class:`Agreement`). :class:`BookAgrees` is
the recovery probe built on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final

import aiohttp

from strategylab._files import sqlite_uri
from strategylab.chaos._harness import Pipeline, PipelineError
from strategylab.chaos._inject_orders import (
    FillCancelRace,
    OrderRaceInjector,
    PartialFills,
    RestingFills,
)
from strategylab.chaos._inject_process import KillProcess
from strategylab.chaos._injector import Injector, InjectorError
from strategylab.chaos._severity import Severity

__all__ = [
    "BOOK_LAG",
    "Agreement",
    "BookAgrees",
    "BookView",
    "ExchangeView",
    "OrderRaces",
    "compare",
    "orders_between",
    "read_book",
    "read_exchange",
    "settled_agreement",
    "trader_started_with",
]

BOOK_LAG: Final = 1.0
"""Seconds an exchange fill may be missing from the book before that counts as lost (the
trader polls fills every 0.1 s; a restarted trader first reconciles)."""
_KILL_SHARE: Final = 0.4
"""The trader is killed at the latest this share of the window after the races went on."""
_STRUCK_BEFORE_KILL: Final = 2
"""Race strikes (split orders) wanted before the kill, so the killed trader leaves some behind."""
_RESTART_WAIT: Final = 5.0
"""Seconds the heal keeps the races on, at most, for the restarted trader to reconcile and
trade (so that its reconciliation meets the racing venue)."""
_RACE_EXPIRY: Final = 60.0
"""Seconds the races stay on at the exchange should the heal never arrive."""
_EPS: Final = 1e-6


class OrderRaces(Injector):
    """All three order-lifecycle races on at the pipeline's exchange, and the trader SIGKILLed
    once in the window (see the module docstring).

    ``window`` is the hold the scenario will use (seconds, > 0): the kill comes once
    ``_STRUCK_BEFORE_KILL`` race strikes were counted since the inject, or ``0.4 * window`` after
    it, whichever is first. Raises :class:`ValueError` for a ``window`` that is not > 0.
    :meth:`inject` raises :class:`InjectorError` when the exchange refuses a race or no trader
    runs. Figures after the heal: :attr:`races_before`/:attr:`races_after` (the exchange's race
    counters), :attr:`killed_pid`, :attr:`restarted_pid`, :attr:`struck_at_kill`,
    :attr:`wall_inject`/:attr:`wall_heal` (wall-clock seconds, to compare with the exchange's
    order times).
    """

    kind: ClassVar[str] = "orders"

    def __init__(
        self,
        pipeline: Pipeline,
        severity: Severity = Severity.MEDIUM,
        *,
        window: float,
        name: str = "orders.races",
    ) -> None:
        if not window > 0:
            raise ValueError(f"window={window!r}: must be > 0 (seconds)")
        super().__init__(name, severity)
        self.pipeline = pipeline
        self.window = window
        token = pipeline.admin_token or None
        self.races: tuple[OrderRaceInjector, ...] = tuple(
            cls(pipeline.exchange_url, token, severity, duration=_RACE_EXPIRY)
            for cls in (PartialFills, RestingFills, FillCancelRace)
        )
        self._trader: int | None = None
        self._kill = KillProcess(lambda: self._trader, severity=severity, name=f"{name}.kill")
        self._killer: asyncio.Task[None] | None = None
        self.races_before: dict[str, int] = {}
        self.races_after: dict[str, int] = {}
        self.struck_at_kill: int | None = None
        self.killed_pid: int | None = None
        self.kill_error: str | None = None
        self.restarted_pid: int | None = None
        """The restarted trader, trading before the races were cleared (None if it was not)."""
        self.wall_inject = 0.0
        self.wall_heal = 0.0

    def capability(self) -> str | None:
        return self._kill.capability()

    async def _inject(self) -> None:
        self._trader = await self.pipeline.trader_pid()
        if self._trader is None:
            raise InjectorError(f"{self.name}: the node runs no trader to race against")
        self.races_before = await self.races[0].races()
        self.wall_inject = time.time()
        done: list[OrderRaceInjector] = []
        try:
            for race in self.races:
                await race.inject()
                done.append(race)
        except BaseException:
            for race in reversed(done):
                with contextlib.suppress(InjectorError):
                    await race.heal()
            raise
        self._killer = asyncio.get_running_loop().create_task(
            self._kill_when_struck(), name=f"{self.name}-kill"
        )

    async def _kill_when_struck(self) -> None:
        """Kill the trader once the races struck its orders (or the kill's deadline passed)."""
        deadline = time.monotonic() + _KILL_SHARE * self.window
        struck = 0
        while time.monotonic() < deadline:
            with contextlib.suppress(InjectorError):
                struck = _struck(self.races_before, await self.races[0].races())
            if struck >= _STRUCK_BEFORE_KILL:
                break
            # Another process's counters: polling the exchange is the only way to see them.
            await asyncio.sleep(0.05)
        self.struck_at_kill = struck
        await self._kill.inject()
        self.killed_pid = self._kill.pid

    async def _heal(self) -> None:
        failures: list[str] = []
        killer = self._killer
        if killer is not None:
            try:
                await killer
            except Exception as exc:  # recorded: the heal still clears the races
                self.kill_error = f"{type(exc).__name__}: {exc}"
                failures.append(f"kill: {self.kill_error}")
        if self.killed_pid is not None:
            self.restarted_pid = await self._restarted_trading()
        for race in self.races:
            try:
                await race.heal()
            except InjectorError as exc:
                failures.append(str(exc))
        try:
            await self._kill.heal()  # waits for the killed trader's exit
        except InjectorError as exc:
            failures.append(str(exc))
        self.wall_heal = time.time()
        with contextlib.suppress(InjectorError):
            self.races_after = await self.races[0].races()
        if failures:
            raise InjectorError(f"{self.name}: heal: {'; '.join(failures)}")

    async def _restarted_trading(self) -> int | None:
        """Keep the races on until the restarted trader reconciled and trades (at most
        :data:`_RESTART_WAIT` seconds): its pid, or None if it did not in time."""
        deadline = time.monotonic() + _RESTART_WAIT
        while True:
            with contextlib.suppress(PipelineError):
                panel = (await self.pipeline.status()).get("extra", {}).get("trader", {})
                pid = panel.get("pid") if isinstance(panel, dict) else None
                if isinstance(pid, int) and pid != self.killed_pid and panel.get("trading"):
                    return pid
            if time.monotonic() >= deadline:
                return None
            # The node's view of its trader: its /status is the only place it shows.
            await asyncio.sleep(0.05)

    @property
    def struck(self) -> dict[str, int]:
        """The rise of each of the exchange's race counters over the fault."""
        return {k: v - self.races_before.get(k, 0) for k, v in self.races_after.items()}

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "races": [race.fault for race in self.races],
            "rate": self.races[0].rate,
            "window_s": self.window,
            "killed_pid": self.killed_pid,
            "struck_at_kill": self.struck_at_kill,
        }


def _struck(before: dict[str, int], now: dict[str, int]) -> int:
    return sum(max(0, v - before.get(k, 0)) for k, v in now.items())


# ---------------------------------------------------------------------- the book and the exchange


@dataclass(frozen=True, slots=True)
class BookView:
    """The trader's book as its SQLite file holds it (read-only).

    ``fills``: fill id -> (client order id, symbol, signed qty); ``positions``: symbol -> the
    book's position (summed over strategies); ``orders``: client order id -> (status,
    filled_qty); ``prefix``: the book's client-order-id prefix (``ENGINE_ID-``); ``wall``: when
    it was read (wall-clock seconds).
    """

    prefix: str
    fills: dict[str, tuple[str, str, float]]
    positions: dict[str, float]
    orders: dict[str, tuple[str, float]]
    wall: float


@dataclass(frozen=True, slots=True)
class ExchangeView:
    """The exchange's own account as its HTTP API answers (``/api/fills``, ``/api/orders``,
    ``/api/positions``), read directly: fill id -> (client order id, symbol, signed qty, ts in
    ns); order client id -> (status, filled_qty); symbol -> position qty."""

    fills: dict[str, tuple[str, str, float, int]]
    orders: dict[str, tuple[str, float]]
    positions: dict[str, float]


def read_book(path: Path) -> BookView:
    """Read the book at ``path`` read-only (``mode=ro``: the trader may be writing it). Raises
    :class:`sqlite3.Error` when it cannot be read and :class:`ValueError` when it holds no
    engine id (not a trader's book)."""
    wall = time.time()
    with contextlib.closing(sqlite3.connect(sqlite_uri(path, "ro"), uri=True, timeout=1.0)) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'engine_id'").fetchone()
        if row is None:
            raise ValueError(f"{path}: not a trader's book (no engine id)")
        db.execute("BEGIN")  # one snapshot for the three reads
        fills = {
            str(fid): (str(cid), str(sym), float(qty) * (1.0 if side == "buy" else -1.0))
            for fid, cid, sym, side, qty in db.execute(
                "SELECT fill_id, cid, symbol, side, qty FROM fills"
            )
        }
        positions: dict[str, float] = {}
        for sym, qty in db.execute("SELECT symbol, qty FROM positions"):
            positions[str(sym)] = positions.get(str(sym), 0.0) + float(qty)
        orders = {
            str(cid): (str(status), float(filled))
            for cid, status, filled in db.execute("SELECT cid, status, filled_qty FROM orders")
        }
        db.execute("COMMIT")
    return BookView(f"{row[0]}-", fills, positions, orders, wall)


async def read_exchange(pipeline: Pipeline) -> ExchangeView:
    """The exchange's fills, orders and positions (read directly, not through the proxy).
    Raises :class:`PipelineError` when a route does not answer 200."""

    async def get(route: str) -> list[dict[str, Any]]:
        try:
            async with pipeline.http.get(f"{pipeline.exchange_url}{route}") as response:
                if response.status != 200:
                    raise PipelineError(f"exchange {route} answered {response.status}")
                data = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PipelineError(f"exchange {route}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(data, list):
            raise PipelineError(f"exchange {route}: not a JSON list")
        return [d for d in data if isinstance(d, dict)]

    # Positions first, then fills, then orders: a fill landing in between shows as a fill the
    # positions do not hold yet, which :func:`compare` treats as "the exchange moved".
    positions = {str(p["symbol"]): float(p["qty"]) for p in await get("/api/positions")}
    fills = {
        str(f["id"]): (
            str(f["client_order_id"]),
            str(f["symbol"]),
            float(f["qty"]) * (1.0 if f["side"] == "buy" else -1.0),
            int(f["ts"]),
        )
        for f in await get("/api/fills")
    }
    orders = {
        str(o["client_order_id"]): (str(o["status"]), float(o["filled_qty"]))
        for o in await get("/api/orders")
    }
    return ExchangeView(fills, orders, positions)


@dataclass(slots=True)
class Agreement:
    """How the book compares with the exchange (:func:`compare`).

    ``unexpected``: fills in the book the exchange never made; ``missing``: the trader's
    exchange fills older than :data:`BOOK_LAG` the book lacks; ``double``: per symbol, where the
    book's position differs from the exchange's own quantities of the fills the book holds (a
    fill counted twice or at a wrong size); ``orders``: orders final at both ends whose filled
    quantity differs (an order with a fill younger than :data:`BOOK_LAG` still to be booked is
    not compared yet: the trader books fills by polling, after the order's answer).
    ``exact`` when the exchange did not move during the read and no fill is missing: then
    ``position_diff`` is, per symbol that differs, the book's position minus ``/api/positions``
    less the quantities of the trader's fills younger than :data:`BOOK_LAG` the book has not
    booked yet (``counts["unbooked"]`` of them). A trader that keeps trading is never quiet long
    enough for its book to hold every fill at the moment it is read; the venue is, for the few
    milliseconds of a read.
    """

    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    double: dict[str, float] = field(default_factory=dict)
    orders: list[str] = field(default_factory=list)
    exact: bool = False
    position_diff: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing unexpected, missing, double-counted or disagreeing."""
        return not (self.unexpected or self.missing or self.double or self.orders) and (
            not self.exact or not self.position_diff
        )

    def detail(self) -> str:
        book, theirs = self.counts.get("book_fills", 0), self.counts.get("exchange_fills", 0)
        parts = [f"book {book} fills, exchange {theirs} of the trader's"]
        if self.counts.get("unbooked"):
            parts.append(f"{self.counts['unbooked']} younger than {BOOK_LAG:g} s not booked yet")
        if self.exact:
            parts.append(f"positions differ by {self.position_diff}" if self.position_diff
                         else "positions equal")  # fmt: skip
        for label, items in (("unexpected", self.unexpected), ("missing", self.missing),
                             ("orders differ", self.orders)):  # fmt: skip
            if items:
                parts.append(f"{len(items)} {label}: {items[:3]}")
        if self.double:
            parts.append(f"book position off its fills' exchange quantities: {self.double}")
        return "; ".join(parts)


def compare(before: ExchangeView, book: BookView, after: ExchangeView) -> Agreement:
    """Set ``book`` (read between ``before`` and ``after``) against the exchange; see
    :class:`Agreement`."""
    mine = {k: v for k, v in after.fills.items() if v[0].startswith(book.prefix)}
    agreement = Agreement(counts={"book_fills": len(book.fills), "exchange_fills": len(mine)})
    agreement.unexpected = sorted(set(book.fills) - set(mine))
    cutoff = int((book.wall - BOOK_LAG) * 1e9)
    agreement.missing = sorted(
        k for k, v in before.fills.items()
        if v[0].startswith(book.prefix) and v[3] < cutoff and k not in book.fills
    )  # fmt: skip
    unbooked = {k: v for k, v in mine.items() if k not in book.fills}
    agreement.counts["unbooked"] = len(unbooked)
    by_exchange: dict[str, float] = {}
    for fid in book.fills:
        if fid in mine:
            _cid, sym, qty, _ts = mine[fid]
            by_exchange[sym] = by_exchange.get(sym, 0.0) + qty
    for sym in set(book.positions) | set(by_exchange):
        diff = book.positions.get(sym, 0.0) - by_exchange.get(sym, 0.0)
        if abs(diff) > _EPS:
            agreement.double[sym] = round(diff, 9)
    young = {v[0] for v in unbooked.values() if v[3] >= cutoff}
    agreement.orders = _orders_differ(book, after, young)
    still = before.fills.keys() == after.fills.keys() and before.positions == after.positions
    agreement.exact = still and not agreement.missing
    if agreement.exact:
        # The account is the trader's alone in the lab; another book's fills would show here.
        in_flight: dict[str, float] = {}
        for _cid, sym, qty, _ts in unbooked.values():
            in_flight[sym] = in_flight.get(sym, 0.0) + qty
        for sym in set(book.positions) | set(after.positions) | set(in_flight):
            booked = after.positions.get(sym, 0.0) - in_flight.get(sym, 0.0)
            diff = book.positions.get(sym, 0.0) - booked
            if abs(diff) > _EPS:
                agreement.position_diff[sym] = round(diff, 9)
    return agreement


def _orders_differ(book: BookView, exchange: ExchangeView, booking: set[str]) -> list[str]:
    """Orders final in both the book and the exchange whose status or filled quantity differ
    (orders in ``booking``, with fills the book has still to book, are not compared)."""
    final = {"filled", "cancelled", "rejected"}
    differ = []
    for cid, (status, filled) in book.orders.items():
        theirs = exchange.orders.get(cid)
        if (
            status in final
            and cid not in booking
            and theirs is not None
            and theirs[0] in final
            and (status != theirs[0] or abs(filled - theirs[1]) > _EPS)
        ):
            differ.append(f"{cid}: book {status} {filled}, exchange {theirs}")
    return differ


async def _snapshot(pipeline: Pipeline, book: Path) -> Agreement:
    before = await read_exchange(pipeline)
    view = await asyncio.to_thread(read_book, book)
    after = await read_exchange(pipeline)
    return compare(before, view, after)


class BookAgrees:
    """A probe: the trader's book agrees with the exchange (:func:`compare`: nothing unexpected,
    no old fill missing, nothing double-counted; positions equal when the read was exact).
    :attr:`last` is the latest comparison."""

    def __init__(self, pipeline: Pipeline, book: Path) -> None:
        self.pipeline = pipeline
        self.book = book
        self.last: Agreement | None = None

    async def __call__(self) -> tuple[bool, str]:
        try:
            self.last = await _snapshot(self.pipeline, self.book)
        except (PipelineError, sqlite3.Error, ValueError) as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return self.last.ok, self.last.detail()


async def settled_agreement(
    pipeline: Pipeline, book: Path, within: float, *, clock: Callable[[], float] = time.monotonic
) -> tuple[Agreement | None, int]:
    """Compare again and again (at most ``within`` seconds) until one comparison is exact (the
    exchange still during the read and no fill missing from the book past :data:`BOOK_LAG`), so
    positions can be set side by side; that comparison (or the last one, or ``None`` if none
    could be read) and the number of tries. The trader keeps trading: this waits for the venue
    to be still for the few milliseconds of one read."""
    deadline = clock() + within
    last: Agreement | None = None
    tries = 0
    while True:
        tries += 1
        with contextlib.suppress(PipelineError, sqlite3.Error, ValueError):
            last = await _snapshot(pipeline, book)
            if last.exact:
                return last, tries
        if clock() >= deadline:
            return last, tries
        await asyncio.sleep(0.02)  # between two of the venue's fills


async def orders_between(pipeline: Pipeline, book: Path, start: float, end: float) -> int:
    """How many of the book's orders (its client-id prefix) the exchange created between the
    wall-clock seconds ``start`` and ``end`` (its ``/api/orders``, read directly). Raises
    :class:`PipelineError` when the exchange does not answer, and what :func:`read_book`
    raises."""
    prefix = (await asyncio.to_thread(read_book, book)).prefix
    try:
        async with pipeline.http.get(f"{pipeline.exchange_url}/api/orders") as response:
            if response.status != 200:
                raise PipelineError(f"exchange /api/orders answered {response.status}")
            orders = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise PipelineError(f"exchange /api/orders: {type(exc).__name__}: {exc}") from exc
    low, high = int(start * 1e9), int(end * 1e9)
    return sum(
        1
        for o in orders if isinstance(o, dict)
        and str(o.get("client_order_id", "")).startswith(prefix)
        and low <= int(o.get("created_ns", 0)) <= high
    )  # fmt: skip


async def trader_started_with(pipeline: Pipeline) -> list[str]:
    """The events the node's running trader printed before it traded (``reconciled``,
    ``resumed``, ``trading``: the node's ``/status`` trader panel); empty when unknown."""
    try:
        panel = (await pipeline.status()).get("extra", {}).get("trader", {})
    except PipelineError:
        return []
    events = panel.get("started_with") if isinstance(panel, dict) else None
    return [str(e) for e in events] if isinstance(events, list) else []
