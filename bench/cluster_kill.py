"""The cluster kill switch on Redis: from the kill's publish to each node's trading halted.

Run (Redis on 127.0.0.1:6379, or ``--redis URL``)::

    python bench/cluster_kill.py            # 100 kills, a few seconds
    python bench/cluster_kill.py --quick    # 20 kills, a few seconds (CI)

Three node processes, each with a trader process, as a real node runs them
(:mod:`strategylab.node._cluster_kill`): the node runs the real
:class:`~strategylab.distributed.ClusterKillWatcher` (subscribed to the cluster's channel), and
on a kill writes its ``cluster_halt.json`` (atomically, fsynced) and sends its trader SIGUSR2;
the trader runs the trader's real cluster-halt handler (``strategylab.node._trader``'s
``_ClusterHalt``: the risk engine's hold, in the signal's handler, then the cancel step, here
against no exchange: nothing to cancel), and prints ``cluster_halted`` with its
``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every process of the machine). The
latency of a kill at a node is that moment minus the moment just before this process's
:meth:`ClusterKillSwitch.kill` (SET, then PUBLISH). Each kill is then cleared (a verified
clear) and every trader resumed before the next. p50/p99/max over every (kill, node) pair;
goal <= 100 ms p99 (issue 14). A missed goal is reported, not an exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from strategylab._durable import write_atomic
from strategylab.distributed import ClusterKillState, ClusterKillSwitch, ClusterKillWatcher

NODES = 3
GOAL_P99 = 0.100
TOKEN = os.environ.setdefault("BENCH_CLUSTER_KILL_TOKEN", "bench-admin-" + secrets.token_hex(8))
"""The admin token, the same in every process (the children inherit the variable)."""


# ---------------------------------------------------------------------- the trader


class _Risky:
    """What the trader's cluster-halt handler needs of its engine: the real risk engine."""

    def __init__(self) -> None:
        from strategylab.trading import RiskEngine, RiskLimits  # noqa: PLC0415

        self.risk = RiskEngine(RiskLimits(stale_after=None))

        class _Config:
            close_deadline = 1.0

        self.config = _Config()

    async def cancel_everything(self, _deadline: float) -> tuple[int, list[str], bool]:
        return 0, [], True  # no exchange here: nothing open


async def trader(halt_file: Path) -> None:
    """The trader's side: the real handler on SIGUSR2, until SIGTERM."""
    from strategylab.node._trader import _ClusterHalt  # noqa: PLC0415

    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # as the real trader: before anything slow
    os.environ["STRATEGYLAB_CLUSTER_HALT"] = str(halt_file)
    halt = _ClusterHalt.from_environment(_Risky())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    halt.install(loop)
    print(json.dumps({"event": "trader_ready", "pid": os.getpid()}), flush=True)
    await done.wait()
    await halt.close(loop)


# ---------------------------------------------------------------------- the node


async def node(cluster: str, url: str, directory: Path) -> None:
    """The node's side: the real watcher; on a change, the halt file and SIGUSR2."""
    halt_file = directory / "cluster_halt.json"
    write_atomic(halt_file, b'{"halted": false}')
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        *("--role", "trader", "--dir", str(directory)),
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    async with asyncio.timeout(30):
        ready = await child.stdout.readline()  # its SIGUSR2 handler is installed
    assert b"trader_ready" in ready, ready
    relay = asyncio.create_task(_relay(child.stdout))

    def on_change(state: ClusterKillState) -> None:
        kill = state.kill
        body = {
            "halted": state.halted,
            "kill_id": None if kill is None else kill.id,
            "reason": None if kill is None else kill.reason,
        }
        write_atomic(halt_file, json.dumps(body).encode())
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGUSR2)

    watcher = ClusterKillWatcher(
        cluster,
        url,
        state_file=directory / "cluster_kill.json",
        admin_token=TOKEN,
        on_change=on_change,
    )
    await watcher.start()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    print(json.dumps({"event": "node_ready", "pid": os.getpid()}), flush=True)
    await done.wait()
    await watcher.aclose()
    with contextlib.suppress(ProcessLookupError):
        child.terminate()
    await child.wait()
    relay.cancel()


