"""The chaos lab across several nodes (``strategylab lab --cluster N``, issue 14).

One end-to-end run of the cluster category against real processes and servers: three
``strategylab node --cluster`` processes on the shared PostgreSQL (127.0.0.1:5432, a schema of
the run's own, dropped after) and a throwaway ``redis-server`` the lab starts and kills. Besides
it, the pieces that need no cluster: the URL helpers, the throwaway Redis, the CLI's refusals.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from strategylab.chaos import (
    CLUSTER_CATEGORY_ID,
    ClusterConfig,
    LabOptions,
    ThrowawayRedis,
    prepare_report_dir,
    run_cluster_lab,
    write_report,
)
from strategylab.chaos._cluster_servers import RedisKill, pg_upstream, pg_url_via
from strategylab.chaos._injector import FaultSkippedError
from strategylab.cli import app

SHARED = "postgresql://postgres@127.0.0.1:5432/test"


# ------------------------------------------------------------------------------ small pieces


def test_pg_url_via_keeps_user_database_and_query() -> None:
    """The proxied URL changes only the host and port."""
    url = "postgresql://u:p%40ss@db.example:6543/test?options=-csearch_path%3Dx"
    assert pg_url_via(url, 4242) == (
        "postgresql://u:p%40ss@127.0.0.1:4242/test?options=-csearch_path%3Dx"
    )
    assert pg_upstream(url) == "db.example:6543"
    assert pg_upstream("postgresql://postgres@127.0.0.1/test") == "127.0.0.1:5432"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql:///test?host=/var/run/postgresql",
        "postgresql://a:1,b:2/test",
        "postgresql:///test",
        "mysql://x/y",
    ],
)
def test_pg_url_via_refuses_what_no_proxy_can_front(url: str) -> None:
    """A Unix socket, several hosts, no host or another scheme: no proxy URL."""
    assert pg_url_via(url, 4242) is None
    assert pg_upstream(url) is None


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("nodes", {"nodes": 1}),
        ("nodes", {"nodes": 6}),
        ("postgres", {"postgres": "host=x"}),
        ("redis", {"redis": "http://x"}),
        ("name", {"name": "a b"}),
    ],
)
def test_cluster_config_names_the_bad_field(
    tmp_path: Path, field: str, kwargs: dict[str, object]
) -> None:
    """An out-of-range node count or a URL of the wrong kind is refused, naming the field."""
    with pytest.raises(ValueError, match=field):
        ClusterConfig(work_dir=tmp_path, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cluster", "1"], "--cluster='1': must be a number of nodes, 2..5"),
        (["--cluster", "x"], "--cluster='x': must be a number of nodes, 2..5"),
        (["--redis", "redis://127.0.0.1:1"], "--redis needs --cluster N"),
        (["--cluster", "3", "--redis", "http://x"], "--redis='http://x': must be a redis://"),
        (["--cluster", "3", "--category", "1"], "--category contradicts --cluster"),
    ],
)
def test_lab_cli_refuses_bad_cluster_flags(tmp_path: Path, args: list[str], message: str) -> None:
    """A bad --cluster/--redis is a usage error (exit 2) naming the flag, before anything runs."""
    report = tmp_path / "report"
    result = CliRunner().invoke(app, ["lab", *args, "--report", str(report)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not report.exists()


@pytest.mark.integration
async def test_throwaway_redis_restarts_on_its_port_without_its_data(tmp_path: Path) -> None:
    """Killed and started again (the Redis fault), it answers on the same port, data lost."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (the cluster lab needs it)")
    import redis.asyncio as aredis  # noqa: PLC0415 - only this test talks to it

    async with ThrowawayRedis(tmp_path / "redis") as server:
        port = server.port
        before = aredis.Redis.from_url(server.url)
        try:
            await before.set("k", "v")
        finally:
            await before.aclose()
        kill = RedisKill(server)
        await kill.inject()
        assert not await server.ping()
        await kill.heal()
        assert server.port == port
        assert kill.exit == -9
        after = aredis.Redis.from_url(server.url)
        try:
            assert await after.get("k") is None
        finally:
            await after.aclose()
    assert not server.running


async def test_redis_kill_is_skipped_without_a_redis_of_its_own() -> None:
    """With --redis given, the Redis fault is refused as SKIPPED, with the reason."""
    kill = RedisKill(None, skip_reason="--redis was given")
    with pytest.raises(FaultSkippedError, match="--redis was given"):
        await kill.inject()


