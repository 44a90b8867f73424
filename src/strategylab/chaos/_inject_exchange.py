"""Exchange-side and security faults, driven over HTTP.

Exchange faults switch a fault on in the exchange simulator (``strategylab exchange``) through its
admin API, ``POST {url}/admin/faults`` with ``Authorization: Bearer <admin token>``, and heal by
clearing that kind, ``DELETE {url}/admin/faults?kind=<kind>``, then reading ``GET /admin/faults``
to see it gone. The exchange also ends a fault by itself after ``expiry`` seconds, so a lab that
dies without healing leaves nothing in force for long. The kinds:

- :class:`CorruptFrames` (``corrupt_frames``): payload bytes of a share of the feed's frames
  flipped, so the frame's CRC fails (corruption);
- :class:`InvalidTicks` (``invalid_ticks``): well-framed ticks with impossible values (corruption);
- :class:`BadSignatures` (``bad_signatures``): frames signed with the wrong key (security);
- :class:`ApiErrors` (``api_errors``): order-API requests answered ``status`` (429, 500, 502,
  503, 504) ``before`` processing them, or ``after`` (processed, then the error: an ambiguous
  outcome the client must reconcile).

Severity scales the share of frames or requests hit (``rate``): the medium figures are 5 % of
frames and 50 % of API requests, multiplied by :attr:`Severity.scale` and capped at 100 %.

:class:`UnauthorisedAdminCalls` is the other security fault: admin calls without a token or with
a wrong one, fired at a node's status service while the fault is on; it records the answers and
whether the node's admin-controlled state changed.

Errors: bad arguments raise :class:`~strategylab.errors.ConfigurationError` naming them; a refused
or unreachable admin API raises :class:`InjectorError` with the status and the answer's text.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal

import aiohttp

from strategylab import _validate
from strategylab.errors import ConfigurationError

from ._injector import Injector, InjectorError
from ._severity import Severity

__all__ = [
    "AdminCallsReport",
    "ApiErrors",
    "BadSignatures",
    "CorruptFrames",
    "ExchangeFault",
    "InvalidTicks",
    "UnauthorisedAdminCalls",
]

_API_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
_TEXT: Final = 300
"""Characters of an error answer quoted in an :class:`InjectorError`."""


def _base_url(key: str, url: object) -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigurationError(key, _validate.shown(url), "must be an http:// or https:// URL")
    return url.rstrip("/")


class ExchangeFault(Injector):
    """A fault of ``fault_kind`` switched on in the exchange at ``url`` (``http://host:port``).

    ``admin_token`` is the exchange's admin token (``None`` for an exchange started with
    ``--admin-open``). ``rate`` (0..1) overrides the severity's share; ``expiry`` (seconds) is
    how long the exchange keeps the fault if nobody heals it; ``timeout`` bounds each admin
    request (seconds). :attr:`answer` holds the fault as the exchange confirmed it.
    """

    kind: ClassVar[str] = "corruption"
    fault_kind: ClassVar[str] = ""
    medium_rate: ClassVar[float] = 0.05

    def __init__(
        self,
        url: str,
        admin_token: str | None,
        *,
        rate: float | None = None,
        severity: Severity = Severity.MEDIUM,
        name: str | None = None,
        expiry: float = 60.0,
        timeout: float = 5.0,
    ) -> None:
        if not isinstance(severity, Severity):
            raise ConfigurationError("severity", severity, "must be a chaos.Severity")
        super().__init__(name or f"{self.kind}.{self.fault_kind}", severity)
        self.url = _base_url("url", url)
        if admin_token is not None and (not isinstance(admin_token, str) or not admin_token):
            raise ConfigurationError("admin_token", "<hidden>", "must be a non-empty str or None")
        self._token = admin_token
        self.rate = (
            min(1.0, self.medium_rate * severity.scale)
            if rate is None
            else _validate.fraction("rate", rate)
        )
        self.expiry = _validate.number("expiry", expiry, minimum=0.001, maximum=86_400.0)
        self.timeout = _validate.seconds("timeout", timeout)
        self.answer: dict[str, Any] | None = None

    def body(self) -> dict[str, object]:
        """The ``POST /admin/faults`` body."""
        return {"kind": self.fault_kind, "duration": self.expiry, "rate": self.rate}

    def _session(self) -> aiohttp.ClientSession:
        headers = {} if self._token is None else {"Authorization": f"Bearer {self._token}"}
        return aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout)
        )

    async def _call(
        self, http: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
    ) -> object:
        url = f"{self.url}{path}"
        try:
            async with http.request(method, url, **kwargs) as response:
                text = await response.text()
                if response.status >= 300:
                    raise InjectorError(
                        f"{self.name}: {method} {url} answered {response.status}: {text[:_TEXT]}"
                    )
                return json.loads(text) if text else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise InjectorError(f"{self.name}: {method} {url} failed: {exc!r}") from exc

    async def active_faults(self) -> list[dict[str, Any]]:
        """The exchange's active faults (``GET /admin/faults``)."""
        async with self._session() as http:
            answer = await self._call(http, "GET", "/admin/faults")
        if not isinstance(answer, list):
            raise InjectorError(f"{self.name}: /admin/faults answered {answer!r}, not a list")
        return [f for f in answer if isinstance(f, dict)]

    async def _inject(self) -> None:
        async with self._session() as http:
            answer = await self._call(http, "POST", "/admin/faults", json=self.body())
        self.answer = answer if isinstance(answer, dict) else None

    async def _heal(self) -> None:
        async with self._session() as http:
            left = await self._call(http, "DELETE", f"/admin/faults?kind={self.fault_kind}")
        if isinstance(left, list) and any(
            isinstance(f, dict) and f.get("kind") == self.fault_kind for f in left
        ):
            raise InjectorError(f"{self.name}: the exchange still lists {self.fault_kind}")

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "exchange": self.url,
            "fault": self.body(),
        }


