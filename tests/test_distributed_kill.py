"""The cluster kill switch on the real Redis (127.0.0.1:6379; issue 14, part 2).

In process: watchers (the node's component, :class:`ClusterKillWatcher`) halted by a kill,
one started after the kill starting halted, a clear with a wrong token refused (nothing
changed), a verified clear resuming them, a ``DEL`` or a forged clear keeping them halted
(across a restart too), a cut-off watcher honouring on reconnect a kill issued meanwhile (a TCP
proxy in front of Redis is cut: the server itself is never killed). The command line's exit
codes. End to end: a real ``strategylab node --cluster NAME --redis URL`` process with a
trader child and a real exchange: it starts halted under a kill issued before it started,
resumes on the clear, halts again (its orders cancelled at the exchange) on a kill issued while
it runs, and keeps ingesting and serving ``/status`` meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from typer.testing import CliRunner

from strategylab.cli import app
from strategylab.distributed import (
    ClusterKillError,
    ClusterKillState,
    ClusterKillSwitch,
    ClusterKillWatcher,
    check_redis_url,
    clear_mac,
    cluster_kill_keys,
)
from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import HealthState
from strategylab.market import Exchange, ExchangeConfig
from strategylab.node import NodeConfig
from strategylab.node._cluster_kill import NodeClusterKill, cluster_health_check

pytestmark = pytest.mark.integration

REDIS = "redis://127.0.0.1:6379/0"
TOKEN = "cluster-admin-" + secrets.token_hex(8)
WRONG = "not-the-token-" + secrets.token_hex(8)
KEY_HEX = "5f3c0a91d2e84b7766aa10ce9b3f2d48"
BIDS = "bids=strategylab.strategy._examples:RestingBids"


@pytest.fixture
def cluster() -> Iterator[str]:
    """A cluster name no other test uses; its keys deleted afterwards."""
    name = "test-" + secrets.token_hex(6)
    yield name
    client = redis.Redis.from_url(REDIS)
    for each in (name, name.upper()):
        base = f"strategylab:cluster:{each}"
        client.delete(*cluster_kill_keys(each)[:2], f"{base}:members", f"{base}:alive")
        members = client.keys(f"{base}:member:*")
        if members:
            client.delete(*members)
        client.srem("strategylab:clusters", each)
    client.close()


class Recorder:
    """A watcher's ``on_change`` calls, in order."""

    def __init__(self) -> None:
        self.calls: list[ClusterKillState] = []

    def __call__(self, state: ClusterKillState) -> None:
        self.calls.append(state)


@contextlib.asynccontextmanager
async def watcher(
    cluster: str, state_file: Path, *, url: str = REDIS, token: str | None = TOKEN
) -> AsyncIterator[tuple[ClusterKillWatcher, Recorder]]:
    recorder = Recorder()
    w = ClusterKillWatcher(
        cluster,
        url,
        state_file=state_file,
        admin_token=token,
        on_change=recorder,
        poll=0.2,
        timeout=0.5,
        backoff_cap=0.2,
    )
    await w.start()
    try:
        yield w, recorder
    finally:
        await w.aclose()


async def until(w: ClusterKillWatcher, predicate: Callable[[ClusterKillState], bool]) -> None:
    async with asyncio.timeout(5):
        await w.wait_for(predicate)


def halted(state: ClusterKillState) -> bool:
    return state.halted


def running(state: ClusterKillState) -> bool:
    return not state.halted