# ------------------------------------------------------------------------------ the category


def _schemas() -> set[str]:
    with psycopg.connect(SHARED, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'strategylab_lab_%'"
        ).fetchall()
    return {str(r[0]) for r in rows}


@pytest.mark.integration
@pytest.mark.timeout(150)
async def test_cluster_category_end_to_end(tmp_path: Path) -> None:
    """Three nodes: SIGKILL taken over and rejoined, a PostgreSQL partition taken over and
    rejoined, Redis killed and re-joined, the cluster kill switch halting every node and cleared;
    nothing lost or duplicated in the shared store."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (the cluster lab needs it)")
    before = await asyncio.to_thread(_schemas)
    options = LabOptions(
        categories=(CLUSTER_CATEGORY_ID,), postgres=SHARED, work_dir=tmp_path / "work"
    )
    async with asyncio.timeout(140):
        report = await run_cluster_lab(options, nodes=3)
    [result] = report.results
    faults = {f.name: f for f in result.faults}
    assert list(faults) == [
        "cluster.sigkill_node",
        "cluster.partition_node_pg",
        "cluster.redis_kill",
        "cluster.kill_switch",
    ]
    for run in faults.values():
        assert (run.skipped, run.error) == (None, None), run.name
        assert run.recovered, (run.name, run.notes)
        assert run.extra["integrity"]["lost"] == 0, run.extra["integrity"]
        assert run.extra["integrity"]["duplicated"] == 0, run.extra["integrity"]
    kill, cut = faults["cluster.sigkill_node"], faults["cluster.partition_node_pg"]
    assert kill.healed_by_failover
    assert kill.recovery_time is not None
    assert kill.extra["member"] == "node2"
    assert kill.extra["rejoin_s"] is not None
    assert kill.extra["symbols_after_rejoin"], "the restarted node took no symbol back"
    assert cut.extra["member"] == "node3"
    assert cut.healed_by_failover
    assert cut.recovery_time is not None
    assert cut.extra["symbols_before"], "the partitioned node held nothing to take over"
    redis_run = faults["cluster.redis_kill"]
    assert set(redis_run.extra["fallback_reported_s"]) == {"node", "node2", "node3"}
    assert redis_run.extra["stored_during_outage"] > 0
    halts = faults["cluster.kill_switch"].extra["halt_latency_s"]
    assert set(halts["node"]) == {"node", "node2", "node3"}
    assert set(halts["trader"]) == {"node", "node2", "node3"}
    assert result.integrity is not None
    assert result.integrity.acknowledged > 0
    assert (result.integrity.lost, result.integrity.duplicated) == (0, 0)
    assert result.verdict == "pass", result.judge(result.seed_criterion)[1]
    assert report.machine["cluster"]["redis"] == "throwaway"
    mine = f"strategylab_lab_{os.getpid()}_"  # other workers' runs may create theirs meanwhile
    left = {s for s in await asyncio.to_thread(_schemas) - before if s.startswith(mine)}
    assert left == set(), "the run's schema was not dropped"
    files = write_report(report, prepare_report_dir(tmp_path / "report"))
    written = json.loads(files.json.read_text("utf-8"))
    assert [c["id"] for c in written["categories"]] == [CLUSTER_CATEGORY_ID]
    assert written["passed"] is True


@pytest.mark.integration
def test_forget_cluster_deletes_only_that_clusters_keys() -> None:
    """On a Redis the lab was given, the run's keys go after it; another cluster's stay."""
    import redis  # noqa: PLC0415 - only this test talks to the shared server

    from strategylab.chaos._cluster import _forget_cluster  # noqa: PLC0415

    mine, other = f"lab-test-{os.getpid()}-a", f"lab-test-{os.getpid()}-b"
    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2.0)
    try:
        client.set(f"strategylab:cluster:{mine}:clear", "x")
        client.hset(f"strategylab:cluster:{mine}:breaker:b:state", "s", "open")
        client.set(f"strategylab:cluster:{other}:clear", "y")
        _forget_cluster("redis://127.0.0.1:6379/0", mine)
        assert list(client.scan_iter(match=f"strategylab:cluster:{mine}:*")) == []
        assert client.get(f"strategylab:cluster:{other}:clear") == b"y"
    finally:
        client.delete(f"strategylab:cluster:{other}:clear")
        client.close()
