"""The status service's admin routes: token off (403), wrong (401), right (the action runs),
short tokens refused, failed authentications rate-limited per peer (429)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from service_support import LabSource, serving
from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import BreakerState
from strategylab.service import MAX_ADMIN_BODY, MIN_ADMIN_TOKEN, StatusService
from strategylab.testing import FakeClock

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

TOKEN = "s3cret-admin-token-for-tests"  # noqa: S105 - a test token
RIGHT = {"Authorization": f"Bearer {TOKEN}"}
ACTIONS: list[tuple[str, dict[str, str] | None]] = [
    ("/admin/kill", {"reason": "operator test"}),
    ("/admin/breakers/store", {"state": "open"}),
    ("/admin/features/live_chart/shed", None),
    ("/admin/features/live_chart/restore", None),
    ("/admin/reload", None),
]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(autojump_threshold=None)


@pytest.fixture
def source(clock: FakeClock, tmp_path: Path) -> LabSource:
    return LabSource(clock, tmp_path / "audit.log")


@pytest.fixture
async def service(source: LabSource, clock: FakeClock) -> AsyncIterator[StatusService]:
    async with serving(source, clock=clock, admin_token=TOKEN) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def _unchanged(source: LabSource) -> None:
    assert source.kills == []
    assert source.breakers.get("store").state is BreakerState.CLOSED
    assert source.degradation.is_active("live_chart")
    assert source.reloads == 0


@pytest.mark.parametrize(("path", "body"), ACTIONS)
async def test_without_a_configured_token_admin_is_403(
    source: LabSource,
    clock: FakeClock,
    http: aiohttp.ClientSession,
    path: str,
    body: dict[str, str] | None,
) -> None:
    """No admin token configured: every admin route is 403, even with a token, and nothing runs."""
    async with serving(source, clock=clock) as service:
        async with http.post(service.url + path, json=body, headers=RIGHT) as response:
            assert response.status == 403
            assert "no admin token" in (await response.json())["error"]
        _unchanged(source)


@pytest.mark.parametrize(("path", "body"), ACTIONS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
    ids=["missing", "wrong", "basic", "empty", "longer"],
)
async def test_a_missing_or_wrong_token_is_401_and_nothing_changes(
    service: StatusService,
    source: LabSource,
    http: aiohttp.ClientSession,
    *,
    path: str,
    body: dict[str, str] | None,
    headers: dict[str, str],
) -> None:
    """Without the right bearer token: 401 with a Bearer challenge, and the node is untouched."""
    async with http.post(service.url + path, json=body, headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    _unchanged(source)


async def test_the_right_token_forces_a_breaker_open(
    service: StatusService, source: LabSource, http: aiohttp.ClientSession
) -> None:
    """Forcing a breaker open really opens it; reset closes it again."""
    url = f"{service.url}/admin/breakers/store"
    async with http.post(url, json={"state": "open"}, headers=RIGHT) as response:
        assert response.status == 200
        body = await response.json()
    assert body == {
        "ok": True,
        "action": "breaker",
        "target": "store",
        "result": {"breaker": "store", "state": "forced_open"},
    }
    assert source.breakers.get("store").state is BreakerState.FORCED_OPEN
    async with http.post(url, json={"state": "reset"}, headers=RIGHT) as response:
        assert response.status == 200
    assert source.breakers.get("store").state is BreakerState.CLOSED


async def test_the_right_token_sheds_and_restores_a_feature(
    service: StatusService, source: LabSource, http: aiohttp.ClientSession
) -> None:
    """Shedding the chart really turns it off (and the service's chart); restore brings it back."""
    async with http.post(f"{service.url}/admin/features/live_chart/shed", headers=RIGHT) as r:
        assert r.status == 200
    assert not source.degradation.is_active("live_chart")
    assert service.chart_enabled is False
    async with http.post(f"{service.url}/admin/features/live_chart/restore", headers=RIGHT) as r:
        assert r.status == 200
    assert source.degradation.is_active("live_chart")
    assert service.chart_enabled is True


async def test_the_right_token_pulls_the_kill_switch_with_the_reason(
    service: StatusService, source: LabSource, http: aiohttp.ClientSession
) -> None:
    """Kill is accepted (202) and the node is called with the reason given."""
    async with http.post(
        f"{service.url}/admin/kill", json={"reason": "bad signatures"}, headers=RIGHT
    ) as response:
        assert response.status == 202
        assert (await response.json())["result"] == {"accepted": True, "reason": "bad signatures"}
    assert source.kills == ["bad signatures"]


async def test_the_right_token_reloads_the_config(
    service: StatusService, source: LabSource, http: aiohttp.ClientSession
) -> None:
    """Reload reaches the node."""
    async with http.post(f"{service.url}/admin/reload", headers=RIGHT) as response:
        assert response.status == 200
    assert source.reloads == 1


async def test_the_source_refusal_is_its_status(
    service: StatusService, source: LabSource, http: aiohttp.ClientSession
) -> None:
    """An unknown breaker or feature is 404 and an essential feature 409, with the message."""
    async with http.post(
        f"{service.url}/admin/breakers/nope", json={"state": "open"}, headers=RIGHT
    ) as response:
        assert response.status == 404
        assert "nope" in (await response.json())["error"]
    async with http.post(f"{service.url}/admin/features/nope/shed", headers=RIGHT) as response:
        assert response.status == 404
    async with http.post(f"{service.url}/admin/features/ingestion/shed", headers=RIGHT) as r:
        assert r.status == 409
    _unchanged(source)


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/admin/kill", b"", "body"),
        ("/admin/kill", b"{not json", "body"),
        ("/admin/kill", b"[1, 2]", "body"),
        ("/admin/kill", b"{}", "reason"),
        ("/admin/kill", b'{"reason": ""}', "reason"),
        ("/admin/kill", b'{"reason": "   "}', "reason"),
        ("/admin/kill", b'{"reason": 42}', "reason"),
        ("/admin/kill", b'{"reason": "' + b"x" * 501 + b'"}', "reason"),
        ("/admin/kill", b'{"reason": "a", "reason": "b"}', "body"),
        ("/admin/kill", b'{"reason": "two\\nlines"}', "reason"),
        ("/admin/kill", b'{"reason": "cr\\rhere"}', "reason"),
        ("/admin/kill", b'{"reason": "esc \\u001b[31m red"}', "reason"),
        ("/admin/kill", b'{"reason": "bell \\u0007"}', "reason"),
        ("/admin/kill", b'{"reason": "tab\\there"}', "reason"),
        ("/admin/kill", b'{"reason": "line\\u2028separator"}', "reason"),
        ("/admin/breakers/store", b"{}", "state"),
        ("/admin/breakers/store", b'{"state": "half_open"}', "state"),
    ],
)
async def test_a_bad_body_is_400_naming_the_field(
    service: StatusService,
    source: LabSource,
    http: aiohttp.ClientSession,
    *,
    path: str,
    raw: bytes,
    field: str,
) -> None:
    """Bad JSON or a bad field: 400 naming it, and nothing runs."""
    headers = {**RIGHT, "Content-Type": "application/json"}
    async with http.post(service.url + path, data=raw, headers=headers) as response:
        assert response.status == 400
        body = await response.json()
    assert body["field"] == field
    assert field in body["error"]
    _unchanged(source)


