"""Shared breaker state on Redis: how fast a transition reaches the other processes, and what the
backend costs a CLOSED call.

Run (Redis on 127.0.0.1:6379, or ``--redis URL``)::

    python bench/cluster_breaker.py            # 60 rounds of transitions, ~10 s
    python bench/cluster_breaker.py --quick    # 8 rounds, a few seconds (CI)

Three processes share one breaker through :class:`RedisBreakerBackend`. Process 0 drives the
transitions (CLOSED->OPEN by a trip, OPEN->HALF_OPEN by its timer, HALF_OPEN->CLOSED by a trial
success, HALF_OPEN->OPEN by a trial failure); every process records each transition its listeners
see with ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process of the machine). The
propagation latency of a transition is a peer's time minus process 0's; p50/p99 per kind, goal
<= 50 ms p99 (issue 14). The CLOSED-path cost is measured in this process, both sides in one run
(interleaved rounds, best round each): a guarded call with and without the backend attached,
goal ratio ~1.0 (the backend is never consulted on that path). A missed goal is reported, not an
exit 1.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
import uuid
from multiprocessing.connection import Connection

import redis

from strategylab.distributed import RedisBreakerBackend
from strategylab.errors import CircuitOpenError
from strategylab.fault_tolerance import BreakerState, CircuitBreaker

RECOVERY = 0.05
"""Seconds OPEN: short, so that a round is quick; process 0 polls its timer."""
SETTLE = 0.02
"""Seconds the driver leaves between steps for the peers to adopt."""
KINDS = ("closed->open", "open->half_open", "half_open->closed", "half_open->open")
GOAL_P99 = 0.050
GOAL_RATIO = 1.10


class TrialFailedError(Exception):
    """The failure process 0's trial raises on purpose."""


def node(url: str, prefix: str, conn: Connection) -> None:
    """One process of the cluster: follow commands, log every transition its breaker makes."""
    log: list[tuple[float, str]] = []
    backend = RedisBreakerBackend(url, prefix=prefix)
    breaker = CircuitBreaker(
        "bench",
        recovery_timeout=RECOVERY,
        max_wait_in_half_open=None,
        shared=backend,
        listeners=[
            lambda _b, old, new: log.append((time.monotonic(), f"{old.value}->{new.value}"))
        ],
    )
    conn.send("ready")
    while True:
        command = conn.recv()
        if command == "trip":
            breaker.trip()
        elif command == "half_open":
            deadline = time.monotonic() + 2.0
            while breaker.state is not BreakerState.HALF_OPEN and time.monotonic() < deadline:
                time.sleep(0.0002)
        elif command in {"succeed", "fail"}:
            try:
                breaker.call(_trial, command == "fail")
            except (CircuitOpenError, TrialFailedError):
                pass
        elif command == "stop":
            break
        conn.send("done")
    backend.close()
    conn.send(log)


def _trial(fail: bool) -> None:
    if fail:
        raise TrialFailedError


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def propagation(url: str, rounds: int) -> dict[str, list[float]]:
    """Latencies (seconds) per transition kind, from process 0 to each of two peers."""
    prefix = f"bench:cluster-breaker:{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    pipes = [ctx.Pipe() for _ in range(3)]
    procs = [ctx.Process(target=node, args=(url, prefix, child), daemon=True) for _, child in pipes]
    for proc in procs:
        proc.start()
    try:
        logs = _drive([parent for parent, _ in pipes], rounds)
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        _forget(url, prefix)
    return _latencies(logs)


def _drive(nodes: list[Connection], rounds: int) -> list[list[tuple[float, str]]]:
    """Make node 0 run ``rounds`` rounds of transitions; every node's log."""
    for conn in nodes:
        if not conn.poll(30) or conn.recv() != "ready":
            raise RuntimeError("a node did not start")
    driver = nodes[0]

    def step(command: str) -> None:
        driver.send(command)
        if not driver.poll(10):
            raise RuntimeError(f"node 0 did not finish {command!r}")
        driver.recv()
        time.sleep(SETTLE)

    for index in range(rounds):
        step("trip")
        step("half_open")
        if index % 2:
            step("fail")
            step("half_open")
        step("succeed")
    logs: list[list[tuple[float, str]]] = []
    for conn in nodes:
        conn.send("stop")
        if not conn.poll(10):
            raise RuntimeError("a node did not stop")
        logs.append(conn.recv())
    return logs