class CorruptFrames(ExchangeFault):
    """A share of the feed's frames with payload bytes flipped (CRC mismatch at the reader).

    Medium: 5 % of frames (low 2.5 %, critical 10 %)."""

    fault_kind = "corrupt_frames"


class InvalidTicks(ExchangeFault):
    """A share of the feed's frames carrying ticks with impossible values (well framed: the
    reader's validation, not its CRC, must catch them). Medium: 5 % of frames."""

    fault_kind = "invalid_ticks"


class BadSignatures(ExchangeFault):
    """A share of the feed's frames signed with the wrong key (a keyed reader must refuse them).
    Medium: 5 % of frames."""

    kind: ClassVar[str] = "security"
    fault_kind = "bad_signatures"


class ApiErrors(ExchangeFault):
    """Order-API requests answered ``status`` (503, 429, 500, 502 or 504, with
    ``Retry-After: 1``), ``phase="before"`` unprocessed or ``"after"`` processed first.

    Medium: 50 % of requests (low 25 %, high 75 %, critical 100 %).

    With ``count`` (int, 1..10,000) the fault is deterministic instead: the exchange strikes the
    order submissions (``POST /api/orders``) of exactly the next ``count`` orders to arrive
    (every submission of each, its client's retries included) and no other request; the rate
    is then 1 (a ``rate`` below 1 raises :class:`ConfigurationError`). Its answer's
    ``orders_struck`` (in :meth:`active_faults`) says how many orders it has chosen so far.
    """

    kind: ClassVar[str] = "api"
    fault_kind = "api_errors"
    medium_rate = 0.5

    def __init__(
        self,
        url: str,
        admin_token: str | None,
        *,
        status: int = 503,
        phase: Literal["before", "after"] = "before",
        rate: float | None = None,
        count: int | None = None,
        severity: Severity = Severity.MEDIUM,
        name: str | None = None,
        expiry: float = 60.0,
        timeout: float = 5.0,
    ) -> None:
        if isinstance(status, bool) or status not in _API_STATUSES:
            raise ConfigurationError("status", status, f"must be one of {sorted(_API_STATUSES)}")
        if phase not in ("before", "after"):
            raise ConfigurationError("phase", phase, "must be 'before' or 'after'")
        self.status = status
        self.phase = phase
        self.count = (
            None if count is None else _validate.integer("count", count, minimum=1, maximum=10_000)
        )
        if self.count is not None:
            if rate is not None and _validate.fraction("rate", rate) < 1.0:
                raise ConfigurationError("rate", rate, "must be 1 (or None) with a count")
            rate = 1.0
        super().__init__(
            url,
            admin_token,
            rate=rate,
            severity=severity,
            name=name or f"api.errors_{status}_{phase}",
            expiry=expiry,
            timeout=timeout,
        )

    def body(self) -> dict[str, object]:
        body = {**super().body(), "status": self.status, "phase": self.phase}
        if self.count is not None:
            body["count"] = self.count
        return body