async def test_a_kill_halts_every_watcher_a_wrong_token_is_refused_a_verified_clear_resumes(
    cluster: str, tmp_path: Path
) -> None:
    """Three watchers halt on one kill; a wrong token changes nothing; the clear resumes all."""
    async with contextlib.AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(watcher(cluster, tmp_path / f"n{i}.json"))
            for i in range(3)
        ]
        assert all(not w.state.halted and w.state.connected for w, _ in nodes)
        with ClusterKillSwitch(cluster, REDIS, admin_token=TOKEN) as switch:
            record, created, receivers = switch.kill("test: halt everything")
            assert created
            assert receivers >= 3  # every watcher is subscribed
            for w, recorder in nodes:
                await until(w, halted)
                assert w.state.kill is not None
                assert w.state.kill.id == record.id
                assert w.state.verified is True
                assert recorder.calls[-1].halted
            # The state file names the kill obeyed.
            saved = json.loads((tmp_path / "n0.json").read_text())
            assert saved == {"cluster": cluster, "kill": record.to_dict()}
            # A second kill keeps the first (one id to clear).
            again, created_again, _ = switch.kill("again")
            assert (again.id, created_again) == (record.id, False)

        with (
            ClusterKillSwitch(cluster, REDIS, admin_token=WRONG) as wrong,
            pytest.raises(ClusterKillError, match="not the one that pulled"),
        ):
            wrong.clear()
        with ClusterKillSwitch(cluster, REDIS, admin_token=TOKEN) as switch:
            assert switch.current() == record  # nothing changed
            kill_id, _ = switch.clear()
            assert kill_id == record.id
            assert switch.current() is None
        for w, recorder in nodes:
            await until(w, running)
            assert [c.halted for c in recorder.calls] == [False, True, False]
        assert json.loads((tmp_path / "n0.json").read_text())["kill"] is None


async def test_a_node_started_after_the_kill_starts_halted_and_resumes_on_the_clear(
    cluster: str, tmp_path: Path
) -> None:
    """A watcher started under a kill is halted from its first read, before anything trades."""
    with ClusterKillSwitch(cluster, REDIS, admin_token=TOKEN) as switch:
        record, _, _ = switch.kill("before the node started")
        async with watcher(cluster, tmp_path / "late.json") as (w, recorder):
            assert w.state.halted  # from its first read, before anything could trade
            assert recorder.calls[0].halted
            assert w.state.kill is not None
            assert w.state.kill.reason == "before the node started"
            switch.clear()
            await until(w, running)
    assert record.id


async def test_a_del_or_a_forged_clear_keeps_the_node_halted_even_across_a_restart(
    cluster: str, tmp_path: Path
) -> None:
    """Only a clear verified with the admin token resumes: not a DEL, not a forged record."""
    kill_key, clear_key, _ = cluster_kill_keys(cluster)
    state_file = tmp_path / "node.json"
    client = redis.Redis.from_url(REDIS)
    try:
        with ClusterKillSwitch(cluster, REDIS, admin_token=TOKEN) as switch:
            record, _, _ = switch.kill("to be deleted")
        async with watcher(cluster, state_file) as (w, _):
            assert w.state.halted
            client.delete(kill_key)  # anyone with Redis access
            await until(w, lambda s: s.problem == "kill key vanished without a verified clear")
            assert w.state.halted
            forged = {"kill_id": record.id, "mac": clear_mac(WRONG, cluster, record.id)}
            client.set(clear_key, json.dumps(forged))
            await asyncio.sleep(0.5)  # a few polls (0.2 s): nothing may resume it
            assert w.state.halted
        # Restarted, Redis without the key: the state file keeps it halted.
        async with watcher(cluster, state_file) as (w, recorder):
            assert w.state.halted
            assert recorder.calls[0].halted
            assert w.state.kill is not None
            assert w.state.kill.id == record.id
            # A node without a token can verify no clear: it stays halted and says so.
            async with watcher(cluster, state_file, token=None) as (blind, _):
                assert blind.state.halted
                assert blind.state.problem == "no admin token: a clear cannot be verified"
            # The operator clears the lost kill by its id, with the token: verified, resumed.
            with ClusterKillSwitch(cluster, REDIS, admin_token=TOKEN) as switch:
                assert switch.clear(record.id)[0] == record.id
            await until(w, running)
    finally:
        client.close()