def _forget(url: str, prefix: str) -> None:
    """Delete the benchmark's keys."""
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def _latencies(logs: list[list[tuple[float, str]]]) -> dict[str, list[float]]:
    """Pair each of process 0's transitions with the same kind's next one in each peer."""
    origin = logs[0]
    found: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for peer in logs[1:]:
        cursor = 0
        for position, (at, kind) in enumerate(origin):
            until = origin[position + 1][0] if position + 1 < len(origin) else float("inf")
            while cursor < len(peer) and peer[cursor][0] < at - 0.005:
                cursor += 1
            for seen_at, seen_kind in peer[cursor:]:
                if seen_at >= until:
                    break
                if seen_kind == kind:
                    found[kind].append(max(0.0, seen_at - at))
                    break
    return found


def _bare() -> int:
    return 1


def closed_overhead(url: str, *, quick: bool) -> tuple[float, float]:
    """ns per CLOSED call through ``wrap``, without and with the backend attached."""
    prefix = f"bench:cluster-breaker:{uuid.uuid4().hex[:8]}"
    backend = RedisBreakerBackend(url, prefix=prefix)
    try:
        plain = CircuitBreaker("plain").wrap(_bare)
        shared = CircuitBreaker("shared", shared=backend).wrap(_bare)
        calls = 50_000 if quick else 200_000
        best = {"plain": float("inf"), "shared": float("inf")}
        for _ in range(5 if quick else 15):
            for label, fn in (("plain", plain), ("shared", shared)):
                start = time.perf_counter_ns()
                for _ in range(calls):
                    fn()
                best[label] = min(best[label], (time.perf_counter_ns() - start) / calls)
    finally:
        backend.close()
        _forget(url, prefix)
    return best["plain"], best["shared"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Shared breaker propagation and overhead.")
    parser.add_argument("--quick", action="store_true", help="8 rounds, a few seconds")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of transitions")
    args = parser.parse_args(argv)
    rounds = args.rounds or (8 if args.quick else 60)
    try:
        redis.Redis.from_url(args.redis, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        print(f"cluster_breaker: Redis at {args.redis} unreachable: {exc}", file=sys.stderr)
        return 1
    started = time.monotonic()
    found = propagation(args.redis, rounds)
    plain, shared = closed_overhead(args.redis, quick=args.quick)

    print(f"## Shared breaker state: 3 processes, {rounds} rounds\n")
    print("| transition | samples | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    worst = 0.0
    for kind in KINDS:
        values = found[kind]
        if not values:
            print(f"| {kind} | 0 | - | - | - |")
            continue
        p99 = _pct(values, 0.99)
        worst = max(worst, p99)
        print(
            f"| {kind} | {len(values)} | {statistics.median(values) * 1e3:.2f} | "
            f"{p99 * 1e3:.2f} | {max(values) * 1e3:.2f} |"
        )
    ratio = shared / plain
    print("\n| CLOSED call (wrap) | ns/call |")
    print("|---|---:|")
    print(f"| without backend | {plain:.0f} |")
    print(f"| with RedisBreakerBackend | {shared:.0f} |")
    print(f"| ratio | {ratio:.2f} |")
    missing = [kind for kind in KINDS if not found[kind]]
    print("\n| goal | met |")
    print("|---|---|")
    met = worst <= GOAL_P99 and not missing
    print(f"| propagation p99 <= 50 ms, every kind | {'yes' if met else 'NO'} |")
    print(f"| CLOSED-path ratio <= {GOAL_RATIO:.2f} | {'yes' if ratio <= GOAL_RATIO else 'NO'} |")
    print(f"\n({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