# ---------------------------------------------------------------------------- security


_ADMIN_CALLS: Final = (
    ("/admin/kill", {"reason": "chaos lab: unauthorised call"}),
    ("/admin/breakers/{breaker}", {"state": "open"}),
    ("/admin/features/{feature}/shed", None),
    ("/admin/reload", None),
)
_CREDENTIALS: Final = (
    None,
    "Bearer wrong-token-from-the-chaos-lab",
    "Bearer ",
    "Basic Y2hhb3M6bGFi",
)
EXPECTED_REFUSALS: Final = frozenset({401, 403, 429})
"""The answers an unauthorised admin call may get (missing/wrong token, routes off, limited)."""


class AdminCallsReport:
    """What :class:`UnauthorisedAdminCalls` saw: calls fired, answers by status, the calls
    that were not refused (``accepted``: any answer outside 401/403/429, a connection error
    included, by ``"METHOD path: status"``), and the admin-controlled state that changed
    (``changed``: ``{field: [before, after]}``)."""

    __slots__ = ("accepted", "answers", "calls", "changed", "errors")

    def __init__(self) -> None:
        self.calls = 0
        self.answers: collections.Counter[int] = collections.Counter()
        self.accepted: list[str] = []
        self.errors = 0
        self.changed: dict[str, list[object]] = {}

    @property
    def held(self) -> bool:
        """True when every call was refused and nothing changed."""
        return self.calls > 0 and not self.accepted and not self.changed and not self.errors

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values."""
        return {
            "calls": self.calls,
            "answers": {str(k): v for k, v in sorted(self.answers.items())},
            "accepted": list(self.accepted),
            "errors": self.errors,
            "changed": dict(self.changed),
            "held": self.held,
        }


_GUARDED: Final = ("kill_switch", "breakers", "shed", "chart", "risk_state")
"""The parts of ``/status`` an admin call could change (what :class:`UnauthorisedAdminCalls`
compares before and after)."""


def _guarded(status: Mapping[str, Any]) -> dict[str, object]:
    breakers = status.get("breakers")
    degradation = status.get("degradation")
    chart = status.get("chart")
    return {
        "kill_switch": status.get("kill_switch"),
        "breakers": (
            {name: b.get("state") for name, b in sorted(breakers.items()) if isinstance(b, dict)}
            if isinstance(breakers, dict)
            else None
        ),
        "shed": degradation.get("shed") if isinstance(degradation, dict) else None,
        "chart": chart.get("enabled") if isinstance(chart, dict) else None,
        "risk_state": status.get("risk_state"),
    }


def _targets(status: Mapping[str, Any]) -> dict[str, str]:
    """A breaker and a feature the calls name (real ones, so a wrongly accepted call would
    really change something)."""
    breakers = status.get("breakers")
    degradation = status.get("degradation")
    features = degradation.get("features") if isinstance(degradation, dict) else None
    names: list[str] = []
    if isinstance(features, list):  # DegradationSnapshot.to_dict: a non-essential one first
        names = [
            str(f["name"])
            for f in sorted(
                (f for f in features if isinstance(f, dict) and f.get("name")),
                key=lambda f: (bool(f.get("essential")), str(f["name"])),
            )
        ]
    return {
        "breaker": min(breakers) if isinstance(breakers, dict) and breakers else "exchange-api",
        "feature": names[0] if names else "live_chart",
    }


class UnauthorisedAdminCalls(Injector):
    """Admin calls without a valid token, fired at a node's status service during the fault.

    ``status_url`` is the service's base URL (``http://127.0.0.1:PORT``). Inject reads
    ``/status``, then starts firing ``calls`` admin requests, one every ``interval`` seconds,
    cycling through ``POST /admin/kill``, ``/admin/breakers/{a real breaker}`` (open),
    ``/admin/features/{a real feature}/shed`` and ``/admin/reload``, and through four
    credentials (none, a wrong bearer token, an empty one, HTTP Basic). Heal stops firing,
    reads ``/status`` again and completes :attr:`report` (:class:`AdminCallsReport`): every
    answer, the calls NOT refused with 401/403/429, and the admin-controlled state that changed
    (kill switch, breaker states, shed features, chart, risk state).

    Medium: 20 calls, 50 ms apart; the count is multiplied by the severity's scale (low 10,
    critical 40). ``calls``/``interval`` override it.

    Note: a status service limits failed authentications per peer (10 within 60 s answers 429
    to every admin call from that address, the right token included): after this fault the
    lab's own admin calls from the same address wait out that window.
    """

    kind: ClassVar[str] = "security"

    def __init__(
        self,
        status_url: str,
        *,
        calls: int | None = None,
        interval: float = 0.05,
        severity: Severity = Severity.MEDIUM,
        name: str = "security.unauthorised_admin",
        timeout: float = 5.0,
    ) -> None:
        if not isinstance(severity, Severity):
            raise ConfigurationError("severity", severity, "must be a chaos.Severity")
        super().__init__(name, severity)
        self.status_url = _base_url("status_url", status_url)
        self.calls = (
            max(1, round(20 * severity.scale))
            if calls is None
            else _validate.integer("calls", calls, minimum=1, maximum=100_000)
        )
        self.interval = _validate.seconds("interval", interval, allow_zero=True)
        self.timeout = _validate.seconds("timeout", timeout)
        self.report = AdminCallsReport()
        self._before: dict[str, object] = {}
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    async def _status(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        url = f"{self.status_url}/status"
        try:
            async with http.get(url) as response:
                if response.status != 200:
                    text = (await response.text())[:_TEXT]
                    raise InjectorError(
                        f"{self.name}: GET {url} answered {response.status}: {text}"
                    )
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise InjectorError(f"{self.name}: GET {url} failed: {exc!r}") from exc
        if not isinstance(body, dict):
            raise InjectorError(f"{self.name}: GET {url} answered {body!r}, not an object")
        return body

    async def _inject(self) -> None:
        self.report = AdminCallsReport()
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            status = await self._status(http)
        except BaseException:
            await http.close()
            raise
        self._http = http
        self._before = _guarded(status)
        self._task = asyncio.create_task(self._fire(http, _targets(status)), name=self.name)

    async def _fire(self, http: aiohttp.ClientSession, targets: Mapping[str, str]) -> None:
        for index in range(self.calls):
            if index and self.interval:
                await asyncio.sleep(self.interval)  # the pace of the attack, not a wait
            path_template, body = _ADMIN_CALLS[index % len(_ADMIN_CALLS)]
            credential = _CREDENTIALS[(index // len(_ADMIN_CALLS)) % len(_CREDENTIALS)]
            path = path_template.format(**targets)
            headers = {} if credential is None else {"Authorization": credential}
            self.report.calls += 1
            try:
                async with http.post(
                    f"{self.status_url}{path}", json=body, headers=headers
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                self.report.errors += 1
                continue
            self.report.answers[status] += 1
            if status not in EXPECTED_REFUSALS:
                self.report.accepted.append(f"POST {path}: {status}")

    async def wait_fired(self) -> None:
        """Wait until every call was fired (bound it with ``asyncio.timeout``); returns at once
        when the fault is not on."""
        if self._task is not None:
            await asyncio.wait([self._task])

    async def _heal(self) -> None:
        task, http = self._task, self._http
        self._task = self._http = None
        assert task is not None  # noqa: S101 - set by a successful inject
        assert http is not None  # noqa: S101
        try:
            if not task.done():
                task.cancel()
            await asyncio.wait([task])  # our own cancellation still propagates
            after = _guarded(await self._status(http))
        finally:
            await http.close()
        self.report.changed = {
            key: [self._before.get(key), after.get(key)]
            for key in _GUARDED
            if self._before.get(key) != after.get(key)
        }
        if not task.cancelled() and (failure := task.exception()) is not None:
            raise InjectorError(f"{self.name}: firing the calls failed: {failure!r}") from failure

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "status_url": self.status_url,
            "calls": self.calls,
            "interval_s": self.interval,
            "report": self.report.to_dict(),
        }
