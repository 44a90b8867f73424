"""The order client: the exchange's HTTP order API through timeout ▸ retry ▸ circuit breaker.

Errors::

    StrategyLabError
    └── OrderApiError                 the order API did not give the answer asked for
        ├── OrderRefusedError         4xx: the request itself was refused (definitive, not retried)
        ├── RateLimitedError          429; ``retry_after`` seconds, waited by the retry policy
        ├── ExchangeUnavailableError  5xx; for a POST the order may or may not exist (ambiguous)
        └── AmbiguousOrderError       submit gave up without learning whether the order exists

aiohttp's connection errors and timeouts are retried as they are and, when the retry gives up,
translated once (``raise AmbiguousOrderError(...) from exc``) by :meth:`OrderClient.submit`.

Idempotency is the exchange's: a ``client_order_id`` names an order for ever, so re-sending the
same id (every retry does) can never create a second order. An ambiguous outcome is resolved only
by asking (:meth:`OrderClient.lookup`: found, or 404 = never accepted), never by guessing; many at
once with :meth:`OrderClient.lookup_many` (one ``POST /api/orders/lookup`` per ``lookup_batch`` ids,
or, against an exchange without that endpoint, single lookups ``lookup_concurrency`` at a time).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, TypeVar

import aiohttp
import msgspec

from strategylab import _validate
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import (
    CallTimeoutError,
    CircuitOpenError,
    StrategyLabError,
)
from strategylab.fault_tolerance import (
    CircuitBreaker,
    ErrorContext,
    ErrorReporter,
    ErrorType,
    Pipeline,
    RetryPolicy,
    SharedBreakerState,
    Timeout,
    parse_retry_after,
)
from strategylab.market import (
    MAX_LOOKUP,
    ExchangeFill,
    ExchangeOrder,
    ExchangePosition,
    LookupResult,
)
from strategylab.strategy import OrderRequest, OrderType

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from strategylab.fault_tolerance import ErrorRecoveryManager

__all__ = [
    "AmbiguousOrderError",
    "ExchangeFill",
    "ExchangeOrder",
    "ExchangePosition",
    "ExchangeUnavailableError",
    "OrderApiError",
    "OrderClient",
    "OrderRefusedError",
    "RateLimitedError",
]

_log = logging.getLogger("strategylab.market.orders")
T = TypeVar("T")
_DEFAULT_RETRY_AFTER = 1.0
"""The wait after a 429 that names none (or none that can be read)."""


class OrderApiError(StrategyLabError):
    """The order API did not give the answer asked for; ``status`` is the HTTP status (0: none)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class OrderRefusedError(OrderApiError):
    """A 4xx answer: the request was refused as it stands; ``field`` names what was wrong."""

    def __init__(self, message: str, *, status: int, field: str | None) -> None:
        super().__init__(message, status=status)
        self.field = field


class RateLimitedError(OrderApiError):
    """A 429 answer; ``retry_after`` is the wait the exchange asked for, in seconds.

    :class:`~strategylab.fault_tolerance.RetryPolicy` reads it as a Retry-After hint and waits that
    long before the next attempt.
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, status=429)
        self.retry_after = retry_after


class ExchangeUnavailableError(OrderApiError):
    """A 5xx answer. After a POST the order may have been processed: the outcome is ambiguous."""


class AmbiguousOrderError(OrderApiError):
    """Submitting ``cid`` failed in a way that does not say whether the exchange has the order."""

    def __init__(self, cid: str, cause: BaseException) -> None:
        super().__init__(f"order {cid}: outcome unknown after {type(cause).__name__}: {cause}")
        self.cid = cid


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, OrderRefusedError | CircuitOpenError):
        return False
    return isinstance(
        exc, RateLimitedError | ExchangeUnavailableError | aiohttp.ClientError | TimeoutError
    )


def _retry_after(value: str | None, *, now: float, cap: float) -> float:
    """Seconds to wait for a 429's ``Retry-After`` (delay-seconds or HTTP-date), at most ``cap``."""
    seconds = None if value is None else parse_retry_after(value, now=now)
    if seconds is None:
        seconds = _DEFAULT_RETRY_AFTER
    return min(seconds, cap)


