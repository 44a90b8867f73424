"""Every exception the project defines survives pickle and copy with its attributes."""

from __future__ import annotations

import concurrent.futures
import copy
import importlib
import inspect
import pickle
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import strategylab
from strategylab.errors import CircuitOpenError, RetryExhaustedError
from strategylab.market._spool import SpoolCorruption


def _project_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in a module of the package, found by walking it."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(strategylab.__path__, "strategylab."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


EXCEPTIONS = _project_exceptions()


def _risk_rejected(cls: type[BaseException]) -> BaseException:
    from strategylab.market import RiskLimit, RiskRejection  # noqa: PLC0415

    limit = next(iter(RiskLimit))
    return cls(
        RiskRejection(limit=limit, symbol="AAPL", value=2.0, threshold=1.0, reason="too big")
    )


# Constructors whose signature is not ``(*args)``: how to build a sample of each.
SAMPLES: dict[str, Callable[[Any], BaseException]] = {
    "strategylab.chaos._experiment.ExperimentFileError": lambda c: c(
        "method[1].toxic", "lag", "is not one of latency, bandwidth", file="e.toml"
    ),
    "strategylab.chaos._injector.FaultSkippedError": lambda c: c("disk.fill", "needs root"),
    "strategylab.exchange._book.CancelTooLateError": lambda c: c(
        __import__("strategylab.market", fromlist=["ExchangeOrder"]).ExchangeOrder(
            id="o1",
            client_order_id="c1",
            symbol="AAPL",
            side="buy",
            type="market",
            qty=2.0,
            price=None,
            status="filled",
            filled_qty=2.0,
        )
    ),
    "strategylab.market._feed_errors.EndpointBehindError": lambda c: c(
        "ws://backup: behind", (("A", 5, 9),)
    ),
    "strategylab.service._service._BadFieldError": lambda c: c("reason", "required"),
    "strategylab.service._source.AdminActionError": lambda c: c(404, "no breaker named 'x'"),
    "strategylab.fault_tolerance._snapshot.SnapshotError": lambda c: c(
        Path("snapshot.json"), "damaged"
    ),
    "strategylab.fault_tolerance._health.HealthCheckFailedError": lambda c: c(
        "db", "store", "returned False", None
    ),
    "strategylab.fault_tolerance._supervisor.ChildStartError": lambda c: c(
        "node", "feed", "exited 1"
    ),
    "strategylab.fault_tolerance._supervisor.RestartIntensityExceededError": lambda c: c(
        "node", child_id="feed", reason="exited -9", restarts=4, intensity=3, period=5.0
    ),
    "strategylab.errors.ConfigurationError": lambda c: c("max_delay", -1.0, "must be >= 0"),
    "strategylab.errors.CircuitOpenError": lambda c: c("orders", 2.5, ValueError("boom")),
    "strategylab.errors.BulkheadFullError": lambda c: c("db", 4, 16),
    "strategylab.errors.CallTimeoutError": lambda c: c("quote", 0.05),
    "strategylab.errors.RetryExhaustedError": lambda c: c(3, "pending"),
    "strategylab.errors.AuditIntegrityError": lambda c: c("audit.log", 7, "hash mismatch"),
    "strategylab.chaos._checker_inputs.EmittedLogError": lambda c: c(
        Path("emitted.log"), 42, "bad"
    ),
    "strategylab.chaos._proxy.ProxyExistsError": lambda c: c("feed"),
    "strategylab.chaos._proxy.ProxyNotFoundError": lambda c: c("feed"),
    "strategylab.chaos._proxy.ToxicExistsError": lambda c: c("feed", "latency"),
    "strategylab.chaos._proxy.ToxicNotFoundError": lambda c: c("feed", "latency"),
    "strategylab.fault_tolerance._audit_lines._LineError": lambda c: c("not json"),
    "strategylab.exchange._faults.FaultRequestError": lambda c: c("rate", "not a number"),
    "strategylab.market._failover_store.StoreStallError": lambda c: c("postgres", "write", 0.5),
    "strategylab.market._feed_errors.UnknownSymbolsError": lambda c: c("unknown: ZZZ", ("ZZZ",)),
    "strategylab.market._spool_damage.SpoolCorruptionError": lambda c: c(
        [SpoolCorruption(path=Path("1.seg"), offset=16, length=8, moved_to=Path("x"), ranges={})]
    ),
    "strategylab.exchange._book.OrderRequestError": lambda c: c("qty", "must be > 0"),
    "strategylab.research._optimizer.JobCrashedError": lambda c: c({"fast": 5}, "SIGKILL"),
    "strategylab.research._optimizer.JobError": lambda c: c({"fast": 5}, "ValueError: x"),
    "strategylab.research._optimizer.OptimizationTimeoutError": lambda c: c({"fast": 5}, 2.0, 0.5),
    "strategylab.research._optimizer.WorkerStartError": lambda c: c("job", "no module"),
    "strategylab.trading._orders.AmbiguousOrderError": lambda c: c("cid-1", TimeoutError("t")),
    "strategylab.trading._orders.ExchangeUnavailableError": lambda c: c("503", status=503),
    "strategylab.trading._orders.OrderApiError": lambda c: c("bad", status=400),
    "strategylab.trading._orders.OrderRefusedError": lambda c: c("bad", status=422, field="qty"),
    "strategylab.trading._orders.RateLimitedError": lambda c: c("slow down", retry_after=1.5),
    "strategylab.trading._risk.RiskRejectedError": _risk_rejected,
    "strategylab.market._store.StoreCorruptedError": lambda c: c(
        Path("ticks.db"), "quick_check: page 9 is never used", Path("ticks.db.corrupt-x")
    ),
    "strategylab.research._frame.TickDataError": lambda c: c(
        "bars.csv", "not a number: 'x'", row=12, column="Close", line_offset=1
    ),
    "strategylab.distributed._kill.ClusterKillError": lambda c: c(
        "redis://127.0.0.1:1: unreachable", usage=False, unreachable=True
    ),
    "strategylab.distributed._leases.SymbolSetMismatchError": lambda c: c(
        "desk", ("MSFT", "AAPL"), "node-b", ("AAPL",)
    ),
    "strategylab.market._pg_fence.FencedError": lambda c: c(
        "AAPL", 3, 4, owner="node-b", symbols=("AAPL", "MSFT"), rows=120
    ),
    "strategylab.research._import.ImportFailedError": lambda c: c(
        "interrupted; kept: 50 ticks, seq 1..50", written=50, first_seq=1
    ),
}