async def test_an_oversized_body_is_413(
    service: StatusService, source: LabSource, http: aiohttp.ClientSession
) -> None:
    """A body over the cap is refused before it is read, and nothing runs."""
    raw = b'{"reason": "' + b"x" * MAX_ADMIN_BODY + b'"}'
    headers = {**RIGHT, "Content-Type": "application/json"}
    async with http.post(f"{service.url}/admin/kill", data=raw, headers=headers) as response:
        assert response.status == 413
    _unchanged(source)


async def test_admin_routes_take_only_post(
    service: StatusService, http: aiohttp.ClientSession
) -> None:
    """GET on an admin route is 405."""
    async with http.get(f"{service.url}/admin/kill", headers=RIGHT) as response:
        assert response.status == 405


async def test_every_admin_call_is_logged_without_the_token(
    service: StatusService, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Accepted and refused calls each leave a log line; the token never appears."""
    with caplog.at_level(logging.INFO, logger="strategylab.service"):
        async with http.post(f"{service.url}/admin/reload", headers=RIGHT) as response:
            assert response.status == 200
        async with http.post(
            f"{service.url}/admin/reload", headers={"Authorization": "Bearer nope"}
        ) as response:
            assert response.status == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "strategylab.service"]
    assert any("admin reload" in line and "accepted" in line for line in lines)
    assert any("admin reload" in line and "refused: 401" in line for line in lines)
    assert all(TOKEN not in line for line in lines)


async def test_a_kill_reason_with_control_characters_names_the_cli_rule(
    service: StatusService, source: LabSource, http: aiohttp.ClientSession
) -> None:
    """A reason that is not one line of printable text gets the message ``strategylab kill``
    gives, and a printable non-ASCII reason is accepted."""
    url = f"{service.url}/admin/kill"
    async with http.post(url, json={"reason": "a\x1b]0;pwned\x07"}, headers=RIGHT) as response:
        assert response.status == 400
        body = await response.json()
    assert body == {
        "error": "reason: must be one line of printable text (no control characters)",
        "field": "reason",
    }
    assert source.kills == []
    async with http.post(url, json={"reason": "Börse geschlossen €"}, headers=RIGHT) as response:
        assert response.status == 202
    assert source.kills == ["Börse geschlossen €"]


@pytest.mark.parametrize("token", ["a", "ShortSecret-14", "x" * (MIN_ADMIN_TOKEN - 1)])
def test_a_short_admin_token_is_refused_at_construction(source: LabSource, token: str) -> None:
    """A token under 16 characters is a ConfigurationError naming admin_token, not the token."""
    with pytest.raises(ConfigurationError, match="admin_token") as caught:
        StatusService(source, admin_token=token)
    assert f"at least {MIN_ADMIN_TOKEN}" in str(caught.value)
    assert "<hidden>" in str(caught.value)
    assert repr(token) not in str(caught.value)
    StatusService(source, admin_token="x" * MIN_ADMIN_TOKEN)  # 16 is enough
    source.close()


async def _kill_status(http: aiohttp.ClientSession, url: str, token: str) -> aiohttp.ClientResponse:
    async with http.post(
        f"{url}/admin/kill", json={"reason": "drill"}, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        await response.read()
        return response


async def test_ten_failed_authentications_make_the_peer_wait(
    service: StatusService,
    source: LabSource,
    clock: FakeClock,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """10 failures within 60 s: 429 with Retry-After for the rest of the window, the right token
    included; another peer is not affected; once the window has passed the right token works."""
    with caplog.at_level(logging.DEBUG, logger="strategylab.service"):
        for i in range(10):
            clock.advance(1.0)
            assert (await _kill_status(http, service.url, f"guess-{i}")).status == 401
        limited = await _kill_status(http, service.url, "guess-10")
        assert limited.status == 429
        assert limited.headers["Retry-After"] == "51"  # the first failure was at t=1, now is 10
        right = await _kill_status(http, service.url, TOKEN)
        assert right.status == 429
        assert source.kills == []

        # Another address (127.0.0.2 is loopback too) is not limited.
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=10)
        ) as other:
            assert (await _kill_status(other, service.url, TOKEN)).status == 202
        assert source.kills == ["drill"]

        clock.advance(50.0)  # t=60: the first failure (t=1) is still in the window
        assert (await _kill_status(http, service.url, TOKEN)).headers["Retry-After"] == "1"
        clock.advance(1.0)  # t=61: it has left; 9 failures remain
        assert (await _kill_status(http, service.url, TOKEN)).status == 202
        assert (await _kill_status(http, service.url, "guess-11")).status == 401
        assert (await _kill_status(http, service.url, TOKEN)).status == 429
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "failed authentications" in r.getMessage()
    ]
    assert len(warnings) == 2  # once per time the limit was reached, not once per 429
    assert all("127.0.0.1" in line for line in warnings)
    assert not any(
        "refused: 429" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    )


def test_the_failure_limiter_tracks_a_bounded_number_of_peers() -> None:
    """Past max_peers, expired peers go first, then the peer whose last failure is oldest."""
    from strategylab.service._auth import FailureLimiter  # noqa: PLC0415 - an internal part

    clock = FakeClock(autojump_threshold=None)
    limiter = FailureLimiter(clock, limit=2, window=60.0, max_peers=3)
    for peer in ("a", "b", "c"):
        assert limiter.failed(peer) is False
    assert limiter.failed("a") is True  # "a" is limited and now the most recent
    assert limiter.retry_after("a") == 60.0
    limiter.failed("d")  # full: "b" (oldest last failure) is forgotten, "a" is kept
    assert limiter.failed("b") is False
    assert limiter.retry_after("a") == 60.0
    clock.advance(60.0)
    assert limiter.retry_after("a") is None