class Proxy:
    """A TCP proxy in front of Redis that can cut every connection and refuse new ones."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_a_cut_off_node_keeps_its_state_reports_it_and_honours_a_kill_on_reconnect(
    cluster: str, tmp_path: Path
) -> None:
    """Cut off from Redis: last state kept, outage reported, a kill issued meanwhile obeyed."""
    proxy = Proxy()
    await proxy.start()
    url = f"redis://127.0.0.1:{proxy.port}/0"
    async with watcher(cluster, tmp_path / "node.json", url=url) as (w, _):
        assert w.state.connected
        assert not w.state.halted
        await proxy.cut()
        await until(w, lambda s: not s.connected)
        assert w.state.problem is not None
        assert w.state.problem.startswith("Redis unreachable")
        assert not w.state.halted  # its last known state
        with ClusterKillSwitch(cluster, REDIS, admin_token=TOKEN) as switch:
            record, _, _ = switch.kill("while the node was cut off")
        await asyncio.sleep(0.3)  # the notice went nowhere: the node cannot know yet
        assert not w.state.halted
        await proxy.start()  # same port: the node reconnects and re-reads the key
        await until(w, lambda s: s.halted and s.connected)
        assert w.state.kill is not None
        assert w.state.kill.id == record.id
        assert w.reconnects >= 1
        await proxy.cut()


async def test_the_node_glue_writes_the_trader_s_halt_file_and_reports_an_outage_degraded(
    cluster: str, tmp_path: Path
) -> None:
    """The node writes the trader's halt file on a kill; its health check degrades offline."""
    proxy = Proxy()
    await proxy.start()
    config = NodeConfig(
        exchange_url="ws://127.0.0.1:1/ws",
        symbols=("A",),
        data_dir=tmp_path,
        cluster=cluster,
        redis_url=f"redis://127.0.0.1:{proxy.port}/0",
        admin_token=TOKEN,
    )
    glue = NodeClusterKill(config, None, lambda: None)
    check = cluster_health_check(lambda: glue)
    await glue.start()
    try:
        assert json.loads(glue.halt_file.read_text())["halted"] is False
        assert await check.check() is HealthState.HEALTHY
        with ClusterKillSwitch(cluster, REDIS, admin_token=TOKEN) as switch:
            record, _, _ = switch.kill("glue")
        await until(glue.watcher, halted)
        body = json.loads(glue.halt_file.read_text())
        assert (body["halted"], body["kill_id"], body["reason"]) == (True, record.id, "glue")
        assert glue.status()["kill"]["id"] == record.id
        await proxy.cut()
        await until(glue.watcher, lambda s: not s.connected)
        assert await check.check() is HealthState.DEGRADED
        assert glue.status()["halted"]  # its last known state
    finally:
        await glue.aclose()


def token_files(tmp_path: Path) -> tuple[Path, Path]:
    """``(the nodes' token file, a wrong token's file)``, 0600."""
    files = []
    for name, value in (("token", TOKEN), ("wrong", WRONG)):
        path = tmp_path / name
        path.write_text(value)
        path.chmod(0o600)
        files.append(path)
    return files[0], files[1]


async def invoke(args: list[str], env: dict[str, str | None] | None = None) -> Any:
    """The command line, off the event loop (the watchers keep running meanwhile)."""
    return await asyncio.to_thread(CliRunner().invoke, app, args, env=env)


