"""Per-call overhead of our retry and circuit breaker, side by side with the libraries people use.

Run (after ``pip install -e '.[bench]'``)::

    python bench/overhead.py          # full run, about a minute
    python bench/overhead.py --quick    # a short smoke pass

Every case wraps the same trivial function and is timed in this one process, interleaved round by
round, taking each case's best round. The figures that matter are the *ratios* and the nanoseconds a
layer *adds* over the bare call in the same run, not the absolute times, which depend on the
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiobreaker
import backoff
import purgatory
import pybreaker
import stamina
import tenacity

from strategylab.fault_tolerance import CircuitBreaker, CircuitOpenError, Pipeline, RetryPolicy

SyncFn = Callable[[], Any]
AsyncFn = Callable[[], Awaitable[Any]]


def bare() -> int:
    return 1


async def abare() -> int:
    return 1


@dataclass(slots=True)
class Case:
    group: str
    name: str
    ours: bool
    fn: Any
    catch: type[BaseException] | tuple[type[BaseException], ...] = ()
    best_ns: float = float("inf")
    calls: int = 0
    """Calls per round, sized at warm-up so that every round of every case takes about as long."""


def _calls_for(per_call_ns: float, n: int) -> int:
    # A slow library gets fewer calls per round, not a longer round: ROUND_NS per case.
    return max(1_000, min(n, int(ROUND_NS / max(per_call_ns, 1.0))))


ROUND_NS = 60_000_000


def _sync_loop(fn: SyncFn, catch: Any, n: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(n):
        try:
            fn()
        except catch:
            pass
    return time.perf_counter_ns() - start


async def _async_loop(fn: AsyncFn, catch: Any, n: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(n):
        try:
            await fn()
        except catch:
            pass
    return time.perf_counter_ns() - start


# --------------------------------------------------------------------------------------- cases


def _tenacity_retry() -> Any:
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_exponential_jitter(), reraise=True
    )


def _backoff_retry() -> Any:
    return backoff.on_exception(backoff.expo, Exception, max_tries=3)


def _stamina_retry() -> Any:
    return stamina.retry(on=Exception, attempts=3)


def _our_retry() -> RetryPolicy:
    return RetryPolicy(max_attempts=3, base_delay=0.1, max_delay=5.0)


def sync_success_cases() -> list[Case]:
    group = "sync success"
    pyb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    pur = purgatory.SyncCircuitBreakerFactory().get_breaker("bench", threshold=5, ttl=30)

    def purgatory_call() -> int:
        with pur:
            return bare()

    retry, breaker = _our_retry(), CircuitBreaker("bench-sync", failure_threshold=5)
    retry2, breaker2 = _our_retry(), CircuitBreaker("bench-sync-2", failure_threshold=5)
    return [
        Case(group, "bare call", ours=False, fn=bare),
        Case(group, "strategylab RetryPolicy", ours=True, fn=retry.wrap(bare)),
        Case(group, "strategylab CircuitBreaker", ours=True, fn=breaker.wrap(bare)),
        Case(
            group,
            "strategylab retry + breaker",
            ours=True,
            fn=Pipeline(retry2, breaker2).wrap(bare),
        ),
        Case(group, "tenacity retry", ours=False, fn=_tenacity_retry()(bare)),
        Case(group, "stamina retry", ours=False, fn=_stamina_retry()(bare)),
        Case(group, "backoff retry", ours=False, fn=_backoff_retry()(bare)),
        Case(group, "pybreaker", ours=False, fn=pyb(bare)),
        Case(group, "purgatory breaker", ours=False, fn=purgatory_call),
        Case(group, "tenacity + pybreaker", ours=False, fn=_tenacity_retry()(pyb(bare))),
    ]


async def async_success_cases() -> list[Case]:
    group = "async success"
    aio = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=dt.timedelta(seconds=30))
    pur = await purgatory.AsyncCircuitBreakerFactory().get_breaker("bench", threshold=5, ttl=30)

    async def purgatory_call() -> int:
        async with pur:
            return await abare()

    retry, breaker = _our_retry(), CircuitBreaker("bench-async", failure_threshold=5)
    retry2, breaker2 = _our_retry(), CircuitBreaker("bench-async-2", failure_threshold=5)
    return [
        Case(group, "bare call", ours=False, fn=abare),
        Case(group, "strategylab RetryPolicy", ours=True, fn=retry.awrap(abare)),
        Case(group, "strategylab CircuitBreaker", ours=True, fn=breaker.awrap(abare)),
        Case(
            group,
            "strategylab retry + breaker",
            ours=True,
            fn=Pipeline(retry2, breaker2).awrap(abare),
        ),
        Case(group, "tenacity retry", ours=False, fn=_tenacity_retry()(abare)),
        Case(group, "stamina retry", ours=False, fn=_stamina_retry()(abare)),
        Case(group, "backoff retry", ours=False, fn=_backoff_retry()(abare)),
        Case(group, "aiobreaker", ours=False, fn=aio(abare)),
        Case(group, "purgatory breaker", ours=False, fn=purgatory_call),
        Case(group, "tenacity + aiobreaker", ours=False, fn=_tenacity_retry()(aio(abare))),
    ]


def _fail() -> int:
    raise ConnectionError


async def _afail() -> int:
    raise ConnectionError


def sync_reject_cases() -> list[Case]:
    group = "sync rejection (open breaker)"
    ours = CircuitBreaker("bench-open", failure_threshold=1, recovery_timeout=1e9)
    ours.trip()
    pyb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=1e9)
    pyb.open()
    pur = purgatory.SyncCircuitBreakerFactory().get_breaker("bench-open", threshold=1, ttl=1e9)
    try:
        with pur:
            _fail()
    except ConnectionError:
        pass

    def purgatory_call() -> int:
        with pur:
            return bare()

    return [
        Case(group, "bare call", ours=False, fn=bare),
        Case(
            group,
            "strategylab CircuitBreaker",
            ours=True,
            fn=ours.wrap(bare),
            catch=CircuitOpenError,
        ),
        Case(group, "pybreaker", ours=False, fn=pyb(bare), catch=pybreaker.CircuitBreakerError),
        Case(group, "purgatory breaker", ours=False, fn=purgatory_call, catch=Exception),
    ]


async def async_reject_cases() -> list[Case]:
    group = "async rejection (open breaker)"
    ours = CircuitBreaker("bench-aopen", failure_threshold=1, recovery_timeout=1e9)
    ours.trip()
    aio = aiobreaker.CircuitBreaker(fail_max=1, timeout_duration=dt.timedelta(days=365))
    aio.open()
    factory = purgatory.AsyncCircuitBreakerFactory()
    pur = await factory.get_breaker("bench-aopen", threshold=1, ttl=1e9)
    try:
        async with pur:
            await _afail()
    except ConnectionError:
        pass

    async def purgatory_call() -> int:
        async with pur:
            return await abare()

    return [
        Case(group, "bare call", ours=False, fn=abare),
        Case(
            group,
            "strategylab CircuitBreaker",
            ours=True,
            fn=ours.awrap(abare),
            catch=CircuitOpenError,
        ),
        Case(group, "aiobreaker", ours=False, fn=aio(abare), catch=aiobreaker.CircuitBreakerError),
        Case(group, "purgatory breaker", ours=False, fn=purgatory_call, catch=Exception),
    ]


# ------------------------------------------------------------------------------------ running


def run_sync(cases: list[Case], n: int, rounds: int) -> None:
    for case in cases:  # warm up, and size the rounds
        case.calls = _calls_for(_sync_loop(case.fn, case.catch or (), 1000) / 1000, n)
    for _ in range(rounds):
        for case in cases:
            gc.collect()
            ns = _sync_loop(case.fn, case.catch or (), case.calls)
            case.best_ns = min(case.best_ns, ns / case.calls)


async def run_async(cases: list[Case], n: int, rounds: int) -> None:
    for case in cases:
        case.calls = _calls_for(await _async_loop(case.fn, case.catch or (), 1000) / 1000, n)
    for _ in range(rounds):
        for case in cases:
            gc.collect()
            ns = await _async_loop(case.fn, case.catch or (), case.calls)
            case.best_ns = min(case.best_ns, ns / case.calls)


def retained_after_rejections(fn: Any, catch: Any, *, is_async: bool, n: int) -> int:
    """Bytes still allocated after ``n`` rejected calls (and a collection)."""

    def run() -> object:
        if is_async:
            return asyncio.run(_async_loop(fn, catch, n))
        return _sync_loop(fn, catch, n)

    run()  # the first run pays for one-off allocations (caches, the event loop's internals)
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    run()
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return max(after - before, 0)


def table(cases: list[Case]) -> list[str]:
    base = cases[0].best_ns
    lines = [
        f"| {cases[0].group} | ns/call | added ns | × bare |",
        "|---|---:|---:|---:|",
    ]
    for case in cases:
        name = f"**{case.name}**" if case.ours else case.name
        lines.append(
            f"| {name} | {case.best_ns:,.0f} | {case.best_ns - base:,.0f} "
            f"| {case.best_ns / base:.2f} |"
        )
    return lines


def added(cases: list[Case], name: str) -> float:
    base = cases[0].best_ns
    return next(c.best_ns for c in cases if c.name == name) - base


def cheapest_other(cases: list[Case]) -> tuple[str, float]:
    base = cases[0].best_ns
    others = [(c.name, c.best_ns - base) for c in cases[1:] if not c.ours]
    return min(others, key=lambda item: item[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke pass")
    args = parser.parse_args(argv)
    n, rounds, n_mem = (20_000, 3, 20_000) if args.quick else (200_000, 7, 100_000)

    sync_ok = sync_success_cases()
    run_sync(sync_ok, n, rounds)
    sync_rej = sync_reject_cases()
    run_sync(sync_rej, n, rounds)

    async def _async_part() -> tuple[list[Case], list[Case]]:
        ok = await async_success_cases()
        await run_async(ok, n, rounds)
        rej = await async_reject_cases()
        await run_async(rej, n, rounds)
        return ok, rej

    async_ok, async_rej = asyncio.run(_async_part())

    print(
        f"Python {sys.version.split()[0]}; up to {n:,} calls per round "
        f"(about {ROUND_NS / 1e6:.0f} ms per case), best of {rounds} rounds\n"
    )
    for cases in (sync_ok, async_ok, sync_rej, async_rej):
        print("\n".join(table(cases)))
        print()

    ours_retained_kib = 0.0
    print(f"| memory retained after {n_mem:,} rejections | KiB |\n|---|---:|")
    for cases, is_async in ((sync_rej, False), (async_rej, True)):
        for case in cases[1:]:
            fresh = sync_reject_cases() if not is_async else asyncio.run(async_reject_cases())
            twin = next(c for c in fresh if c.name == case.name)
            kib = retained_after_rejections(twin.fn, twin.catch, is_async=is_async, n=n_mem) / 1024
            mode = "async" if is_async else "sync"
            if case.ours:
                ours_retained_kib = max(ours_retained_kib, kib)
            print(f"| {case.name} ({mode}) | {kib:,.1f} |")
    print()

    goals = []
    composed_sync = added(sync_ok, "strategylab retry + breaker")
    composed_async = added(async_ok, "strategylab retry + breaker")
    reject_sync = added(sync_rej, "strategylab CircuitBreaker")
    reject_async = added(async_rej, "strategylab CircuitBreaker")
    goals.append(
        ("composed retry + breaker adds ≤ 500 ns (sync)", composed_sync <= 500, composed_sync)
    )
    goals.append(
        ("composed retry + breaker adds ≤ 600 ns (async)", composed_async <= 600, composed_async)
    )
    goals.append(
        ("open breaker rejects in ≤ 600 ns (sync, added)", reject_sync <= 600, reject_sync)
    )
    goals.append(
        ("open breaker rejects in ≤ 600 ns (async, added)", reject_async <= 600, reject_async)
    )
    goals.append(
        (
            "no memory growth while open (≤ 4 KiB retained, event-loop noise included)",
            ours_retained_kib <= 4,
            ours_retained_kib,
        )
    )
    for label, cases, ours in (
        ("sync composed", sync_ok, composed_sync),
        ("async composed", async_ok, composed_async),
        ("sync rejection", sync_rej, reject_sync),
        ("async rejection", async_rej, reject_async),
    ):
        other, cost = cheapest_other(cases)
        ratio = cost / ours if ours > 0 else float("inf")
        goals.append((f"{label} ≥ 3× cheaper than {other} ({ratio:.1f}×)", ratio >= 3, ratio))
    print("| goal | met |\n|---|---|")
    for label, met, _ in goals:
        print(f"| {label} | {'yes' if met else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