async def gather_all(coros: Iterable[Coroutine[object, object, T]]) -> list[T]:
    """Run ``coros`` concurrently; their results in order.

    The first failure cancels the others (awaited) and propagates as it is, not in an
    ``ExceptionGroup``, so callers catch the client's own errors.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class OrderClient:
    """An aiohttp client of the exchange's order API (a fault-tolerance ``Component``).

    Every call goes through ``Pipeline.of(total_timeout=Timeout(timeout), retry=retry,
    breaker=breaker)``; each attempt is also bounded by ``attempt_timeout`` (aiohttp's own
    timeout, inside the breaker, so the breaker counts an attempt that timed out). ``retry``
    retries 5xx, 429 (after waiting Retry-After on ``clock``), connection errors and attempt
    timeouts; 4xx is final. When a call
    finally fails, the error is reported to ``manager`` as NETWORK_TIMEOUT (a timeout) or
    EXTERNAL_API_FAILURE (anything else) under this component's ``name``; a call refused by the
    open breaker is not reported again (the failures that opened it were).

    Options (seconds unless said otherwise; a bad value raises
    :class:`~strategylab.errors.ConfigurationError` naming it): ``timeout`` bounds a whole call,
    backoff and Retry-After waits included; ``attempt_timeout`` one HTTP request;
    ``max_retry_after`` caps the wait a 429's ``Retry-After`` asks for (the exchange's value is
    honoured up to it; a wait longer than what remains of ``timeout`` ends the call at
    ``timeout``, never with an early retry); ``lookup_batch`` (count, 1..1000) is the most client
    ids per bulk lookup; ``lookup_concurrency`` (count, 1..64) the single lookups in flight at
    once when the exchange has no bulk endpoint (or ``bulk_lookup`` is False). ``shared`` (e.g.
    a :class:`strategylab.distributed.RedisBreakerBackend`) shares the default breaker's state,
    ``{name}.breaker``, with every process's breaker of that name (ignored with ``breaker``).
    :attr:`rate_limited_until` is the ``clock`` time before which the exchange asked not to be
    called again (its last 429).
    """

    def __init__(
        self,
        base_url: str,
        *,
        name: str = "order-api",
        timeout: float = 5.0,
        attempt_timeout: float = 1.0,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        shared: SharedBreakerState | None = None,
        manager: ErrorRecoveryManager | None = None,
        clock: Clock = SYSTEM_CLOCK,
        max_retry_after: float = 30.0,
        lookup_batch: int = 200,
        lookup_concurrency: int = 8,
        bulk_lookup: bool = True,
    ) -> None:
        _validate.seconds("timeout", timeout)
        _validate.seconds("attempt_timeout", attempt_timeout)
        self.max_retry_after = _validate.seconds("max_retry_after", max_retry_after)
        self.lookup_batch = _validate.integer(
            "lookup_batch", lookup_batch, minimum=1, maximum=MAX_LOOKUP
        )
        self.lookup_concurrency = _validate.integer(
            "lookup_concurrency", lookup_concurrency, minimum=1, maximum=64
        )
        self.rate_limited_until = 0.0
        self._bulk_lookup = bool(bulk_lookup)  # until the exchange says it has no such endpoint
        self.base_url = base_url.rstrip("/")
        self._name = name
        self._clock = clock
        # Reported in the caller, before the error reaches it; unfolded (the breaker already
        # keeps an outage's rejections from being reported, see _call).
        self._reporter = ErrorReporter(
            manager, component=name, quiet=0.0, recovered_quiet=0.0, clock=clock
        )
        self._attempt_timeout = attempt_timeout
        self.timeout = float(timeout)
        """Seconds one call may take in total, retries included: how long a request sent by a
        client like this one may still be on its way to the exchange."""
        self.retry = (
            retry
            if retry is not None
            else RetryPolicy(
                max_attempts=4,
                base_delay=0.05,
                max_delay=1.0,
                retry_on=_retryable,
                clock=clock,
                name=f"{name}.retry",
            )
        )
        self.breaker = (
            breaker
            if breaker is not None
            else CircuitBreaker(
                f"{name}.breaker",
                failure_threshold=10,
                recovery_timeout=1.0,
                clock=clock,
                ignore_on=(OrderRefusedError,),
                shared=shared,  # issue 14: a cluster's traders share it (RedisBreakerBackend)
            )
        )
        self._pipeline = Pipeline.of(
            total_timeout=Timeout(timeout, name=f"{name}.call", clock=clock),
            retry=self.retry,
            breaker=self.breaker,
        )
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0
        self.failures = 0
        self.reported = 0

    # ------------------------------------------------------------------ Component

    @property
    def name(self) -> str:
        """The component name."""
        return self._name

    async def start(self) -> None:
        """Open the HTTP session."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._attempt_timeout),
                connector=aiohttp.TCPConnector(limit=16, force_close=False),
            )

    async def stop(self) -> None:
        """Close the HTTP session."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def aclose(self) -> None:
        """Same as :meth:`stop`."""
        await self.stop()

    def rate_limited_for(self) -> float:
        """Seconds (on ``clock``) the exchange's last 429 still asks to wait; 0.0 when none."""
        return max(0.0, self.rate_limited_until - self._clock.monotonic())

    async def health(self) -> bool:
        """True when ``GET /api/status`` answers 200 right now (one attempt, no retry)."""
        try:
            await self._attempt("GET", "/api/status", None, None)
        except (OrderApiError, aiohttp.ClientError, TimeoutError):
            return False
        return True

    # ------------------------------------------------------------------ plumbing

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"{self._name}: not started (call start())")
        return self._session

    async def _attempt(
        self, method: str, path: str, body: dict[str, object] | None, decode: type[T] | None
    ) -> T | None:
        """One HTTP request; 404 → None; other non-2xx → an :class:`OrderApiError`."""
        self.requests += 1
        data = None if body is None else msgspec.json.encode(body)
        headers = {"Content-Type": "application/json"} if data is not None else None
        async with self._http().request(
            method, self.base_url + path, data=data, headers=headers
        ) as response:
            raw = await response.read()
            status = response.status
            if 200 <= status < 300:
                return None if decode is None else msgspec.json.decode(raw, type=decode)
            if status == 404:
                return None
            text = raw.decode(errors="replace")[:200]
            if status == 429:
                # The retry policy waits ``retry_after`` (its Retry-After hint) before the next
                # attempt, instead of its own short backoff; nothing is held while it waits.
                wait = _retry_after(
                    response.headers.get("Retry-After"),
                    now=self._clock.time(),
                    cap=self.max_retry_after,
                )
                self.rate_limited_until = max(
                    self.rate_limited_until, self._clock.monotonic() + wait
                )
                raise RateLimitedError(f"{method} {path}: 429 {text}", retry_after=wait)
            if status >= 500:
                raise ExchangeUnavailableError(f"{method} {path}: {status} {text}", status=status)
            field = None
            try:
                decoded = msgspec.json.decode(raw)
                if isinstance(decoded, dict) and isinstance(decoded.get("field"), str):
                    field = decoded["field"]
            except msgspec.DecodeError:
                pass
            raise OrderRefusedError(f"{method} {path}: {status} {text}", status=status, field=field)

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, object] | None,
        decode: type[T] | None,
    ) -> T | None:
        fn: Callable[..., Awaitable[T | None]] = self._attempt
        try:
            return await self._pipeline.acall(fn, method, path, body, decode)
        except OrderRefusedError:
            raise
        except CircuitOpenError:
            # Not a new failure of the exchange: the breaker already acts on the failures that
            # opened it. Reporting each rejection made one outage with a few dozen concurrent
            # calls look like dozens of errors and escalate to an emergency shutdown.
            self.failures += 1
            raise
        except Exception as exc:
            self.failures += 1
            await self._report(exc)
            raise

    async def _report(self, exc: Exception) -> None:
        if self._reporter.manager is None:
            return
        timeout = isinstance(exc, TimeoutError | CallTimeoutError)
        error_type = ErrorType.NETWORK_TIMEOUT if timeout else ErrorType.EXTERNAL_API_FAILURE
        context = ErrorContext.from_exception(
            exc, component=self._name, error_type=error_type, capture_state=False, clock=self._clock
        )
        self.reported += 1
        await self._reporter.areport(context)

    # ------------------------------------------------------------------ API

    async def submit(self, cid: str, request: OrderRequest) -> ExchangeOrder:
        """Place ``request`` as ``cid``; the exchange's order (new, or the existing one for cid).

        :class:`OrderRefusedError` when the exchange refuses it (definitive);
        :class:`AmbiguousOrderError` when the outcome is unknown: resolve with :meth:`lookup`.
        """
        body: dict[str, object] = {
            "client_order_id": cid,
            "symbol": request.symbol,
            "side": request.side.value,
            "qty": request.qty,
            "type": request.type.value,
        }
        if request.type is OrderType.LIMIT:
            body["price"] = request.price
        try:
            order = await self._call("POST", "/api/orders", body, ExchangeOrder)
        except OrderRefusedError:
            raise
        except (OrderApiError, aiohttp.ClientError, TimeoutError, CircuitOpenError) as exc:
            raise AmbiguousOrderError(cid, exc) from exc
        if order is None:
            raise OrderRefusedError("POST /api/orders: 404", status=404, field=None)
        return order

    async def lookup(self, cid: str) -> ExchangeOrder | None:
        """The exchange's order for ``cid``, or None when the exchange never accepted it."""
        return await self._call("GET", f"/api/orders/by-client-id/{cid}", None, ExchangeOrder)

    async def lookup_many(self, cids: Iterable[str]) -> dict[str, ExchangeOrder | None]:
        """The exchange's order for each of ``cids`` (None: never accepted), in bulk.

        One ``POST /api/orders/lookup`` per ``lookup_batch`` ids. Against an exchange without that
        endpoint (404 or 405) it falls back, for good, to :meth:`lookup` with at most
        ``lookup_concurrency`` requests at once. Raises what :meth:`lookup` raises; ids answered
        before a failure are lost with it (ask again).
        """
        wanted = list(dict.fromkeys(cids))
        result: dict[str, ExchangeOrder | None] = {}
        for start in range(0, len(wanted), self.lookup_batch):
            chunk = wanted[start : start + self.lookup_batch]
            if self._bulk_lookup:
                try:
                    answer = await self._call(
                        "POST", "/api/orders/lookup", {"client_order_ids": chunk}, LookupResult
                    )
                except OrderRefusedError as exc:
                    if exc.status != 405:  # Method Not Allowed: an exchange without the route
                        raise
                    answer = None
                if answer is not None:
                    result.update(dict.fromkeys(answer.unknown))
                    result.update((o.client_order_id, o) for o in answer.orders)
                    continue
                _log.warning("%s: no bulk lookup endpoint; single lookups from now on", self._name)
                self._bulk_lookup = False
            result.update(await self._lookup_each(chunk))
        return result

    async def _lookup_each(self, cids: list[str]) -> dict[str, ExchangeOrder | None]:
        limit = asyncio.Semaphore(self.lookup_concurrency)

        async def one(cid: str) -> tuple[str, ExchangeOrder | None]:
            async with limit:
                return cid, await self.lookup(cid)

        return dict(await gather_all([one(cid) for cid in cids]))

    async def get(self, order_id: str) -> ExchangeOrder | None:
        """The order with exchange id ``order_id`` (None if unknown)."""
        return await self._call("GET", f"/api/orders/{order_id}", None, ExchangeOrder)

    async def cancel(self, order_id: str) -> ExchangeOrder | None:
        """Cancel an open order; returns its final state (also when it was no longer open)."""
        try:
            return await self._call("DELETE", f"/api/orders/{order_id}", None, ExchangeOrder)
        except OrderRefusedError as exc:
            if exc.status == 409:
                return await self.get(order_id)
            raise

    async def orders(self, status: str | None = None) -> list[ExchangeOrder]:
        """Every order at the exchange (or those with ``status``)."""
        path = "/api/orders" if status is None else f"/api/orders?status={status}"
        return await self._call("GET", path, None, list[ExchangeOrder]) or []

    async def fills(self) -> list[ExchangeFill]:
        """Every fill at the exchange, oldest first."""
        return await self._call("GET", "/api/fills", None, list[ExchangeFill]) or []

    async def positions(self) -> list[ExchangePosition]:
        """The exchange's net positions."""
        return await self._call("GET", "/api/positions", None, list[ExchangePosition]) or []

    async def last_seqs(self) -> dict[str, int]:
        """The exchange's last emitted sequence per symbol (``GET /api/status``)."""
        status = await self._call("GET", "/api/status", None, dict[str, object]) or {}
        last = status.get("last_seq")
        if not isinstance(last, dict):
            return {}
        return {str(k): int(v) for k, v in last.items() if isinstance(v, int)}