async def test_the_command_line_exit_codes(cluster: str, tmp_path: Path) -> None:
    """`kill --cluster`: 0 done, 1 refused or unreachable (nothing changed), 2 usage errors."""
    token_file, wrong_file = token_files(tmp_path)
    base = ["kill", "--cluster", cluster, "--redis", REDIS]
    env: dict[str, str | None] = {"STRATEGYLAB_ADMIN_TOKEN": None}
    async with watcher(cluster, tmp_path / "node.json") as (w, _):
        done = await invoke([*base, "--reason", "cli", "--admin-token-file", str(token_file)])
        assert done.exit_code == 0, done.output
        answer = json.loads(done.stdout)
        assert (answer["action"], answer["created"], answer["ok"]) == ("cluster_kill", True, True)
        assert answer["nodes"] == {
            w.member: {"ok": True, "outcome": "halted", "why": None, "verified": True}
        }

        refused = await invoke([*base, "--clear", "--admin-token-file", str(wrong_file)])
        assert refused.exit_code == 1
        assert "not the one that pulled" in refused.stderr
        assert redis.Redis.from_url(REDIS).get(cluster_kill_keys(cluster)[0]) is not None

        no_token = await invoke([*base, "--clear"], env=env)
        assert no_token.exit_code == 2
        assert "no admin token" in no_token.stderr

        unreachable = await invoke(
            ["kill", "--cluster", cluster, "--redis", "redis://127.0.0.1:1/0", "--reason", "x"],
            env={"STRATEGYLAB_ADMIN_TOKEN": TOKEN},
        )
        assert unreachable.exit_code == 1
        assert "unreachable" in unreachable.stderr

        usage = await invoke([*base, "--clear", "--reason", "both"], env=env)
        assert usage.exit_code == 2
        for bad in ("redis://127.0.0.1:6379:12", "redis://h:abc/0", "redis://h/db", "http://h/0"):
            bad_url = await invoke(
                ["kill", "--cluster", cluster, "--redis", bad, "--reason", "x"],
                env={"STRATEGYLAB_ADMIN_TOKEN": TOKEN},
            )
            assert bad_url.exit_code == 2, bad
            assert "--redis" in bad_url.stderr

        cleared = await invoke([*base, "--clear", "--admin-token-file", str(token_file)])
        assert cleared.exit_code == 0, cleared.output
        document = json.loads(cleared.stdout)
        assert document["kill_id"] == answer["kill"]["id"]
        assert document["nodes"][w.member]["outcome"] == "resumed"
        assert not w.state.halted
        nothing = await invoke([*base, "--clear", "--admin-token-file", str(token_file)])
        assert nothing.exit_code == 1
        assert "no kill in force" in nothing.stderr


async def test_a_kill_with_a_token_the_nodes_lack_is_told_and_its_clear_fails_naming_them(
    cluster: str, tmp_path: Path
) -> None:
    """Issue 14 F3.1: the nodes halt under a foreign token's kill (said per node); the clear with
    that token exits 1 naming each node still halted and why; --kill-id with theirs resumes."""
    token_file, wrong_file = token_files(tmp_path)
    base = ["kill", "--cluster", cluster, "--redis", REDIS]
    async with contextlib.AsyncExitStack() as stack:
        nodes = [
            (await stack.enter_async_context(watcher(cluster, tmp_path / f"n{i}.json")))[0]
            for i in range(2)
        ]
        kill = await invoke([*base, "--reason", "foreign", "--admin-token-file", str(wrong_file)])
        assert kill.exit_code == 0, kill.output
        answer = json.loads(kill.stdout)
        assert answer["ok"] is True
        assert sorted(answer["nodes"]) == sorted(w.member for w in nodes)
        for w in nodes:
            assert answer["nodes"][w.member]["verified"] is False
            assert w.state.halted
            assert f"node {w.member}: halted, but" in kill.stderr
        kill_id = answer["kill"]["id"]

        clear = await invoke([*base, "--clear", "--admin-token-file", str(wrong_file)])
        assert clear.exit_code == 1, clear.output
        document = json.loads(clear.stdout)
        assert document["ok"] is False
        for w in nodes:
            assert document["nodes"][w.member]["outcome"] == "still halted"
            assert "cannot verify the clear with its admin token" in clear.stderr
            assert f"node {w.member} did not resume" in clear.stderr
            assert w.state.halted

        again = [*base, "--clear", "--kill-id", kill_id, "--admin-token-file", str(token_file)]
        recovered = await invoke(again)
        assert recovered.exit_code == 0, recovered.output
        assert all(
            n["outcome"] == "resumed" for n in json.loads(recovered.stdout)["nodes"].values()
        )
        assert not any(w.state.halted for w in nodes)


