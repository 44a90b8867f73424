"""``strategylab status`` and ``strategylab kill`` against a real status service.

The service is :class:`strategylab.service.StatusService` on a real socket (port 0) in a thread
of this process, over a small :class:`StatusSource` built from real library components (an
:class:`ErrorRecoveryManager` and a :class:`CircuitBreakerRegistry`); the commands run as real
``python -m strategylab`` processes. Answers of the wrong shape come from a real aiohttp server
(:class:`WrongShapes`), which also serves plain HTTP to the ``https://`` URL of the TLS tests.
"""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from rich.console import Console

from strategylab._ops_cli import kill_shape_error, render_status, status_shape_error
from strategylab.fault_tolerance import (
    CircuitBreakerRegistry,
    ErrorRecoveryManager,
    HealthState,
    ProbeKind,
    ProbeResult,
)
from strategylab.service import AdminActionError, NodeSnapshot, StatusService
from strategylab.testing import FakeClock

TOKEN = "ops-cli-test-token-0123456789"  # noqa: S105 - a test token


class Source:
    """The node as the service sees it, over real recovery-manager and breaker components;
    ``kills`` records every kill reason that reached it."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.manager = ErrorRecoveryManager(clock=self.clock)
        self.breakers = CircuitBreakerRegistry(clock=self.clock)
        self.breakers.get_or_create("exchange-api").force_open()
        self.breakers.get_or_create("tick-store")
        self.kills: list[str] = []

    def snapshot(self) -> NodeSnapshot:
        return NodeSnapshot(
            node="ops-cli-node",
            uptime=12.5,
            recovery=self.manager.statistics(),
            active_recoveries=self.manager.active_recoveries(),
            breakers=self.breakers.metrics(),
            health=None,
            degradation=None,
            supervisor=None,
            ingest=None,
            feed=None,
            ticks_per_s=0.0,
            last_price={"AAPL": 101.25},
            risk_state="ACTIVE",
            store_state="primary",
            spool_pending=0,
            kill_switch=None,
        )

    def _probe(self, kind: ProbeKind) -> ProbeResult:
        return ProbeResult(
            kind=kind, ok=True, state=HealthState.HEALTHY, failing=(), degraded=(), reasons={}
        )

    def liveness(self) -> ProbeResult:
        return self._probe(ProbeKind.LIVENESS)

    def readiness(self) -> ProbeResult:
        return self._probe(ProbeKind.READINESS)

    def recent_audit(self, limit: int) -> list[Mapping[str, Any]]:
        return []

    async def kill(self, reason: str) -> Mapping[str, Any]:
        self.kills.append(reason)
        return {"accepted": True, "reason": reason}

    async def force_breaker(self, name: str, state: str) -> Mapping[str, Any]:
        raise AdminActionError(409, "not in this test")

    async def shed(self, feature: str) -> Mapping[str, Any]:
        raise AdminActionError(409, "not in this test")

    async def restore(self, feature: str) -> Mapping[str, Any]:
        raise AdminActionError(409, "not in this test")

    async def reload_config(self) -> Mapping[str, Any]:
        raise AdminActionError(409, "not in this test")


class Served:
    """A :class:`StatusService` running on its own event loop in a thread."""

    def __init__(self, admin_token: str | None) -> None:
        self.source = Source()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.service = StatusService(self.source, admin_token=admin_token)
        asyncio.run_coroutine_threadsafe(self.service.start(), self.loop).result(timeout=10)
        self.url = self.service.url

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.service.aclose(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def node() -> Iterator[Served]:
    """A status service with admin routes (token :data:`TOKEN`)."""
    served = Served(TOKEN)
    yield served
    served.close()


@pytest.fixture(scope="module")
def tokenless() -> Iterator[Served]:
    """A status service without an admin token: its admin routes answer 403."""
    served = Served(None)
    yield served
    served.close()


def cli(*argv: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m strategylab ARGV`` with no STRATEGYLAB_* variable but those in ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STRATEGYLAB_")}
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "strategylab", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        env={**clean, "COLUMNS": "200", **(env or {})},
        check=False,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (asserting there is only one)."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(60)
def test_status_prints_the_nodes_tables(node: Served) -> None:
    """``status`` prints the node, its breakers (with their states), statistics and kill switch."""
    done = cli("status", "--url", node.url)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for text in ("ops-cli-node", "breakers", "exchange-api", "forced_open", "tick-store"):
        assert text in out
    assert "closed" in out
    assert "recovery statistics" in out
    assert "total_errors" in out
    assert "kill switch" in out
    assert "not pulled" in out
    assert "ACTIVE" in out
    assert "101.25" in out


@pytest.mark.timeout(60)
def test_status_json_prints_the_service_document(node: Served) -> None:
    """``status --json`` prints the JSON the service answered, parseable as one document."""
    done = cli("status", "--url", node.url + "/", "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["node"] == "ops-cli-node"
    assert document["breakers"]["exchange-api"]["state"] == "forced_open"
    assert document["breakers"]["tick-store"]["state"] == "closed"
    assert document["kill_switch"] is None


@pytest.mark.timeout(60)
def test_status_of_an_unreachable_node_is_one_line_exit_1() -> None:
    """Nothing listening: exit 1, one line naming the URL and the refusal."""
    url = f"http://127.0.0.1:{closed_port()}"
    done = cli("status", "--url", url)
    assert done.returncode == 1
    line = one_line(done)
    assert url in line
    assert "refused" in line.lower()


@pytest.mark.timeout(60)
def test_status_of_a_silent_node_times_out_in_one_line() -> None:
    """A listener that never answers: exit 1 after --timeout, one line saying so."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        done = cli("status", "--url", url, "--timeout", "0.5")
    assert done.returncode == 1
    line = one_line(done)
    assert url in line
    assert "no answer within 0.5 s" in line


