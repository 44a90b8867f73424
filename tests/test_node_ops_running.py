"""The operations layer inside a RUNNING node fed by a real exchange process:

- ``POST /admin/features/live_chart/shed`` turns the service's chart off (``/status`` says so),
  ``.../restore`` on again;
- a crash loop: the status service's listener dies and its port is taken by another socket, so
  every restart fails; past the restart intensity the node pulls the kill switch (source
  ``crash_loop``), writes ``snapshot.json`` and ``UNCLEAN_SHUTDOWN`` and ends with exit code 3.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from strategylab.node import EXIT_EMERGENCY, Node, NodeConfig, run_node
from test_node_operations import (
    KEY_HEX,
    NODE_TOKEN,
    SYMBOLS,
    Proc,
    exchange,  # noqa: F401 - the fixture
)

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {NODE_TOKEN}"}


def node_config(port: int, data_dir: Path) -> NodeConfig:
    return NodeConfig(
        exchange_url=f"ws://127.0.0.1:{port}/ws",
        symbols=SYMBOLS,
        data_dir=data_dir,
        signing_key=bytes.fromhex(KEY_HEX),
        status_port=0,
        status_interval=0.2,
        admin_token=NODE_TOKEN,
        shutdown_deadline=2.0,
    )


async def get_status(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/status") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


@pytest.mark.timeout(60)
async def test_admin_shed_and_restore_live_chart_in_a_running_node(
    tmp_path: Path,
    exchange: tuple[int, Proc],  # noqa: F811 - the imported fixture
) -> None:
    """Shed with the token: the chart is off in /status and in the degradation snapshot (pinned);
    restore: on again. Without the token: 401 and nothing changes."""
    port, _ = exchange
    node = Node(node_config(port, tmp_path / "node"))
    await node.start()
    try:
        url = node.status_url
        assert url is not None
        feature = f"{url}/admin/features/live_chart"
        async with aiohttp.ClientSession() as http:
            assert (await get_status(http, url))["chart"] == {"enabled": True, "state": "on"}
            async with http.post(f"{feature}/shed") as response:
                assert response.status == 401
            assert (await get_status(http, url))["chart"]["enabled"] is True
            async with http.post(f"{feature}/shed", headers=AUTH) as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["result"]["changed"] is True
            status = await get_status(http, url)
            assert status["chart"] == {"enabled": False, "state": "shed"}
            assert status["degradation"]["shed"] == ["live_chart"]
            chart = {f["name"]: f for f in status["degradation"]["features"]}["live_chart"]
            assert chart["pinned"] is True
            assert node.chart_enabled is False
            async with http.post(f"{feature}/restore", headers=AUTH) as response:
                assert response.status == 200, await response.text()
            status = await get_status(http, url)
            assert status["chart"] == {"enabled": True, "state": "on"}
            assert status["degradation"]["shed"] == []
            assert status["ingest"]["acknowledged"] >= 0
    finally:
        await node.aclose()


@pytest.mark.timeout(60)
async def test_status_service_crash_loop_pulls_the_kill_switch(
    tmp_path: Path,
    exchange: tuple[int, Proc],  # noqa: F811 - the imported fixture
) -> None:
    """The service's listener closes and another socket holds its port: the supervisor's TCP
    probe fails, every restart fails to bind, past 3 restarts in 10 s the node pulls the kill
    switch (crash_loop): snapshot + marker written, run_node returns 3."""
    port, _ = exchange
    data_dir = tmp_path / "node"
    node = Node(node_config(port, data_dir))
    runner = asyncio.create_task(run_node(node.config, asyncio.Event(), node=node))
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # no SO_REUSEADDR: binds fail
    try:
        async with asyncio.timeout(15):
            while node.status_url is None or node.ingestor.statistics().acknowledged == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # the node starting against a real exchange
        url = node.status_url
        service_port = urlsplit(url).port
        assert service_port is not None
        await node.status_service.aclose()  # the web server dies (its listener is gone)
        blocker.bind(("127.0.0.1", service_port))  # bound, not listening: probes are refused
        async with asyncio.timeout(30):
            code = await runner
    finally:
        blocker.close()
        if not runner.done():
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
    assert code == EXIT_EMERGENCY
    assert node.kill_source is not None
    assert node.kill_source.value == "crash_loop"
    assert node.kill_reason is not None
    assert "status_service" in node.kill_reason
    supervisor = node.supervisor
    assert supervisor is not None
    assert supervisor.snapshot().state.value == "escalated"
    report = node.kill_report
    assert report is not None
    assert report.marker_path is not None
    assert (data_dir / "UNCLEAN_SHUTDOWN").is_file()
    snapshot = json.loads((data_dir / "snapshot.json").read_text())
    assert snapshot["last_sequence"] == dict(node.ingestor.statistics().acked)