async def test_a_kill_no_running_node_acknowledged_exits_1_naming_the_live_clusters(
    cluster: str, tmp_path: Path
) -> None:
    """Issue 14 F3.2: a misspelt --cluster halts nothing: exit 1, the kill stays recorded, the
    clusters that do have running nodes are named; a node cut off from Redis is named too."""
    token_file, _ = token_files(tmp_path)
    proxy = Proxy()
    await proxy.start()
    cut_url = f"redis://127.0.0.1:{proxy.port}/0"
    async with (
        watcher(cluster, tmp_path / "a.json") as (w, _),
        watcher(cluster, tmp_path / "b.json", url=cut_url) as (cut, _),
    ):
        misspelt = cluster.upper()
        args = ["kill", "--cluster", misspelt, "--redis", REDIS, "--reason", "typo"]
        typo = await invoke([*args, "--admin-token-file", str(token_file)])
        assert typo.exit_code == 1, typo.output
        assert json.loads(typo.stdout)["ok"] is False
        assert json.loads(typo.stdout)["nodes"] == {}
        assert "no running node acknowledged" in typo.stderr
        assert cluster in typo.stderr.split("clusters with running nodes:")[1]
        assert redis.Redis.from_url(REDIS).get(cluster_kill_keys(misspelt)[0]) is not None
        assert not w.state.halted

        await proxy.cut()  # its acknowledgement lives on for its TTL: it is named, not counted
        args = ["kill", "--cluster", cluster, "--redis", REDIS, "--reason", "cut"]
        partial = await invoke([*args, "--admin-token-file", str(token_file)])
        assert partial.exit_code == 1, partial.output
        nodes = json.loads(partial.stdout)["nodes"]
        assert nodes[w.member]["outcome"] == "halted"
        assert nodes[cut.member]["outcome"] == "not halted"
        assert f"node {cut.member} did not halt" in partial.stderr
        assert halted(w.state)  # (a helper: mypy narrowed w.state.halted above)
        assert not halted(cut.state)


async def test_a_node_that_never_read_the_kill_state_starts_halted_until_it_does(
    cluster: str, tmp_path: Path
) -> None:
    """Issue 14 F3.4: Redis unreachable at start (or a DB index that fails): halted, fail safe,
    said in the state and the trader's halt file; the first read lifts it; a later outage
    keeps the last known state."""
    async with watcher(cluster, tmp_path / "db.json", url="redis://127.0.0.1:6379/9999") as (
        bad_db,
        _,
    ):
        assert bad_db.state.halted
        assert not bad_db.state.known
        assert bad_db.state.problem is not None
        assert bad_db.state.problem.startswith("kill state unknown: Redis unreachable")
    proxy = Proxy()
    await proxy.start()
    url = f"redis://127.0.0.1:{proxy.port}/0"
    await proxy.cut()
    config = NodeConfig(
        exchange_url="ws://127.0.0.1:1/ws",
        symbols=("A",),
        data_dir=tmp_path,
        cluster=cluster,
        redis_url=url,
        admin_token=TOKEN,
    )
    glue = NodeClusterKill(config, None, lambda: None)
    await glue.start()
    try:
        state = glue.watcher.state
        assert (state.halted, state.known, state.kill) == (True, False, None)
        body = json.loads(glue.halt_file.read_text())
        assert body["halted"] is True
        assert body["reason"].startswith("kill state unknown")
        assert glue.status()["known"] is False
        trader: dict[str, Any] = {"trading": True}
        glue.mark_trader(trader)
        assert trader["trading"] is False
        assert trader["halted"].startswith("kill state unknown")
        await proxy.start()
        await until(glue.watcher, lambda s: s.connected and not s.halted)
        assert glue.watcher.state.known
        assert json.loads(glue.halt_file.read_text())["halted"] is False
        await proxy.cut()
        await until(glue.watcher, lambda s: not s.connected)
        assert not glue.watcher.state.halted  # the last known state, not unknown again
    finally:
        await glue.aclose()


