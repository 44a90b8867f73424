"""The exceptions Strategy Lab raises.

Every exception the project defines derives from one root, so callers can catch the project's
failures without catching everyone else's::

    StrategyLabError
    ├── ConfigurationError            a bad setting; names the key and the value (a ValueError)
    └── FaultToleranceError           raised by the resilience primitives themselves
        ├── CircuitOpenError          a breaker rejected the call; carries ``retry_after``
        ├── BulkheadFullError         no slot and no room in the waiting queue
        ├── CallTimeoutError          a guarded call ran past its deadline (also TimeoutError)
        ├── RetryExhaustedError       retries ran out on a rejected result (exceptions re-raise)
        ├── RecoveryRejectedError     too many recoveries running and the queue is full
        ├── ShutdownInProgressError   the emergency shutdown has begun; no new work is taken
        └── AuditIntegrityError       the audit log's hash chain is broken

Every exception the project defines (here and in every other module) survives :mod:`pickle` and
:mod:`copy` with its attributes, whatever its constructor's signature: the root's ``__reduce__``
(:class:`PicklableErrorMixin`, also mixed into the few that derive from a builtin exception alone)
rebuilds the instance without calling ``__init__`` and restores its ``args``, ``__dict__`` and
slots. So an error raised in a process-pool worker reaches the parent intact instead of breaking
the pool.

Third-party exceptions are not wrapped on the hot path: a retry that gives up re-raises the caller's
own last exception. Where a boundary does translate, it does so once, with ``raise ... from exc``.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping

__all__ = [
    "AuditIntegrityError",
    "BulkheadFullError",
    "CallTimeoutError",
    "CircuitOpenError",
    "ConfigurationError",
    "FaultToleranceError",
    "PicklableErrorMixin",
    "RecoveryRejectedError",
    "RetryExhaustedError",
    "ShutdownInProgressError",
    "StrategyLabError",
]


def _rebuild(
    cls: type[BaseException], args: tuple[object, ...], state: dict[str, object]
) -> BaseException:
    """Recreate an exception from :meth:`PicklableErrorMixin.__reduce__`, bypassing ``__init__``."""
    # BaseException.__new__ stores ``args`` (OSError's also derives errno and strerror from them);
    # neither calls __init__, whose signature need not match ``args``. A shallow copy hands the
    # _HeldError wrappers back as they are: unwrap them here.
    args = tuple(_unheld(arg) for arg in args)
    exc = cls.__new__(cls, *args)
    exc.args = args
    for key, value in state.items():
        setattr(exc, key, _unheld(value))
    return exc


def _slot_names(cls: type) -> tuple[str, ...]:
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names.extend(
            name
            for name in ((slots,) if isinstance(slots, str) else slots)
            if not name.startswith("__")
        )
    return tuple(names)


def _reduction(
    exc: BaseException,
) -> tuple[type[BaseException], tuple[object, ...], dict[str, object]]:
    """What :func:`_rebuild` needs: the class, the args and the attributes (dict and slots).

    Exceptions held in the args or the attributes (a breaker's ``last_failure``, a wrapped cause)
    are wrapped so that they, too, are rebuilt without their ``__init__``: a user's exception whose
    constructor does not match its ``args`` must not make this one unpicklable.
    """
    state: dict[str, object] = dict(getattr(exc, "__dict__", {}))
    for name in _slot_names(type(exc)):
        try:
            state[name] = getattr(exc, name)
        except AttributeError:
            continue
    args: tuple[object, ...] = getattr(exc, "args", ())
    return (
        type(exc),
        tuple(_held(arg) for arg in args),
        {key: _held(value) for key, value in state.items()},
    )


class _HeldError:
    """An exception held by another one, pickled and copied the way the mixin does it."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __reduce__(self) -> tuple[object, ...]:
        error = self.error
        try:
            pickle.dumps(type(error))
        except Exception:
            # A class pickle cannot name (defined in a function): keep its name and message.
            stand_in = RuntimeError(f"{type(error).__qualname__}: {error}")
            return (_rebuild, (RuntimeError, stand_in.args, {}))
        return (_rebuild, _reduction(error))


def _held(value: object) -> object:
    return _HeldError(value) if isinstance(value, BaseException) else value


def _unheld(value: object) -> object:
    return value.error if isinstance(value, _HeldError) else value


class PicklableErrorMixin:
    """Makes an exception survive :mod:`pickle` and :mod:`copy` whatever its ``__init__`` takes.

    The default ``BaseException.__reduce__`` rebuilds an exception as ``cls(*self.args)``, which
    raises ``TypeError`` (or builds a wrong instance) as soon as ``__init__`` takes other
    arguments than the ones it passes to ``super().__init__`` — and a ``TypeError`` while
    unpickling a worker's result breaks a whole :class:`concurrent.futures.ProcessPoolExecutor`.
    This ``__reduce__`` instead recreates the instance with ``cls.__new__(cls, *args)`` and
    restores ``args``, the instance ``__dict__`` (attributes and ``__notes__``) and every slot.
    Exceptions it holds (in ``args`` or an attribute, such as
    :attr:`CircuitOpenError.last_failure`) are rebuilt the same way, so a user's exception with an
    unusual constructor travels too (one whose class pickle cannot import becomes a
    ``RuntimeError`` naming it). ``__cause__``, ``__context__`` and ``__traceback__`` are not
    carried, as with any pickled exception.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[object, ...]:
        assert isinstance(self, BaseException)  # noqa: S101 - a mixin for exceptions only
        return (_rebuild, _reduction(self))


class StrategyLabError(PicklableErrorMixin, Exception):
    """Root of every exception Strategy Lab defines."""


class ConfigurationError(StrategyLabError, ValueError):
    """A configuration value is invalid; the message names the key and the value."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        super().__init__(f"{key}={value!r}: {reason}")
        self.key = key
        self.value = value
        self.reason = reason

    def as_option(self, flags: Mapping[str, str] | None = None) -> ConfigurationError:
        """This error named by the command-line option a user typed, not the config field:
        ``max_body`` becomes ``--max-body``, or ``flags[key]`` where the option is spelled
        otherwise (``urls`` -> ``--exchange-url/--backup-url``)."""
        known = {} if flags is None else flags
        flag = known.get(self.key) or "--" + self.key.removeprefix("--").replace("_", "-")
        return ConfigurationError(flag, self.value, self.reason)


class FaultToleranceError(StrategyLabError):
    """Raised by a resilience primitive rather than by the code it protects."""


class CircuitOpenError(FaultToleranceError):
    """A circuit breaker rejected the call without calling the protected function.

    A new instance is raised for every rejected call: re-raising one stored instance would grow its
    traceback on every raise and retain every frame it passed through.

    ``retry_after`` is the number of seconds until the breaker admits a trial call (``0.0`` when
    HALF_OPEN is only saturated with trials, ``math.inf`` when FORCED_OPEN); a
    :class:`~strategylab.fault_tolerance.RetryPolicy` waits that long before its next attempt.
    ``last_failure`` is the last exception the breaker recorded as a failure (``None`` when it has
    recorded none, or when the last failure was a rejected result); it is carried, not chained, so a
    rejection's traceback stays short.

    The three fields live in ``args`` (``(breaker, retry_after, last_failure)``) and are read
    through properties, so that an open breaker's hot path can build the instance with
    ``BaseException.__new__(CircuitOpenError, name, wait, failure)`` and no Python-level
    ``__init__`` frame: about 80 ns less per rejected call (``bench/overhead.py``).
    """

    __slots__ = ()

    def __init__(
        self, breaker: str, retry_after: float, last_failure: BaseException | None = None
    ) -> None:
        # Normalised to three items, whatever way the fields were passed (keywords included).
        self.args = (breaker, retry_after, last_failure)

    @property
    def breaker(self) -> str:
        """The name of the breaker that rejected the call."""
        name: str = self.args[0]
        return name

    @property
    def retry_after(self) -> float:
        """Seconds until the breaker admits a trial call (see the class docstring)."""
        wait: float = self.args[1]
        return wait

    @property
    def last_failure(self) -> BaseException | None:
        """The last exception the breaker recorded as a failure, or ``None``."""
        args = self.args
        failure: BaseException | None = args[2] if len(args) > 2 else None
        return failure

    def __str__(self) -> str:
        return f"circuit {self.breaker!r} is open; retry after {self.retry_after:.3f}s"


class BulkheadFullError(FaultToleranceError):
    """A bulkhead had no free slot and no room left in its waiting queue."""

    def __init__(self, name: str, max_concurrent: int, max_waiting: int) -> None:
        super().__init__(
            f"bulkhead {name!r} is full: {max_concurrent} running, {max_waiting} waiting"
        )
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_waiting = max_waiting


class CallTimeoutError(FaultToleranceError, TimeoutError):
    """A guarded call did not finish within its timeout."""

    def __init__(self, operation: str, timeout: float) -> None:
        super().__init__(f"{operation} did not finish within {timeout:.3f}s")
        self.operation = operation
        self.timeout = timeout


class RetryExhaustedError(FaultToleranceError):
    """Every attempt returned a result the retry policy rejects.

    Only for ``retry_on_result``: when attempts run out on an exception, the caller's own last
    exception is re-raised instead.
    """

    def __init__(self, attempts: int, result: object) -> None:
        super().__init__(f"gave up after {attempts} attempts; last result {result!r} was rejected")
        self.attempts = attempts
        self.result = result


class RecoveryRejectedError(FaultToleranceError):
    """The recovery manager is at its concurrency limit and its queue is full."""


class ShutdownInProgressError(FaultToleranceError):
    """An emergency shutdown has begun; new work is refused."""


class AuditIntegrityError(FaultToleranceError):
    """The audit log's hash chain does not verify: a record was deleted, altered or reordered."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason
