"""Config reload inside a RUNNING node: a real exchange process feeds a node whose
configuration file is changed under it; the change is seen through ``/status``.

- in process (:class:`Node` with ``config_file``): a good ``batch_size`` is applied to the running
  ingestor, audited (``config_reload``) and answered by ``POST /admin/reload``; a bad value is
  rejected naming key and value while the node keeps ingesting, the last good value in force;
- as a process (``strategylab node --config``): SIGHUP reloads the file.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from strategylab.node import Node, NodeConfig, load_node_config
from test_node_operations import (
    KEY_HEX,
    NODE_TOKEN,
    SYMBOLS,
    Proc,
    exchange,  # noqa: F401 - the fixture
    next_event,
    status_until,
    stop,
)

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {NODE_TOKEN}"}


def write_config(path: Path, batch_size: object, max_queue: int = 4_000) -> None:
    path.write_text(f"[ingest]\nbatch_size = {batch_size}\nmax_queue = {max_queue}\n")


async def get_status(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/status") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def reload(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the reloader's result (``{"ok", "version", "error", "changed"}``), or
    for a rejected reload (422) the service's ``{"error": ...}`` body."""
    async with http.post(f"{url}/admin/reload", headers=AUTH) as response:
        body: dict[str, Any] = await response.json()
        if response.status != 200:
            return response.status, body
        assert body["action"] == "reload", body
        result: dict[str, Any] = body["result"]
        return response.status, result


async def stored(http: aiohttp.ClientSession, url: str) -> int:
    count: int = (await get_status(http, url))["ingest"]["acknowledged"]
    return count


async def wait_more(http: aiohttp.ClientSession, url: str, than: int, limit: float = 15) -> int:
    """Poll /status of the running node until more than ``than`` ticks are stored."""
    async with asyncio.timeout(limit):
        while (count := await stored(http, url)) <= than:  # noqa: ASYNC110 - over HTTP
            await asyncio.sleep(0.05)  # polling a real node's HTTP answer
    return count


@pytest.mark.timeout(60)
async def test_reload_in_a_running_node_applies_good_and_rejects_bad(  # noqa: PLR0915
    tmp_path: Path,
    exchange: tuple[int, Proc],  # noqa: F811 - the imported fixture
) -> None:
    """batch_size 500 -> 1000 is applied to the running ingestor (visible in /status, audited,
    published); batch_size 0 and a value over the knob's bound are rejected naming key and
    value; ingest goes on, the last good value stays in force and the node stays ready."""
    port, _ = exchange
    conf = tmp_path / "node.toml"
    write_config(conf, 500)
    base = NodeConfig(
        exchange_url=f"ws://127.0.0.1:{port}/ws",
        symbols=SYMBOLS,
        data_dir=tmp_path / "node",
        signing_key=bytes.fromhex(KEY_HEX),
        status_port=0,
        admin_token=NODE_TOKEN,
        config_file=conf,
    )
    node = Node(load_node_config(base, environ={}))
    await node.start()
    try:
        url = node.status_url
        assert url is not None
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(15):
                while True:
                    async with http.get(f"{url}/health/ready") as response:
                        if response.status == 200:
                            break
                    await asyncio.sleep(0.05)  # polling a real node's HTTP answer
            before = await get_status(http, url)
            assert before["ingest"]["batch_size"] == 500
            assert before["extra"]["config"]["version"] == 1
            count = await wait_more(http, url, 0)

            write_config(conf, 1000)
            code, result = await reload(http, url)
            assert code == 200, result
            assert result["ok"] is True, result
            assert result["changed"] == ["ingest.batch_size"]
            after = await get_status(http, url)
            assert after["ingest"]["batch_size"] == 1000
            assert after["ingest"]["max_queue"] == 4_000  # untouched
            assert node.ingestor.statistics().batch_size == 1000
            audit = [a for a in after["audit"] if a["kind"] == "config_reload"]
            assert audit[-1]["data"]["applied"] == {"ingest.batch_size": 1000}
            assert audit[-1]["data"]["at_next_start"] == []
            count = await wait_more(http, url, count)

            for bad, reason in (("0", "ingest.batch_size"), ("2001", "ingest.batch_size")):
                write_config(conf, bad)
                code, result = await reload(http, url)
                assert code == 422, result
                assert reason in result["error"], result
                assert bad in result["error"], result
                status = await get_status(http, url)
                assert status["ingest"]["batch_size"] == 1000  # the last good one
                assert status["extra"]["config"]["last_error"] in result["error"]
                count = await wait_more(http, url, count)  # still ingesting
                async with http.get(f"{url}/health/ready") as response:
                    assert response.status == 200, await response.text()
            assert node.config.batch_size == 1000

            write_config(conf, 1000, max_queue=8_000)
            conf.write_text(conf.read_text() + "linger = 0.05\n")
            code, result = await reload(http, url)
            assert result["ok"] is True, result
            status = await get_status(http, url)
            assert status["ingest"]["max_queue"] == 8_000
            record = [a for a in status["audit"] if a["kind"] == "config_reload"][-1]["data"]
            assert record["applied"] == {"ingest.max_queue": 8_000}
            assert record["at_next_start"] == ["ingest.linger"]
    finally:
        await node.aclose()


@pytest.mark.timeout(60)
async def test_sighup_reloads_a_node_process(
    tmp_path: Path,
    exchange: tuple[int, Proc],  # noqa: F811 - the imported fixture
) -> None:
    """A node process run with --config takes a changed batch_size on SIGHUP (seen in /status)
    and keeps running; SIGTERM then exits 0."""
    port, _ = exchange
    conf = tmp_path / "node.toml"
    write_config(conf, 500)
    data_dir = tmp_path / "node"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategylab",
        "node",
        *("--exchange-url", f"ws://127.0.0.1:{port}/ws", "--data-dir", str(data_dir)),
        *("--symbols", ",".join(SYMBOLS), "--config", str(conf), "--status-port", "0"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={
            **os.environ,
            "STRATEGYLAB_SIGNING_KEY": KEY_HEX,
            "STRATEGYLAB_ADMIN_TOKEN": NODE_TOKEN,
        },
    )
    try:
        url = (await next_event(proc, "ready"))["status_url"]
        async with aiohttp.ClientSession() as http:
            assert (await get_status(http, url))["ingest"]["batch_size"] == 500
            write_config(conf, 1500)
            proc.send_signal(signal.SIGHUP)
            async with asyncio.timeout(10):
                while (await get_status(http, url))["ingest"]["batch_size"] != 1500:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # polling a real process's HTTP answer
            status = await get_status(http, url)
            assert status["extra"]["config"]["version"] >= 2
            await status_until(proc, lambda s: s["ticks_stored"] > 0)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        await stop(proc)