def test_a_bad_redis_url_is_a_usage_error_naming_redis(tmp_path: Path) -> None:
    """Issue 14 F3.3: scheme, host, port 1..65535, a numeric DB, checked when the config is built
    and by `node` (exit 2 naming --redis, no traceback)."""
    for good in ("redis://127.0.0.1:6379/0", "rediss://u:p@h/12", "redis://h", "unix:///s?db=1"):
        assert check_redis_url(good) == good
    bad = {
        "redis://127.0.0.1:6379:12": "is not a URL",
        "redis://127.0.0.1:abc/0": "is not a URL",
        "redis://127.0.0.1:99999/0": "is not a URL",
        "redis://127.0.0.1:0/0": "port must be from 1 to 65535",
        "redis://127.0.0.1:6379/zero": "must be a number",
        "redis://:pw@/0": "has no host",
        "http://127.0.0.1:6379/0": "must be a redis://",
    }
    for url, why in bad.items():
        with pytest.raises(ConfigurationError, match=why) as caught:
            NodeConfig(
                exchange_url="ws://127.0.0.1:1/ws",
                symbols=("A",),
                data_dir=tmp_path,
                cluster="c",
                redis_url=url,
            )
        assert "redis_url" in str(caught.value)
        assert "pw" not in str(caught.value)
    result = CliRunner().invoke(
        app,
        [
            "node",
            *("--data-dir", str(tmp_path / "n"), "--symbols", "A"),
            *("--exchange-url", "http://127.0.0.1:1", "--cluster", "c"),
            *("--redis", "redis://127.0.0.1:6379:12"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "--redis" in result.stderr
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------- end to end


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    ex = Exchange(
        ExchangeConfig(
            symbols=("A",),
            tick_rate=50,
            data_dir=tmp_path / "ex",
            signing_key=bytes.fromhex(KEY_HEX),
            admin_open=True,
        )
    )
    await ex.start()
    yield ex
    await ex.stop()


async def open_orders(exchange: Exchange) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{exchange.url}/api/orders", params={"status": "open"}) as response,
    ):
        assert response.status == 200
        return len(await response.json())


async def poll(predicate: Callable[[], Any], limit: float = 15.0) -> None:
    """Poll another process (no event to await), bounded by ``limit`` seconds."""
    async with asyncio.timeout(limit):
        while not await predicate():  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.05)


class NodeProcess:
    """A ``strategylab node --cluster NAME --redis URL`` process trading 3 resting bids."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url
        assert proc.stdout is not None
        self.drain = asyncio.create_task(proc.stdout.read())  # a full pipe would stall it

    async def status(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(self.url + "/status") as response:
            assert response.status == 200
            data: dict[str, Any] = await response.json()
            return data

    async def admin(
        self, path: str, body: dict[str, Any] | None, token: str = TOKEN
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(self.url + path, json=body, headers=headers) as response,
        ):
            data: dict[str, Any] = await response.json()
            return response.status, data

    async def cluster_kill(self) -> dict[str, Any]:
        found: dict[str, Any] = (await self.status())["extra"]["cluster_kill"]
        return found

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.terminate()
        try:
            async with asyncio.timeout(20):
                await self.drain
                return await self.proc.wait()
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


async def start_node(exchange: Exchange, cluster: str, tmp_path: Path) -> NodeProcess:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "strategylab", "node", "--exchange-url", exchange.url),
        *("--data-dir", str(tmp_path / "node"), "--symbols", "A"),
        *("--status-port", "0", "--status-interval", "0.2"),
        *("--strategy", BIDS, "--book", str(tmp_path / "trader" / "book.db")),
        *("--param", "every=2", "--param", "count=3", "--param", "fraction=0.01"),
        *("--cluster", cluster, "--redis", REDIS),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "STRATEGYLAB_SIGNING_KEY": KEY_HEX, "STRATEGYLAB_ADMIN_TOKEN": TOKEN},
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            while True:
                line = json.loads(await proc.stdout.readline())
                if line["event"] == "ready":
                    return NodeProcess(proc, line["status_url"])
    except BaseException:
        proc.kill()
        await proc.wait()
        raise


async def trader_said(node: NodeProcess, event: str) -> dict[str, Any]:
    """The trader's last ``event`` line as the node shows it, polled until there."""

    async def said() -> bool:
        return event in (await node.cluster_kill()).get("trader", {})

    await poll(said)
    found: dict[str, Any] = (await node.cluster_kill())["trader"][event]
    return found


async def risk_state(node: NodeProcess, wanted: str) -> None:
    """Poll until the trader's status lines report ``wanted`` (``HALTED``, ``ACTIVE``)."""

    async def reached() -> bool:
        return bool((await node.status())["risk_state"] == wanted)

    await poll(reached)


async def kill_through_the_admin_api(node: NodeProcess, cluster: str) -> str:
    """Any node of the cluster can pull it: ``POST /admin/cluster-kill``, the admin token's
    check first. The kill's id."""
    assert (await node.admin("/admin/cluster-kill", {"reason": "x"}, token=WRONG))[0] == 401
    code, answer = await node.admin("/admin/cluster-kill", {"reason": "while running"})
    assert code == 202, answer
    assert answer["result"]["receivers"] >= 1
    with ClusterKillSwitch(cluster, REDIS, admin_token=TOKEN) as switch:
        record = switch.current()
    assert record is not None
    assert record.reason == "while running"
    return record.id


@pytest.mark.timeout(60)
async def test_a_real_node_halts_staying_up_resumes_on_clear_and_starts_halted_later(
    exchange: Exchange, cluster: str, tmp_path: Path
) -> None:
    """A real node and trader: halted and cancelled, still up; cleared; started halted later."""
    node = await start_node(exchange, cluster, tmp_path)
    try:

        async def bids(count: int) -> None:
            async def reached() -> bool:
                return await open_orders(exchange) == count

            await poll(reached)

        await bids(3)
        assert not (await node.cluster_kill())["halted"]
        await risk_state(node, "ACTIVE")
        assert (await node.status())["extra"]["trader"].get("halted") is None
        checks = {c["name"]: c for c in (await node.status())["health"]["checks"]}
        assert checks["cluster_kill"]["kind"] == "readiness"  # DEGRADED while Redis is away
        assert checks["cluster_kill"]["state"] in {None, "healthy"}

        # Killed while running: halted, its bids cancelled at the exchange, the node stays up.
        acked_before = (await node.status())["ingest"]["acknowledged"]
        kill_id = await kill_through_the_admin_api(node, cluster)
        assert (await trader_said(node, "cluster_halted"))["risk_state"] == "halted"
        assert (await trader_said(node, "cluster_cancelled"))["complete"]
        await bids(0)
        now = await node.cluster_kill()
        assert (now["halted"], now["connected"], now["kill"]["id"]) == (True, True, kill_id)
        await risk_state(node, "HALTED")

        async def ingesting() -> bool:
            return bool((await node.status())["ingest"]["acknowledged"] > acked_before)

        await poll(ingesting)  # still ingesting while halted
        assert node.proc.returncode is None

        # Cleared with the token (the admin API too): the trader's hold is lifted.
        code, answer = await node.admin("/admin/cluster-kill/clear", None)
        assert code == 200, answer
        assert answer["result"]["kill_id"] == kill_id
        assert (await trader_said(node, "cluster_resumed"))["risk_state"] == "active"
        await risk_state(node, "ACTIVE")
        assert await node.stop() == 0

        # Killed while the node is down: it starts halted, held before it trades.
        with ClusterKillSwitch(cluster, REDIS, admin_token=TOKEN) as switch:
            second, _, _ = switch.kill("while the node was down")
        node = await start_node(exchange, cluster, tmp_path)
        await trader_said(node, "cluster_halted")
        await risk_state(node, "HALTED")
        status = await node.status()
        assert status["extra"]["cluster_kill"]["kill"]["id"] == second.id
        trader = status["extra"]["trader"]
        assert trader["trading"] is False  # the halt shows in the trader's view too (F3.5)
        assert trader["halted"] == f"cluster kill {second.id}: while the node was down"
        started = trader["started_with"]
        assert started.index("cluster_halted") < started.index("trading")
    finally:
        code = await node.stop()
    assert code == 0