def _generic(cls: type[BaseException]) -> bool:
    """Whether the constructor takes ``*args`` the way ``BaseException`` does."""
    init = next(k.__dict__["__init__"] for k in cls.__mro__ if "__init__" in k.__dict__)
    if init is BaseException.__init__ or not inspect.isfunction(init):
        return True  # a builtin exception's __init__: it takes *args
    params = list(inspect.signature(init).parameters.values())[1:]
    return all(p.kind in {p.VAR_POSITIONAL, p.VAR_KEYWORD} for p in params)


def _sample(name: str, cls: type[BaseException]) -> BaseException:
    if name in SAMPLES:
        return SAMPLES[name](cls)
    assert _generic(cls), f"{name} takes {inspect.signature(cls)}: add a sample to SAMPLES"
    return cls("boom", 7)


def _state(exc: BaseException) -> dict[str, object]:
    """Everything an instance carries: args, notes, attributes and slots, compared by repr."""
    state: dict[str, object] = {"args": repr(exc.args), "str": str(exc)}
    state.update({k: repr(v) for k, v in vars(exc).items()})
    for klass in type(exc).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if not slot.startswith("__") and hasattr(exc, slot):
                state[slot] = repr(getattr(exc, slot))
    return state


def test_the_walk_finds_the_project_exceptions() -> None:
    """The package walk finds the exceptions of every layer, private ones included."""
    assert "strategylab.errors.RetryExhaustedError" in EXCEPTIONS
    assert "strategylab.market._feed_errors.TickRangeLostError" in EXCEPTIONS
    assert "strategylab.fault_tolerance._audit_lines._LineError" in EXCEPTIONS
    assert len(EXCEPTIONS) >= 40


