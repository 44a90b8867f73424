"""Shared circuit-breaker state on Redis (issue 14): one transition, one clock, one trial, and a
local fallback that re-joins without flapping. Against the real Redis at 127.0.0.1:6379 (a unique
key prefix per test) and, for the kill, a throwaway ``redis-server`` the test starts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis

from strategylab.distributed import (
    RedisBreakerBackend,
    SharedStateLostError,
    SharedStateUnavailableError,
    breaker_keys,
)
from strategylab.distributed._redis_breaker import _Hysteresis
from strategylab.errors import CircuitOpenError, ConfigurationError
from strategylab.fault_tolerance import (
    BreakerState,
    CircuitBreaker,
    ErrorRecoveryManager,
    ErrorReporter,
    HealthState,
)
from strategylab.testing import FakeClock

REDIS_URL = "redis://127.0.0.1:6379/0"
OPEN, HALF_OPEN, CLOSED = BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0, what: str = "") -> None:
    """Poll ``predicate`` (a state another thread or process changes) for at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.002)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    value = f"test:h1:{uuid.uuid4().hex[:12]}"
    yield value
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(f"{value}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def backends(prefix: str) -> Iterator[Callable[..., RedisBreakerBackend]]:
    """Makes backends on the test's prefix and closes them all at the end."""
    made: list[RedisBreakerBackend] = []

    def make(**kwargs: object) -> RedisBreakerBackend:
        kwargs.setdefault("prefix", prefix)
        backend = RedisBreakerBackend(cast("str", kwargs.pop("url", REDIS_URL)), **kwargs)  # type: ignore[arg-type]
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def shared_hash(prefix: str, name: str) -> dict[str, str]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return cast("dict[str, str]", client.hgetall(breaker_keys(prefix, name)[0]))
    finally:
        client.close()


# ------------------------------------------------------------------------------ child processes

_CHILD = r"""
import json, sys, time
from strategylab.distributed import RedisBreakerBackend
from strategylab.errors import CircuitOpenError
from strategylab.fault_tolerance import BreakerState, CircuitBreaker

url, prefix, name, mode = sys.argv[1:5]
backend = RedisBreakerBackend(url, prefix=prefix)
breaker = CircuitBreaker(name, recovery_timeout=float(sys.argv[5]), shared=backend)
out = {"start_state": breaker.state.value}
if mode == "trip":
    print("ready", flush=True)
    sys.stdin.readline()  # "go" (or EOF: the parent is gone)
    breaker.trip()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        m = backend.metrics()
        if m.published + m.lost >= 1:
            break
        time.sleep(0.002)
    m = backend.metrics()
    out.update(published=m.published, lost=m.lost, state=breaker.state.value)
    try:
        breaker.call(lambda: None)
    except CircuitOpenError as error:
        out["half_open_at"] = time.monotonic() + error.retry_after
else:
    try:
        breaker.call(lambda: None)
    except CircuitOpenError as error:
        out["retry_after"] = error.retry_after
        out["at"] = time.monotonic()
    deadline = time.monotonic() + 3
    while breaker.state is not BreakerState.HALF_OPEN and time.monotonic() < deadline:
        time.sleep(0.0005)
    out["half_open_at"] = time.monotonic()
out["metrics"] = {"adopted": backend.metrics().adopted}
backend.close()
print(json.dumps(out), flush=True)
"""


@contextlib.contextmanager
def children(argvs: list[list[str]]) -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes running :data:`_CHILD`, killed if the test leaves early."""
    procs = [
        subprocess.Popen(  # noqa: S603 (our own interpreter and script)
            [sys.executable, "-c", _CHILD, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)


def result(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    return cast("dict[str, object]", json.loads(out.strip().splitlines()[-1]))


# ------------------------------------------------------------------------------ unit


def test_rejoin_needs_consecutive_pings_over_the_hold_time() -> None:
    """Re-joining needs N pings in a row spanning the hold time; one failure starts over."""
    clock = FakeClock()
    hysteresis = _Hysteresis(3, 1.0)
    assert not hysteresis.record(ok=True, now=clock.monotonic())
    clock.advance(0.6)
    assert not hysteresis.record(ok=True, now=clock.monotonic())
    clock.advance(0.6)
    assert not hysteresis.record(ok=False, now=clock.monotonic())  # a flap resets the streak
    for _ in range(2):
        clock.advance(0.6)
        assert not hysteresis.record(ok=True, now=clock.monotonic())
    clock.advance(0.6)
    assert hysteresis.record(ok=True, now=clock.monotonic())


def test_alternating_pings_never_rejoin() -> None:
    """A Redis that comes and goes every other ping never brings the breakers back."""
    hysteresis = _Hysteresis(2, 0.0)
    assert not any(hysteresis.record(ok=i % 2 == 0, now=float(i)) for i in range(50))


@pytest.mark.parametrize(
    ("key", "kwargs"),
    [
        ("url", {"url": "http://127.0.0.1:6379"}),
        ("prefix", {"prefix": "a*b"}),
        ("timeout", {"timeout": 0}),
        ("rejoin_pings", {"rejoin_pings": 0}),
        ("trial_ttl", {"trial_ttl": math.inf}),
    ],
)
def test_bad_settings_name_the_key(key: str, kwargs: dict[str, object]) -> None:
    """A bad setting raises ConfigurationError naming it."""
    url = cast("str", kwargs.pop("url", REDIS_URL))
    with pytest.raises(ConfigurationError, match=key):
        RedisBreakerBackend(url, **kwargs)  # type: ignore[arg-type]


def test_adopt_sets_the_timer_and_operator_overrides_win() -> None:
    """An adopted OPEN half-opens when its remaining time is up; FORCED_OPEN is kept."""
    clock = FakeClock()
    breaker = CircuitBreaker("adopt", recovery_timeout=30.0, clock=clock)
    seen: list[tuple[BreakerState, BreakerState]] = []
    breaker.add_listener(lambda _b, old, new: seen.append((old, new)))
    assert breaker.adopt(OPEN, 2.5)
    clock.advance(2.4)
    assert breaker.state is OPEN
    clock.advance(0.1)
    assert breaker.state is HALF_OPEN
    assert seen == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]
    breaker.force_open()
    assert not breaker.adopt(CLOSED, 0.0)
    assert breaker.state is BreakerState.FORCED_OPEN


# ------------------------------------------------------------------------------ real Redis


@pytest.mark.integration
def test_concurrent_trips_from_processes_make_one_transition(prefix: str) -> None:
    """Three processes tripping at once make one transition; the others adopt it."""
    with children([[REDIS_URL, prefix, "quotes", "trip", "5"] for _ in range(3)]) as procs:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [result(proc) for proc in procs]
    assert sum(cast("int", r["published"]) for r in results) == 1
    # Each other process lost the race in the script, or had adopted the winner's trip first.
    losers = [r for r in results if r["published"] == 0]
    assert all(cast("int", r["lost"]) + cast("int", r["metrics"]["adopted"]) >= 1 for r in losers)  # type: ignore[index]
    assert {r["state"] for r in results} == {"open"}
    times = [cast("float", r["half_open_at"]) for r in results]
    assert max(times) - min(times) < 0.05  # one retry-after: CLOCK_MONOTONIC is system-wide
    state = shared_hash(prefix, "quotes")
    assert (state["s"], state["e"]) == ("open", "2")  # created (1), tripped once (2)


@pytest.mark.integration
def test_a_new_process_adopts_an_open_breaker_and_half_opens_at_the_shared_time(
    prefix: str, backends: Callable[..., RedisBreakerBackend]
) -> None:
    """A process started while the breaker is open starts OPEN (never resets it) with the
    shared retry-after, and half-opens at the same moment as the process that tripped."""
    breaker = CircuitBreaker("feed", recovery_timeout=2.5, shared=backends())
    breaker.trip()
    wait_for(lambda: shared_hash(prefix, "feed").get("s") == "open", what="the shared trip")
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.call(lambda: None)
    ours = time.monotonic() + rejected.value.retry_after  # CLOCK_MONOTONIC: system-wide
    with children([[REDIS_URL, prefix, "feed", "adopt", "2.5"]]) as procs:
        child = result(procs[0])
    assert child["start_state"] == "open"
    theirs = cast("float", child["at"]) + cast("float", child["retry_after"])
    assert abs(ours - theirs) < 0.05
    assert abs(cast("float", child["half_open_at"]) - ours) < 0.05
    assert shared_hash(prefix, "feed")["e"] in {"2", "3"}  # tripped; maybe half-opened: no reset


@pytest.mark.integration
def test_exactly_one_trial_runs_cluster_wide(
    prefix: str, backends: Callable[..., RedisBreakerBackend]
) -> None:
    """Three breakers half-open together; one trial runs, the others reject as saturated until
    its success is published, and then every one is CLOSED."""
    breakers = [CircuitBreaker("orders", recovery_timeout=0.2, shared=backends()) for _ in range(3)]
    breakers[0].trip()
    wait_for(lambda: all(b.state is OPEN for b in breakers), what="all OPEN")
    wait_for(lambda: all(b.state is HALF_OPEN for b in breakers), what="all HALF_OPEN")
    release = threading.Event()
    ran: list[int] = []
    rejected: list[float] = []
    barrier = threading.Barrier(3)

    def slow(index: int) -> None:
        ran.append(index)
        release.wait(3)

    def trial(index: int) -> None:
        barrier.wait(2)
        try:
            breakers[index].call(slow, index)
        except CircuitOpenError as error:
            rejected.append(error.retry_after)

    threads = [threading.Thread(target=trial, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(ran) + len(rejected) == 3, what="three trial attempts")
    assert len(ran) == 1
    assert rejected == [0.0, 0.0]
    release.set()
    for thread in threads:
        thread.join(3)
    wait_for(lambda: all(b.state is CLOSED for b in breakers), what="all CLOSED")


@pytest.mark.integration
def test_a_trial_that_succeeds_while_its_half_open_move_is_queued_closes_the_cluster(
    prefix: str, backends: Callable[..., RedisBreakerBackend]
) -> None:
    """The common case in a cluster: a process whose OPEN period ends on a call half-opens
    locally (its move queued), claims the trial and succeeds before the publisher ran the
    move. Its HALF_OPEN -> CLOSED must be published against the period its claim was granted
    in, not the OPEN one it knew (that was refused, and the cluster stayed HALF_OPEN with a
    claimed trial nobody settled until ``trial_ttl``). The publisher is held at the seam (its
    script call) so that the race goes the bad way every time."""
    clock = FakeClock()
    opener_backend, racer_backend = backends(), backends(clock=clock, trial_ttl=30.0)
    opener = CircuitBreaker("race", recovery_timeout=0.05, shared=opener_backend)
    racer = CircuitBreaker("race", recovery_timeout=0.05, clock=clock, shared=racer_backend)
    opener.trip()
    wait_for(lambda: racer.state is OPEN, what="the racer adopts OPEN")
    gate = threading.Event()
    script = racer_backend._script

    def held(*, keys: list[str], args: list[str | int]) -> object:
        if args[0] == "move":
            gate.wait(5)
        return script(keys=keys, args=args)

    racer_backend._script = held  # type: ignore[assignment] # the seam the race runs through
    time.sleep(0.06)  # the shared OPEN period (Redis's clock) ends
    clock.advance(1.0)  # and the racer's own
    assert racer.call(lambda: "ok") == "ok"  # the trial: claimed and succeeded
    assert racer.state is CLOSED
    gate.set()
    wait_for(lambda: shared_hash(prefix, "race").get("s") == "closed", what="shared CLOSED")
    wait_for(lambda: opener.state is CLOSED, what="the opener adopts CLOSED")
    assert shared_hash(prefix, "race")["tr"] == "0"
    assert opener.call(lambda: 1) == 1


@pytest.mark.integration
def test_a_claim_whose_process_died_lapses(backends: Callable[..., RedisBreakerBackend]) -> None:
    """A trial claimed by a process that dies is released after ``trial_ttl``."""
    dead, alive = backends(trial_ttl=0.2), backends(trial_ttl=0.2)
    first = CircuitBreaker("lapse", recovery_timeout=0.05, max_wait_in_half_open=None, shared=dead)
    second = CircuitBreaker(
        "lapse", recovery_timeout=0.05, max_wait_in_half_open=None, shared=alive
    )
    first.trip()
    wait_for(lambda: first.state is HALF_OPEN and second.state is HALF_OPEN, what="HALF_OPEN")
    assert dead.claim_trial(first)
    dead.close()  # its trial never reports
    with pytest.raises(CircuitOpenError):
        second.call(lambda: None)
    wait_for(lambda: _succeeds(second), timeout=2.0, what="the claim to lapse")
    assert second.state is CLOSED


def _succeeds(breaker: CircuitBreaker) -> bool:
    try:
        breaker.call(lambda: None)
    except CircuitOpenError:
        return False
    return True


@pytest.mark.integration
def test_two_names_never_collide(prefix: str, backends: Callable[..., RedisBreakerBackend]) -> None:
    """Tripping one name leaves another name's breakers, and keys, alone."""
    one, two = backends(), backends()
    quotes = CircuitBreaker("quotes", shared=one)
    orders_here = CircuitBreaker("orders", shared=one)
    orders_there = CircuitBreaker("orders", shared=two)
    quotes.trip()
    wait_for(lambda: shared_hash(prefix, "quotes").get("s") == "open", what="the trip")
    orders_there.trip()
    wait_for(lambda: orders_here.state is OPEN, what="orders adopted")
    assert shared_hash(prefix, "quotes")["e"] == "2"
    assert shared_hash(prefix, "orders")["e"] == "2"
    with pytest.raises(ConfigurationError, match="name"):
        CircuitBreaker("quotes", shared=one)


@pytest.mark.integration
def test_lost_shared_state_is_created_again_from_the_local_one(
    prefix: str, backends: Callable[..., RedisBreakerBackend]
) -> None:
    """A hash deleted under a running cluster is re-created from the local state, not reset."""
    backend = backends()
    breaker = CircuitBreaker("lost", recovery_timeout=30.0, shared=backend)
    breaker.trip()
    wait_for(lambda: backend.metrics().published == 1, what="the trip published")
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(f"{prefix}:lost:state")
    client.close()
    assert not backend.claim_trial(breaker)  # OPEN: no trial; the hash is created from OPEN
    state = shared_hash(prefix, "lost")
    assert state["s"] == "open"
    assert 25_000 < int(state["ou"]) - int(state["g"]) <= 30_000
    assert backend.metrics().recreated == 1
    assert breaker.state is OPEN


# ------------------------------------------------------------------------------ data lost, keys


def test_key_encoding_is_injective_and_readable() -> None:
    """No two (prefix, name) pairs share a key or a channel, even when prefixes nest or names
    hold ``:`` and ``%``; each key splits back into its pair; plain names are unchanged."""
    prefixes = ["app", "app:ns", "app:", "app%3Ans", "app:ns:x"]
    names = ["ns:x", "x", "ns%3Ax", ":x", "x:", "", "%", "%25", "a%b:c:d"]
    pairs = [(p, n) for p in prefixes for n in names]
    keys = [breaker_keys(p, n) for p, n in pairs]
    assert len({state for state, _ in keys}) == len(pairs)
    assert len({events for _, events in keys}) == len(pairs)
    for (p, n), (state, events) in zip(pairs, keys, strict=True):
        head, encoded, tail = state.rsplit(":", 2)
        assert (head, urllib.parse.unquote(encoded), tail) == (p, n, "state")
        assert events == f"{head}:{encoded}:events"
    assert breaker_keys("app", "orders-v2") == ("app:orders-v2:state", "app:orders-v2:events")
    assert breaker_keys("app", "ns:x")[0] == "app:ns%3Ax:state"


@pytest.mark.integration
def test_nested_prefixes_never_share_a_breaker(
    prefix: str, backends: Callable[..., RedisBreakerBackend]
) -> None:
    """Prefix P + name ``ns:feed`` and prefix ``P:ns`` + name ``feed`` are two breakers: the
    outer backend's ``P:*`` subscription sees the inner one's trip and adopts nothing."""
    outer_backend = backends()
    outer = CircuitBreaker("ns:feed", shared=outer_backend)
    witness = CircuitBreaker("witness", shared=outer_backend)
    witness_peer = CircuitBreaker("witness", shared=backends())
    inner = CircuitBreaker("feed", shared=backends(prefix=f"{prefix}:ns"))
    inner_peer = CircuitBreaker("feed", shared=backends(prefix=f"{prefix}:ns"))
    inner.trip()
    wait_for(lambda: inner_peer.state is OPEN, what="the inner peer to adopt the trip")
    # Published after the inner trip, so the outer subscriber has read that notice by the time
    # it adopts this one (Redis delivers one connection's messages in publish order).
    witness_peer.trip()
    wait_for(lambda: witness.state is OPEN, what="the outer backend to read past the inner trip")
    assert outer.state is CLOSED
    assert shared_hash(prefix, "ns:feed")["s"] == "closed"
    assert shared_hash(f"{prefix}:ns", "feed")["s"] == "open"


@pytest.mark.integration
async def test_a_process_started_after_data_loss_never_closes_the_open_ones(
    prefix: str, backends: Callable[..., RedisBreakerBackend], caplog: pytest.LogCaptureFixture
) -> None:
    """Two processes OPEN 12 s into a 20 s recovery; the shared hash is lost and a new process
    creates it CLOSED. Neither old process closes: one re-asserts OPEN with the 8 s left (one
    transition), the newcomer adopts it, and each old process counts, logs and reports the
    loss."""
    clock = FakeClock()
    manager = StubManager()
    reporter = ErrorReporter(cast("ErrorRecoveryManager", manager), component="breakers")
    try:
        first, second = backends(clock=clock, reporter=reporter), backends(clock=clock)
        olds = [
            CircuitBreaker("venue", recovery_timeout=20.0, clock=clock, shared=backend)
            for backend in (first, second)
        ]
        closed: list[str] = []
        for old in olds:
            old.add_listener(lambda b, _old, new: closed.append(b.name) if new is CLOSED else None)
        olds[0].trip()
        wait_for(lambda: olds[1].state is OPEN, what="the second to adopt the trip")
        clock.advance(12.0)
        lost = redis.Redis.from_url(REDIS_URL)
        lost.delete(breaker_keys(prefix, "venue")[0])
        lost.close()

        newcomer = CircuitBreaker("venue", recovery_timeout=20.0, shared=backends())
        await _until(lambda: newcomer.state is OPEN, "the newcomer to adopt the re-asserted OPEN")
        with pytest.raises(CircuitOpenError) as rejected:
            newcomer.call(lambda: None)
        assert 7.0 < rejected.value.retry_after <= 8.05  # what was left, not a fresh 20 s
        state = shared_hash(prefix, "venue")
        assert (state["s"], state["e"]) == ("open", "2")  # created CLOSED (1), re-asserted (2)
        assert all(old.state is OPEN for old in olds)
        assert closed == []
        assert [b.metrics().recreated for b in (first, second)] == [1, 1]
        await _until(lambda: len(manager.errors) == 1, "the report")
        assert isinstance(manager.errors[0], SharedStateLostError)
        assert "'venue'" in str(manager.errors[0])
        assert sum("lost with Redis's data" in r.getMessage() for r in caplog.records) == 2
    finally:
        await reporter.aclose()


@pytest.mark.integration
def test_a_half_open_breaker_reasserts_its_trial_over_a_new_closed_state(
    prefix: str, backends: Callable[..., RedisBreakerBackend]
) -> None:
    """A HALF_OPEN process with a trial in flight finds (in a script reply, no notice) a new
    generation written CLOSED: it stays HALF_OPEN and puts back HALF_OPEN with its trial, so a
    process that starts then is refused a second trial."""
    backend = backends()
    breaker = CircuitBreaker(
        "probe",
        recovery_timeout=0.05,
        max_wait_in_half_open=9.0,
        half_open_max_calls=1,
        shared=backend,
    )
    breaker.trip()
    wait_for(lambda: breaker.state is HALF_OPEN, what="HALF_OPEN")
    wait_for(lambda: shared_hash(prefix, "probe").get("s") == "half_open", what="shared")
    assert backend.claim_trial(breaker)  # this process's trial is running
    client = redis.Redis.from_url(REDIS_URL)
    seconds, micros = client.time()
    now_ms = seconds * 1000 + micros // 1000
    key = breaker_keys(prefix, "probe")[0]
    client.delete(key)
    fresh = {"s": "closed", "g": now_ms, "e": 1, "ou": now_ms, "hu": -1, "tr": 0, "ok": 0, "tu": 0}
    client.hset(key, mapping=fresh)  # type: ignore[arg-type]
    client.close()
    assert not backend.claim_trial(breaker)  # the reply: a new generation, CLOSED
    wait_for(lambda: shared_hash(prefix, "probe").get("s") == "half_open", what="re-asserted")
    state = shared_hash(prefix, "probe")
    assert (state["g"], state["e"], state["tr"]) == (str(now_ms), "2", "1")
    assert 9_000 <= int(state["hu"]) - now_ms < 9_500  # its max wait, from the re-assertion
    assert breaker.state is HALF_OPEN
    assert backend.metrics().recreated == 1
    late = CircuitBreaker("probe", recovery_timeout=0.05, half_open_max_calls=1, shared=backends())
    assert late.state is HALF_OPEN
    with pytest.raises(CircuitOpenError) as rejected:
        late.call(lambda: None)
    assert rejected.value.retry_after == 0.0  # saturated: the cluster's one trial is running


# ------------------------------------------------------------------------------ Redis killed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclasses.dataclass
class ThrowawayRedis:
    """A ``redis-server`` of the test's own, without persistence, that it may kill."""

    directory: Path
    port: int = dataclasses.field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed")
        self.proc = subprocess.Popen(  # noqa: S603 (redis-server from PATH)
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            wait_for(lambda: _pings(client), what="redis-server to start")
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class StubManager:
    """Records what the reporter hands to the recovery manager."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    async def handle(self, error: BaseException, **_kwargs: object) -> object:
        self.errors.append(error)
        return type("Outcome", (), {"success": False})()


@pytest.mark.integration
async def test_redis_killed_falls_back_reports_and_rejoins_without_flapping() -> None:
    """Redis killed: local fallback, reported once; restarted (data lost): no re-join before
    the hold time however many pings succeed, then one re-join that re-creates the shared
    state from the local one."""
    with tempfile.TemporaryDirectory() as directory:
        server = ThrowawayRedis(Path(directory))
        server.start()
        try:
            clock = FakeClock()
            manager = StubManager()
            reporter = ErrorReporter(
                cast("ErrorRecoveryManager", manager), component="breakers", clock=clock
            )
            backend = RedisBreakerBackend(
                server.url,
                prefix="kill",
                timeout=0.2,
                ping_interval=0.02,
                rejoin_pings=3,
                rejoin_hold=5.0,
                reporter=reporter,
                clock=clock,
            )
            try:
                breaker = CircuitBreaker("venue", recovery_timeout=60.0, shared=backend)
                assert backend.health() is HealthState.HEALTHY
                server.kill()
                await _until(lambda: backend.degraded, "the fallback")
                assert backend.health() is HealthState.DEGRADED
                breaker.trip()  # local only, while Redis is away
                assert breaker.state is OPEN
                await _until(lambda: len(manager.errors) == 1, "the report")
                assert isinstance(manager.errors[0], SharedStateUnavailableError)

                server.start()  # same port, no data
                probe = redis.Redis.from_url(server.url)
                await _until(lambda: _pings(probe), "the restart")
                probe.close()
                await asyncio.sleep(0.3)  # ~15 successful pings, all inside the hold time
                assert backend.degraded
                clock.advance(5.0)
                await _until(lambda: not backend.degraded, "the re-join")
                metrics = backend.metrics()
                assert (metrics.fallbacks, metrics.rejoins) == (1, 1)
                assert metrics.dropped >= 1  # the local trip was not published while away
                client = redis.Redis.from_url(server.url, decode_responses=True)
                assert client.hget("kill:venue:state", "s") == "open"
                client.close()
                await asyncio.sleep(0.1)
                assert (backend.metrics().fallbacks, backend.metrics().rejoins) == (1, 1)
            finally:
                backend.close()
                await reporter.aclose()
        finally:
            server.kill()


async def _until(predicate: Callable[[], bool], what: str, limit: float = 3.0) -> None:
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110 (the backend's threads change it, not a task)
            await asyncio.sleep(0.005)
    assert predicate(), what