class _NotJson(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/status" else 500
        body = b"<html>not json</html>"
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        """Quiet."""


@pytest.fixture
def not_json() -> Iterator[str]:
    """An HTTP server answering ``/status`` with HTML and anything else with 500."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotJson)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.mark.timeout(60)
def test_status_of_something_that_is_not_json_is_one_line_exit_1(not_json: str) -> None:
    """An answer that is not JSON: exit 1, one line naming the URL."""
    done = cli("status", "--url", not_json)
    assert done.returncode == 1
    line = one_line(done)
    assert not_json in line
    assert "not JSON" in line


@pytest.mark.timeout(60)
def test_status_http_error_is_one_line_exit_1(not_json: str) -> None:
    """An HTTP error status: exit 1, one line naming the URL and the status."""
    done = cli("status", "--url", not_json + "/prefix")
    assert done.returncode == 1
    line = one_line(done)
    assert not_json + "/prefix" in line
    assert "HTTP 500" in line


@pytest.mark.timeout(60)
def test_kill_with_the_token_from_the_environment_reaches_the_node(node: Served) -> None:
    """``kill`` with ``$STRATEGYLAB_ADMIN_TOKEN``: exit 0, the answer printed as one JSON line,
    and the reason reached the node's kill switch."""
    before = len(node.source.kills)
    done = cli(
        "kill",
        "--url",
        node.url,
        "--reason",
        "operator drill 1",
        env={"STRATEGYLAB_ADMIN_TOKEN": TOKEN},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    answer = json.loads(lines[0])
    assert answer["ok"] is True
    assert node.source.kills[before:] == ["operator drill 1"]


@pytest.mark.timeout(60)
def test_kill_with_a_token_file_reaches_the_node(node: Served, tmp_path: Path) -> None:
    """``kill --admin-token-file PATH`` (mode 0600): exit 0 and the reason reached the node."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    before = len(node.source.kills)
    done = cli(
        "kill", "--url", node.url, "--reason", "drill 2", "--admin-token-file", str(token_file)
    )
    assert done.returncode == 0, done.stderr
    assert node.source.kills[before:] == ["drill 2"]


@pytest.mark.timeout(60)
def test_kill_with_a_wrong_token_is_refused_and_nothing_happens(node: Served) -> None:
    """A wrong token: exit 1 with "token refused", and the node's kill switch was not called."""
    before = list(node.source.kills)
    done = cli("kill", "--url", node.url, "--reason", "x", env={"STRATEGYLAB_ADMIN_TOKEN": "wrong"})
    assert done.returncode == 1
    line = one_line(done)
    assert "token refused" in line
    assert node.url in line
    assert node.source.kills == before


@pytest.mark.timeout(60)
def test_kill_on_a_node_without_a_token_says_admin_routes_are_off(tokenless: Served) -> None:
    """A node with no admin token configured answers 403: exit 1 with the line saying why."""
    done = cli(
        "kill", "--url", tokenless.url, "--reason", "x", env={"STRATEGYLAB_ADMIN_TOKEN": TOKEN}
    )
    assert done.returncode == 1
    line = one_line(done)
    assert "admin routes are off on this node (no admin token configured)" in line
    assert tokenless.source.kills == []


@pytest.mark.timeout(60)
def test_kill_without_a_token_is_a_usage_error_naming_both_sources(node: Served) -> None:
    """No token anywhere: exit 2 naming the variable and the flag; nothing is sent."""
    before = list(node.source.kills)
    done = cli("kill", "--url", node.url, "--reason", "x")
    assert done.returncode == 2
    line = one_line(done)
    assert "$STRATEGYLAB_ADMIN_TOKEN" in line
    assert "--admin-token-file" in line
    assert node.source.kills == before


@pytest.mark.timeout(60)
def test_kill_of_an_unreachable_node_is_one_line_exit_1() -> None:
    """Nothing listening: exit 1, one line naming the URL."""
    url = f"http://127.0.0.1:{closed_port()}"
    done = cli("kill", "--url", url, "--reason", "x", env={"STRATEGYLAB_ADMIN_TOKEN": TOKEN})
    assert done.returncode == 1
    line = one_line(done)
    assert url in line
    assert "refused" in line.lower()


def test_render_status_cannot_be_styled_or_split_by_the_node() -> None:
    """Rich markup and control characters from the node are shown as text, never obeyed."""
    console = Console(file=io.StringIO(), width=200, color_system=None)
    render_status(
        {
            "node": "[bold red]evil[/bold red]",
            "breakers": {"b\x1b[2Jx": {"state": "open"}},
            "kill_switch": {"reason": "line1\nline2"},
        },
        console,
    )
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "[bold red]evil[/bold red]" in out
    assert "\x1b" not in out
    assert "line1\\nline2" in out


def test_render_status_shows_sections_it_does_not_know() -> None:
    """A section a newer node adds is still shown, as a table of its own."""
    console = Console(file=io.StringIO(), width=200, color_system=None)
    render_status(
        {"node": "n", "kill_switch": None, "cluster": {"peers": 3, "leader": "n2"}}, console
    )
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "cluster" in out
    assert "leader" in out
    assert "n2" in out
    assert "not pulled" in out


# --- answers that are not a node's ------------------------------------------------------------

NOT_A_NODE = "did not answer as a Strategy Lab node"


class WrongShapes:
    """A real aiohttp server (plain HTTP, its own event loop in a thread) answering every
    request under ``/CASE/`` with ``answers[CASE]`` (status, content type, body); ``seen``
    records each request as ``(method, path, body)``."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, str, bytes]] = {}
        self.seen: list[tuple[str, str, bytes]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        app = web.Application()
        app.router.add_route("*", "/{case}/{tail:.*}", self._answer)
        self.runner = web.AppRunner(app)
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)
        host, port = self.runner.addresses[0][:2]
        self.host_port = f"{host}:{port}"

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()

    async def _answer(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path, await request.read()))
        status, content_type, body = self.answers[request.match_info["case"]]
        return web.Response(status=status, body=body, content_type=content_type)

    def url(self, case: str, status: int, body: object, content_type: str = "") -> str:
        """The base URL of a case answering ``status`` with ``body`` (JSON unless bytes)."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answers[case] = (status, content_type or "application/json", raw)
        return f"http://{self.host_port}/{case}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def wrong() -> Iterator[WrongShapes]:
    """A plain-HTTP server answering whatever each test sets."""
    served = WrongShapes()
    yield served
    served.close()


def real_status(node: Served) -> dict[str, Any]:
    """The ``GET /status`` body the real service answers."""
    done = cli("status", "--url", node.url, "--json")
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def refused_as_not_a_node(done: subprocess.CompletedProcess[str], url: str) -> str:
    """Assert exit 1, nothing on stdout, one stderr line naming ``url`` and saying the answer
    is not a node's; return the line."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    line = one_line(done)
    assert f"{url}: {NOT_A_NODE}: " in line
    return line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flags", [(), ("--json",)], ids=["tables", "json"])
@pytest.mark.parametrize(
    ("body", "named"),
    [
        ([1, 2, 3], "the /status answer is a JSON array, not an object"),
        ("status", "the /status answer is a JSON string, not an object"),
        ({"hello": "world"}, "lacks the keys 'node', 'uptime', 'time', 'components'"),
    ],
    ids=["array", "string", "object"],
)
def test_status_refuses_json_that_is_not_a_status(
    wrong: WrongShapes, flags: tuple[str, ...], body: object, named: str
) -> None:
    """Any JSON 200 that is not the service's status body: exit 1, no table, no JSON printed,
    one line saying the URL did not answer as a node and why."""
    url = wrong.url(f"status-{type(body).__name__}", 200, body)
    line = refused_as_not_a_node(cli("status", "--url", url, *flags), url)
    assert named in line


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"breakers": []}, "/status 'breakers' is a JSON array, not object"),
        ({"node": 7}, "/status 'node' is a JSON number, not string"),
        ({"uptime": True}, "/status 'uptime' is a JSON boolean, not number or null"),
        ({"audit": None}, "/status 'audit' is a JSON null, not array"),
    ],
    ids=["breakers", "node", "uptime", "audit"],
)
def test_status_refuses_a_status_with_a_key_of_the_wrong_type(
    node: Served, wrong: WrongShapes, change: dict[str, object], named: str
) -> None:
    """The real status body with one key of the wrong JSON type: exit 1 naming the key."""
    url = wrong.url(f"typed-{next(iter(change))}", 200, {**real_status(node), **change})
    line = refused_as_not_a_node(cli("status", "--url", url), url)
    assert named in line


@pytest.mark.timeout(60)
def test_status_refuses_a_status_without_a_key_the_service_always_sends(
    node: Served, wrong: WrongShapes
) -> None:
    """The real status body without ``audit``: exit 1 naming the missing key."""
    body = real_status(node)
    del body["audit"]
    url = wrong.url("lacks-audit", 200, body)
    line = refused_as_not_a_node(cli("status", "--url", url), url)
    assert "the /status answer lacks the keys 'audit'" in line


@pytest.mark.timeout(60)
def test_status_accepts_the_real_body_served_by_another_server(
    node: Served, wrong: WrongShapes
) -> None:
    """The real body, extra keys added, served by another server: tables and exit 0 (the
    check is on the shape, not on who serves it, and a newer node's keys are allowed)."""
    url = wrong.url("real-status", 200, {**real_status(node), "cluster": {"leader": "n2"}})
    done = cli("status", "--url", url)
    assert done.returncode == 0, done.stderr
    assert "ops-cli-node" in done.stdout
    assert "leader" in done.stdout


KILLED = {"ok": True, "action": "kill", "target": None, "result": {"accepted": True}}
"""The shape of the real service's kill answer (with HTTP 202)."""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("status", "body", "named"),
    [
        (200, [1, 2, 3], "HTTP 200, not the kill answer (HTTP 202 {"),
        (202, [1, 2, 3], "HTTP 202 with a JSON array, not the kill answer"),
        (202, {"hello": "world"}, "HTTP 202 with an object ('hello'), not the kill answer"),
        (202, {**KILLED, "ok": False}, "HTTP 202 with an object ('ok', 'action'"),
        (202, {**KILLED, "action": "shed"}, "not the kill answer"),
        (202, {**KILLED, "target": "feed"}, "not the kill answer"),
        (202, {**KILLED, "result": "done"}, "not the kill answer"),
        (200, KILLED, "HTTP 200, not the kill answer"),
        (204, b"", "HTTP 204: the answer is not JSON"),
    ],
    ids=[
        "200-array",
        "202-array",
        "202-object",
        "not-ok",
        "other-action",
        "a-target",
        "result-text",
        "200-kill-shape",
        "204-empty",
    ],
)
def test_kill_refuses_an_answer_that_is_not_the_kill_answer(
    wrong: WrongShapes, status: int, body: object, named: str
) -> None:
    """The POST reached the server, but its 2xx answer is not the service's kill answer:
    exit 1 with one line saying the URL did not answer as a node; nothing on stdout."""
    case = f"kill-{len(wrong.answers)}"
    url = wrong.url(case, status, body)
    done = cli("kill", "--url", url, "--reason", "drill", env={"STRATEGYLAB_ADMIN_TOKEN": TOKEN})
    line = refused_as_not_a_node(done, url)
    assert named in line
    assert ("POST", f"/{case}/admin/kill", b'{"reason": "drill"}') in wrong.seen


@pytest.mark.timeout(60)
def test_kill_answered_with_html_is_not_said_to_be_accepted(wrong: WrongShapes) -> None:
    """An HTML 200 from whatever listens there: exit 1, "not a node", never "accepted"."""
    url = wrong.url("kill-html", 200, b"<html>welcome</html>", "text/html")
    done = cli("kill", "--url", url, "--reason", "x", env={"STRATEGYLAB_ADMIN_TOKEN": TOKEN})
    line = refused_as_not_a_node(done, url)
    assert "HTTP 200: the answer is not JSON" in line
    assert "accepted" not in line


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "argv",
    [
        ("status",),
        ("status", "--json"),
        ("kill", "--reason", "x"),
    ],
    ids=["status", "status-json", "kill"],
)
def test_https_at_a_plain_http_port_says_the_tls_handshake_failed(
    wrong: WrongShapes, argv: tuple[str, ...]
) -> None:
    """``https://`` at a real plain-HTTP server: exit 1, one line naming the URL and the TLS
    handshake failure, not the errno text "Operation not permitted"."""
    url = f"https://{wrong.host_port}"
    done = cli(*argv, "--url", url, env={"STRATEGYLAB_ADMIN_TOKEN": TOKEN})
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    line = one_line(done)
    assert f"{url}: TLS handshake failed: is the node serving plain http?" in line
    assert "Operation not permitted" not in line


@pytest.mark.timeout(60)
def test_the_real_services_answers_have_the_shapes_checked(node: Served) -> None:
    """The checks accept what the real service answers: its /status body, and its kill
    answer (HTTP 202) as ``strategylab kill`` printed it."""
    assert status_shape_error(real_status(node)) is None
    done = cli(
        "kill", "--url", node.url, "--reason", "shape", env={"STRATEGYLAB_ADMIN_TOKEN": TOKEN}
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert kill_shape_error(202, answer) is None
    assert kill_shape_error(200, answer) is not None