@pytest.mark.parametrize(
    "round_trip",
    [
        pytest.param(lambda e: pickle.loads(pickle.dumps(e)), id="pickle"),  # noqa: S301
        pytest.param(lambda e: pickle.loads(pickle.dumps(e, protocol=0)), id="pickle-0"),  # noqa: S301
        pytest.param(copy.copy, id="copy"),
        pytest.param(copy.deepcopy, id="deepcopy"),
    ],
)
@pytest.mark.parametrize("name", sorted(EXCEPTIONS))
def test_exception_round_trips_with_its_attributes(
    name: str, round_trip: Callable[[BaseException], BaseException]
) -> None:
    """The copy has the same type, args, message, attributes, slots and notes."""
    original = _sample(name, EXCEPTIONS[name])
    original.add_note("seen in a worker")
    restored = round_trip(original)
    assert type(restored) is type(original)
    assert _state(restored) == _state(original)
    assert restored.__notes__ == ["seen in a worker"]


def test_retry_exhausted_error_keeps_its_fields() -> None:
    """The issue's example: attempts and result come back, and so does the message."""
    restored = pickle.loads(pickle.dumps(RetryExhaustedError(3, "pending")))  # noqa: S301
    assert (restored.attempts, restored.result) == (3, "pending")
    assert "3 attempts" in str(restored)


def test_circuit_open_error_keeps_retry_after_and_last_failure() -> None:
    """Slots (breaker, retry_after, last_failure) survive, the last failure included."""
    restored = copy.deepcopy(CircuitOpenError("orders", 1.25, ConnectionError("reset")))
    assert (restored.breaker, restored.retry_after) == ("orders", 1.25)
    assert isinstance(restored.last_failure, ConnectionError)
    assert restored.last_failure.args == ("reset",)


def _raise_exhausted(attempts: int) -> None:
    raise RetryExhaustedError(attempts, "pending")


def _square(x: int) -> int:
    return x * x


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_error_raised_in_a_process_pool_worker_reaches_the_parent() -> None:
    """A worker's RetryExhaustedError arrives intact and the pool keeps working."""
    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool:
        failed = pool.submit(_raise_exhausted, 4)
        with pytest.raises(RetryExhaustedError) as info:
            failed.result(timeout=30)
        assert (info.value.attempts, info.value.result) == (4, "pending")
        assert pool.submit(_square, 7).result(timeout=30) == 49


class UserError(Exception):
    """A user's exception whose constructor does not match its args, like many in the wild."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def _local_error() -> BaseException:
    class HiddenError(Exception):
        pass

    return HiddenError("no importable class")


@pytest.mark.parametrize(
    "round_trip",
    [
        pytest.param(lambda e: pickle.loads(pickle.dumps(e)), id="pickle"),  # noqa: S301
        pytest.param(copy.copy, id="copy"),
        pytest.param(copy.deepcopy, id="deepcopy"),
    ],
)
def test_circuit_open_error_carries_a_users_exception_as_last_failure(
    round_trip: Callable[[BaseException], BaseException],
) -> None:
    """A last_failure whose own pickling would fail is rebuilt with its attributes."""
    restored = round_trip(CircuitOpenError("orders", 3.0, UserError(503, "down")))
    assert isinstance(restored, CircuitOpenError)
    failure = restored.last_failure
    assert isinstance(failure, UserError)
    assert (failure.code, failure.args) == (503, ("503: down",))


def test_a_held_exception_of_an_unimportable_class_becomes_a_named_runtime_error() -> None:
    """A class pickle cannot import is carried as a RuntimeError naming it, not a failure."""
    restored = pickle.loads(pickle.dumps(CircuitOpenError("q", 1.0, _local_error())))  # noqa: S301
    assert isinstance(restored.last_failure, RuntimeError)
    assert "HiddenError: no importable class" in str(restored.last_failure)


def _raise_open_with_user_failure() -> None:
    raise CircuitOpenError("orders", 2.0, UserError(429, "slow down"))


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_circuit_open_error_with_a_users_failure_crosses_a_process_pool() -> None:
    """The pool stays usable and the parent sees the breaker's last failure."""
    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool:
        with pytest.raises(CircuitOpenError) as info:
            pool.submit(_raise_open_with_user_failure).result(timeout=30)
        assert isinstance(info.value.last_failure, UserError)
        assert info.value.last_failure.code == 429
        assert pool.submit(_square, 6).result(timeout=30) == 36
