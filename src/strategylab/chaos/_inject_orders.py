"""Order-lifecycle race injectors (kind ``orders``): the exchange simulator executes as real
venues do, so that a trader's reconciliation is tested on partial fills, orders that rest and
fill later, and fills that race cancels.

Each injector switches one of the simulator's admin faults on (``POST /admin/faults`` with the
admin bearer token) and heals by clearing that kind (``DELETE /admin/faults?kind=...``). The
fault also carries a ``duration``: should the heal never reach the exchange, the fault still
expires by itself. Which orders are hit is drawn by the simulator from its seeded generator with
probability ``rate``, so a run is deterministic under the exchange's ``--seed``.

Severity scales ``rate``: 0.25, 0.5, 0.75, 1.0 of the orders (low, medium, high, critical).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

import aiohttp

from ._injector import Injector, InjectorError
from ._severity import Severity

__all__ = ["FillCancelRace", "OrderRaceInjector", "PartialFills", "RestingFills"]

_RATES: Final = {"low": 0.25, "medium": 0.5, "high": 0.75, "critical": 1.0}
DEFAULT_DURATION: Final = 300.0
"""Seconds a race stays on at the exchange if the heal never arrives (the heal clears it first)."""


class OrderRaceInjector(Injector):
    """One order-lifecycle race of the exchange simulator, switched through its admin API.

    ``exchange_url`` is the exchange's HTTP base (``http://HOST:PORT``); ``admin_token`` its
    admin bearer token (``None`` for an exchange started ``--admin-open``). ``rate`` (0..1, the
    share of orders hit; default by severity) and ``duration`` (seconds, 0.001..86400, a safety
    expiry) are sent as given. ``timeout`` bounds each admin request, in seconds.

    Raises :class:`ValueError` naming a bad ``exchange_url``, ``rate``, ``duration`` or
    ``timeout``. :meth:`inject` and :meth:`heal` raise :class:`InjectorError` naming the fault
    when the exchange cannot be reached or refuses (401/403: the token).
    """

    kind: ClassVar[str] = "orders"
    fault: ClassVar[str] = ""
    """The simulator's fault kind (``partial_fills``, ``resting_fills``, ``fill_cancel_race``)."""

    def __init__(
        self,
        exchange_url: str,
        admin_token: str | None,
        severity: Severity = Severity.MEDIUM,
        *,
        rate: float | None = None,
        duration: float = DEFAULT_DURATION,
        timeout: float = 5.0,
        name: str | None = None,
    ) -> None:
        super().__init__(name or f"orders.{self.fault}", severity)
        parts = urlsplit(exchange_url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(f"exchange_url {exchange_url!r} is not an http://HOST:PORT URL")
        if admin_token is not None and not admin_token:
            raise ValueError("admin_token must not be empty (None = an --admin-open exchange)")
        rate = _RATES[severity.value] if rate is None else rate
        if not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate {rate!r} is not a number within 0..1")
        if not math.isfinite(duration) or not 0.001 <= duration <= 86_400.0:
            raise ValueError(
                f"duration {duration!r} is not a number of seconds within 0.001..86400"
            )
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"timeout {timeout!r} is not a number of seconds > 0")
        self.exchange_url = exchange_url.rstrip("/")
        self.rate = float(rate)
        self.duration = float(duration)
        self._token = admin_token
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def _headers(self) -> dict[str, str]:
        return {} if self._token is None else {"Authorization": f"Bearer {self._token}"}

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One admin request; its JSON answer. :class:`InjectorError` on any failure."""
        url = f"{self.exchange_url}{path}"
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.request(method, url, json=body, headers=self._headers()) as response,
            ):
                answer = await response.json(content_type=None)
                if response.status >= 300:
                    raise InjectorError(
                        f"{self.name}: {method} {path} answered {response.status}: {answer!r}"
                    )
                return answer
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise InjectorError(f"{self.name}: {method} {url} failed: {exc!r}") from exc

    async def _inject(self) -> None:
        body = {"kind": self.fault, "rate": self.rate, "duration": self.duration}
        await self._request("POST", "/admin/faults", body)

    async def _heal(self) -> None:
        await self._request("DELETE", f"/admin/faults?kind={self.fault}")

    async def in_force(self) -> bool:
        """Whether the exchange reports this race switched on (``GET /admin/faults``)."""
        faults = await self._request("GET", "/admin/faults")
        return any(isinstance(f, dict) and f.get("kind") == self.fault for f in faults)

    async def races(self) -> dict[str, int]:
        """The exchange's race counters (``GET /api/status`` ``races``): ``partial_fills``,
        ``resting_fills``, ``cancel_too_late``, ``remainder_cancelled``."""
        status = await self._request("GET", "/api/status")
        races = status.get("races", {}) if isinstance(status, dict) else {}
        return {str(k): int(v) for k, v in races.items()}

    def describe(self) -> dict[str, Any]:
        """The report's view: name, kind, severity, the simulator fault, rate and duration."""
        return {
            **super().describe(),
            "fault": self.fault,
            "rate": self.rate,
            "duration": self.duration,
        }


class PartialFills(OrderRaceInjector):
    """Orders that execute fill in 2..4 parts, one now and one per later batch of ticks."""

    fault: ClassVar[str] = "partial_fills"


class RestingFills(OrderRaceInjector):
    """Limit orders rest even when marketable and fill in 2..4 parts as the price walks
    through them."""

    fault: ClassVar[str] = "resting_fills"


class FillCancelRace(OrderRaceInjector):
    """Cancels meet an execution in flight: answered too late (409, the fill stands), or the
    remainder cancelled after a partial execution."""

    fault: ClassVar[str] = "fill_cancel_race"
