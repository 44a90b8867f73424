"""The pipeline: several policies around one call, composed once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from ._fused import fuse_async, fuse_sync
from ._timeout import Timeout, abandon_aware
from ._typing import DecoratorMixin, Policy, refuse_coroutine_function, refuse_generator

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Pipeline"]

P = ParamSpec("P")
R = TypeVar("R")


class Pipeline(DecoratorMixin):
    """Policies around one call, outermost first: ``Pipeline(a, b, c)`` guards ``a(b(c(fn)))``.

    A pipeline is itself a policy (``wrap``, ``awrap``, ``call``, ``acall``, ``@pipeline``), so it
    can be a layer of another pipeline (whose layers it then joins). Composition happens once:
    ``wrap(fn)`` returns the outermost layer's own wrapper, so a call through a pipeline costs
    exactly the sum of its layers, with no frame of the pipeline's own. ``call``/``acall`` thread
    the call through each layer's ``call``/``acall`` without building wrappers per call.

    :meth:`Pipeline.of` builds the recommended order, **fallback ▸ total timeout ▸ retry ▸ breaker
    ▸ timeout ▸ bulkhead** (Polly v8's and resilience4j's order, with the bulkhead innermost),
    for these reasons:

    - *fallback* outermost: it answers whatever is left after every other layer gave up, a timeout,
      an open circuit, a full bulkhead or the last retried error alike.
    - *total timeout* outside the retry: it bounds the whole retried call, backoff sleeps
      included, which is the deadline the caller cares about.
    - *retry* outside the breaker: every attempt goes through the breaker, so the breaker counts
      each failure and trips on them, and an open circuit's
      :class:`~strategylab.errors.CircuitOpenError` reaches the retry, whose ``retry_on``
      decides whether to wait and try again or give up (waiting the breaker's ``retry_after``).
    - *timeout* (per attempt) inside the breaker: an attempt that runs past it ends in
      :class:`~strategylab.errors.CallTimeoutError`, a failure that the breaker counts and trips on
      and that the retry may retry. Outside the breaker, a hung call would be cancelled before the
      breaker saw an outcome, and the breaker would stay CLOSED however often it hung.
    - *bulkhead* innermost: a slot is held only while the protected function really runs, never
      during a retry's backoff or a rejected attempt; a call the breaker rejects costs no slot. It
      sits inside the attempt timeout, so the time spent queued for a slot counts against the
      attempt, and a sync call abandoned by its timeout keeps its slot until it really returns
      (the bulkhead bounds the threads busy on the dependency, not the callers waiting).

    A sync :class:`~strategylab.fault_tolerance.Timeout` cannot stop its worker thread: the layers
    inside it keep running there after the caller got its ``CallTimeoutError``. The pipeline makes
    its innermost layer :func:`abandon_aware`, so once the timeout has expired no layer inside it
    records anything more for that call (a late success is never counted by the breaker) and a
    retry inside it starts no further attempt.

    Generator functions are refused with :class:`TypeError`: the layers would judge the call that
    creates the generator, not the iteration where the work and the errors happen.
    """

    __slots__ = ("_abandonable", "_acalls", "_calls", "_policies")

    def __init__(self, *policies: Policy) -> None:
        flat: list[Policy] = []
        for index, policy in enumerate(policies):
            if isinstance(policy, Pipeline):
                flat.extend(policy.policies)
            elif isinstance(policy, Policy):
                flat.append(policy)
            else:
                raise TypeError(
                    f"policies[{index}]={policy!r}: not a policy (needs wrap, awrap, call, acall)"
                )
        self._policies: tuple[Policy, ...] = tuple(flat)
        # A sync timeout with layers inside it: those layers must not record an abandoned call.
        self._abandonable = any(isinstance(p, Timeout) for p in flat[:-1])
        # Bound methods made once, so call/acall allocate none per call.
        self._calls: tuple[Callable[..., Any], ...] = tuple(p.call for p in flat)
        self._acalls: tuple[Callable[..., Any], ...] = tuple(p.acall for p in flat)

    @classmethod
    def of(
        cls,
        *,
        fallback: Policy | None = None,
        total_timeout: Policy | None = None,
        retry: Policy | None = None,
        breaker: Policy | None = None,
        timeout: Policy | None = None,
        bulkhead: Policy | None = None,
    ) -> Pipeline:
        """Compose the given policies as fallback ▸ total_timeout ▸ retry ▸ breaker ▸ timeout ▸
        bulkhead.

        ``timeout`` bounds each attempt (inside the breaker, which counts its expiry as a failure);
        ``total_timeout`` bounds the whole call, retries and their backoff included. Either may be
        left out; both are usually :class:`~strategylab.fault_tolerance.Timeout` instances.
        """
        layers = (fallback, total_timeout, retry, breaker, timeout, bulkhead)
        return cls(*(p for p in layers if p is not None))

    @property
    def policies(self) -> tuple[Policy, ...]:
        """The layers, outermost first."""
        return self._policies

    def __len__(self) -> int:
        return len(self._policies)

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(map(repr, self._policies))})"

    def wrap(self, fn: Callable[P, R], /) -> Callable[P, R]:
        """Wrap the sync ``fn`` in every layer, innermost first; returns the outermost wrapper.

        A plain retry directly around a plain breaker becomes one fused wrapper that behaves
        exactly like the two nested ones (see ``_fused``), at about half the cost per call.
        """
        refuse_generator(fn, "Pipeline")
        refuse_coroutine_function(fn, "Pipeline")
        policies = self._policies
        wrapped = abandon_aware(fn) if self._abandonable else fn
        i = len(policies) - 1
        while i >= 0:
            fused = fuse_sync(policies[i - 1], policies[i], wrapped) if i else None
            if fused is not None:
                wrapped, i = fused, i - 2
            else:
                wrapped, i = policies[i].wrap(wrapped), i - 1
        return wrapped

    def awrap(self, fn: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R]]:
        """Wrap the async ``fn`` in every layer, innermost first; returns the outermost wrapper.

        A plain retry directly around a plain breaker is fused as in :meth:`wrap`.
        """
        refuse_generator(fn, "Pipeline")
        policies = self._policies
        wrapped = fn
        i = len(policies) - 1
        while i >= 0:
            fused = fuse_async(policies[i - 1], policies[i], wrapped) if i else None
            if fused is not None:
                wrapped, i = fused, i - 2
            else:
                wrapped, i = policies[i].awrap(wrapped), i - 1
        return wrapped

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` once through every layer."""
        calls = self._calls
        if not calls:
            return fn(*args, **kwargs)
        if self._abandonable:
            fn = abandon_aware(fn)
        # a.call(b.call, c.call, fn, *args): a guards b.call(c.call, fn, *args), which guards
        # c.call(fn, *args), which guards fn(*args).
        return cast("R", calls[0](*calls[1:], fn, *args, **kwargs))

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` once through every layer."""
        acalls = self._acalls
        if not acalls:
            return await fn(*args, **kwargs)
        return cast("R", await acalls[0](*acalls[1:], fn, *args, **kwargs))