async def _relay(stream: asyncio.StreamReader) -> None:
    """The trader's lines, on to the driver."""
    while line := await stream.readline():
        sys.stdout.buffer.write(line)
        sys.stdout.flush()


# ---------------------------------------------------------------------- the driver


async def _lines(process: asyncio.subprocess.Process, queue: asyncio.Queue[dict[str, Any]]) -> None:
    assert process.stdout is not None
    while line := await process.stdout.readline():
        try:
            queue.put_nowait(json.loads(line))
        except ValueError:
            continue


async def _collect(
    queue: asyncio.Queue[dict[str, Any]], event: str, count: int
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while len(found) < count:
            line = await queue.get()
            if line.get("event") == event:
                found.append(line)
    return found


async def drive(url: str, kills: int) -> list[float]:
    cluster = "bench-" + secrets.token_hex(6)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    processes = []
    readers = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for index in range(NODES):
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    *("--role", "node", "--cluster", cluster, "--redis", url),
                    *("--dir", str(Path(tmp) / f"node{index}")),
                    stdout=asyncio.subprocess.PIPE,
                )
                processes.append(process)
                readers.append(asyncio.create_task(_lines(process, queue)))
            async with asyncio.timeout(30):
                await _collect(queue, "node_ready", NODES)
            latencies: list[float] = []
            with ClusterKillSwitch(cluster, url, admin_token=TOKEN) as switch:
                for number in range(kills):
                    started = time.monotonic()
                    switch.kill(f"bench kill {number}")
                    for line in await _collect(queue, "cluster_halted", NODES):
                        latencies.append(float(line["monotonic"]) - started)
                    switch.clear()
                    await _collect(queue, "cluster_resumed", NODES)
            return latencies
        finally:
            for process in processes:
                if process.returncode is None:
                    process.terminate()
            for process in processes:
                await process.wait()
            for reader in readers:
                reader.cancel()
            client = redis.Redis.from_url(url)
            client.delete(
                f"strategylab:cluster:{cluster}:kill", f"strategylab:cluster:{cluster}:clear"
            )
            client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Cluster kill switch latency (3 nodes).")
    parser.add_argument("--quick", action="store_true", help="20 kills, a few seconds")
    parser.add_argument("--kills", type=int, default=0, help="kills to measure")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", metavar="URL")
    parser.add_argument("--role", choices=("driver", "node", "trader"), default="driver")
    parser.add_argument("--cluster", default="")
    parser.add_argument("--dir", default="")
    args = parser.parse_args(argv)
    if args.role != "driver":
        logging.disable(logging.WARNING)  # the children's log lines would only clutter the table
    if args.role == "trader":
        asyncio.run(trader(Path(args.dir) / "cluster_halt.json"))
        return 0
    if args.role == "node":
        Path(args.dir).mkdir(parents=True, exist_ok=True)
        asyncio.run(node(args.cluster, args.redis, Path(args.dir)))
        return 0
    kills = args.kills or (20 if args.quick else 100)
    try:
        redis.Redis.from_url(args.redis, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        print(f"cluster_kill: Redis at {args.redis} unreachable: {exc}", file=sys.stderr)
        return 1
    began = time.monotonic()
    latencies = asyncio.run(drive(args.redis, kills))
    ms = sorted(x * 1000 for x in latencies)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    print(f"## Cluster kill switch: {NODES} nodes (each with a trader process), {kills} kills\n")
    print("| samples | p50 ms | p99 ms | max ms |")
    print("|---:|---:|---:|---:|")
    print(f"| {len(ms)} | {p50:.2f} | {p99:.2f} | {ms[-1]:.2f} |")
    print("\n| goal | met |")
    print("|---|---|")
    met = "yes" if p99 <= GOAL_P99 * 1000 else "NO"
    print(f"| publish -> every node's trading halted, p99 <= 100 ms | {met} |")
    print(f"\n({time.monotonic() - began:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
