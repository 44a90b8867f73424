"""A retry around a circuit breaker, fused into one wrapper.

``Pipeline(retry, breaker).wrap(fn)`` would nest two wrappers, ``retry.wrap(breaker.wrap(fn))``: two
frames (two coroutines when async) and two ``*args``/``**kwargs`` hand-overs on every call. When
both layers are in their plain configuration, :func:`fuse_sync`/:func:`fuse_async` build one
wrapper instead that behaves exactly like the nested pair:

- CLOSED breaker: the wrapper calls ``fn`` itself and records the outcome in the breaker the way the
  breaker's own fast driver does (a success is one lock-free counter bump; any exception goes
  through the breaker's ``_on_error``). A failure the retry's ``retry_on`` accepts is then handed to
  the retry's own slow path with the *guarded* callable (``breaker.wrap(fn)``, built once), so every
  later attempt goes through the breaker as in the nested pair.
- Any other state, or call listeners registered on the breaker: the call goes to the nested pair
  itself, built once at wrap time. The wrapper tests the breaker's ``_gate``, which equals its state
  only while it has no call listener, so listeners cost the fused path nothing until one is added.
- A generator function is refused with ``TypeError`` when the pair is built, by ``breaker.wrap``;
  a function whose ``__wrapped__`` chain hides one is not fused, so that the nested pair checks
  each of its results.

Only exact :class:`RetryPolicy` and :class:`CircuitBreaker` instances are fused (a subclass may
override ``wrap``), and only a retry without ``deadline`` or ``retry_on_result`` (its plain wrapper
shape) around a breaker without a rate window, slow-call threshold or result predicate (its fast
driver).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from ._breaker import CircuitBreaker
from ._breaker_state import _CLOSED, _RECORD
from ._retry import RetryPolicy
from ._typing import hides_generator

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["fuse_async", "fuse_sync"]

P = ParamSpec("P")
R = TypeVar("R")


def _eligible(outer: object, inner: object) -> bool:
    """Whether ``outer(inner(fn))`` is a plain retry around a fast-driver breaker."""
    return (
        type(outer) is RetryPolicy
        and type(inner) is CircuitBreaker
        and outer.deadline is None
        and outer.retry_on_result is None
        and inner._fast  # noqa: SLF001
    )


def fuse_sync(outer: object, inner: object, fn: Callable[P, R]) -> Callable[P, R] | None:
    """``outer.wrap(inner.wrap(fn))`` as one wrapper, or None when the pair cannot be fused."""
    if not _eligible(outer, inner) or hides_generator(fn):
        return None
    assert isinstance(outer, RetryPolicy)  # noqa: S101 - checked by _eligible, for mypy
    assert isinstance(inner, CircuitBreaker)  # noqa: S101
    breaker = inner
    guarded = breaker.wrap(fn)
    nested = outer.wrap(guarded)
    catch, check, retry = outer._catch, outer._check, outer._retry  # noqa: SLF001
    on_error = breaker._on_error  # noqa: SLF001
    successes, next_ = breaker._successes.ticks, next  # noqa: SLF001
    closed, record = _CLOSED, _RECORD
    signature = _plain_signature(fn)
    if signature is not None:
        exact = _generate(
            _SYNC_SOURCE,
            signature,
            "fuse_sync",
            breaker,
            fn,
            nested,
            on_error,
            successes,
            next_,
            catch,
            check,
            retry,
            guarded,
            closed,
            record,
        )
        return cast("Callable[P, R]", functools.wraps(guarded)(exact))
    target: Callable[..., R] = fn  # called as fn(*args) when there are no keyword arguments

    def fused(*args: P.args, **kwargs: P.kwargs) -> R:
        if breaker._gate is not closed:  # noqa: SLF001
            return nested(*args, **kwargs)
        try:
            # Spreading an empty **kwargs costs more than testing it: skip it when empty.
            result = target(*args, **kwargs) if kwargs else target(*args)
        except BaseException as exc:
            # The breaker's fast driver records the outcome, then the retry wrapper judges it.
            on_error(record, exc, 0.0)
            if not isinstance(exc, catch) or (check is not None and not check(exc)):
                raise
            failure = exc
        else:
            next_(successes)
            if breaker._consecutive_failures:  # noqa: SLF001
                breaker._consecutive_failures = 0  # noqa: SLF001
            return result
        # Retried outside the ``except`` block, as the retry wrapper does, so that later
        # exceptions are not chained to this one.
        return retry(guarded, args, kwargs, None, failure)

    return functools.wraps(guarded)(fused)


def fuse_async(
    outer: object, inner: object, fn: Callable[P, Awaitable[R]]
) -> Callable[P, Awaitable[R]] | None:
    """``outer.awrap(inner.awrap(fn))`` as one coroutine function, or None when not fusable."""
    if not _eligible(outer, inner) or hides_generator(fn):
        return None
    assert isinstance(outer, RetryPolicy)  # noqa: S101 - checked by _eligible, for mypy
    assert isinstance(inner, CircuitBreaker)  # noqa: S101
    breaker = inner
    guarded = breaker.awrap(fn)
    nested = outer.awrap(guarded)
    catch, check, retry = outer._catch, outer._check, outer._aretry  # noqa: SLF001
    on_error = breaker._on_error  # noqa: SLF001
    successes, next_ = breaker._successes.ticks, next  # noqa: SLF001
    closed, record = _CLOSED, _RECORD
    signature = _plain_signature(fn)
    if signature is not None:
        exact = _generate(
            _ASYNC_SOURCE,
            signature,
            "fuse_async",
            breaker,
            fn,
            nested,
            on_error,
            successes,
            next_,
            catch,
            check,
            retry,
            guarded,
            closed,
            record,
        )
        return cast("Callable[P, Awaitable[R]]", functools.wraps(guarded)(exact))
    target: Callable[..., Awaitable[R]] = fn

    async def fused(*args: P.args, **kwargs: P.kwargs) -> R:
        if breaker._gate is not closed:  # noqa: SLF001
            return await nested(*args, **kwargs)
        try:
            result = await (target(*args, **kwargs) if kwargs else target(*args))
        except BaseException as exc:
            on_error(record, exc, 0.0)
            if not isinstance(exc, catch) or (check is not None and not check(exc)):
                raise
            failure = exc
        else:
            next_(successes)
            if breaker._consecutive_failures:  # noqa: SLF001
                breaker._consecutive_failures = 0  # noqa: SLF001
            return result
        return await retry(guarded, args, kwargs, None, failure)

    return functools.wraps(guarded)(fused)


# ------------------------------------------------------------------- exact-signature wrappers
# A wrapper declared as ``(*args, **kwargs)`` pays for packing both on every call (about 30 ns of
# the fused pair's ~110 ns on CPython 3.11); one declared with ``fn``'s own parameters pays
# nothing. So for a plain Python function (no ``*args``/``**kwargs`` of its own) the fused wrapper
# is generated with the same parameters, the way ``dataclasses`` and ``attrs`` generate methods.
# Defaults are passed on explicitly: ``fn`` receives the very objects it would have bound itself.
# A call with wrong arguments now fails at the wrapper, before the breaker sees anything.

_SYNC_SOURCE = """
def fuse_sync(__sl_b, __sl_target, __sl_nested, __sl_on_error, __sl_successes, __sl_next,
              __sl_catch, __sl_check, __sl_retry, __sl_guarded, __sl_closed, __sl_record{defaults}):
    def fused({params}):
        if __sl_b._gate is not __sl_closed:
            return __sl_nested({call})
        try:
            __sl_result = __sl_target({call})
        except BaseException as __sl_exc:
            __sl_on_error(__sl_record, __sl_exc, 0.0)
            if not isinstance(__sl_exc, __sl_catch) or (
                __sl_check is not None and not __sl_check(__sl_exc)
            ):
                raise
            __sl_failure = __sl_exc
        else:
            __sl_next(__sl_successes)
            if __sl_b._consecutive_failures:
                __sl_b._consecutive_failures = 0
            return __sl_result
        return __sl_retry(__sl_guarded, ({args}), {{{kwargs}}}, None, __sl_failure)
    return fused
"""

_ASYNC_SOURCE = """
def fuse_async(__sl_b, __sl_target, __sl_nested, __sl_on_error, __sl_successes, __sl_next,
               __sl_catch, __sl_check, __sl_retry, __sl_guarded, __sl_closed,
               __sl_record{defaults}):
    async def fused({params}):
        if __sl_b._gate is not __sl_closed:
            return await __sl_nested({call})
        try:
            __sl_result = await __sl_target({call})
        except BaseException as __sl_exc:
            __sl_on_error(__sl_record, __sl_exc, 0.0)
            if not isinstance(__sl_exc, __sl_catch) or (
                __sl_check is not None and not __sl_check(__sl_exc)
            ):
                raise
            __sl_failure = __sl_exc
        else:
            __sl_next(__sl_successes)
            if __sl_b._consecutive_failures:
                __sl_b._consecutive_failures = 0
            return __sl_result
        return await __sl_retry(__sl_guarded, ({args}), {{{kwargs}}}, None, __sl_failure)
    return fused
"""

_MAX_PARAMETERS = 32


@dataclasses.dataclass(frozen=True, slots=True)
class _Signature:
    """The pieces of source that declare ``fn``'s parameters and pass them on."""

    params: str
    call: str
    args: str
    kwargs: str
    defaults: tuple[object, ...]


def _plain_signature(fn: object) -> _Signature | None:
    """``fn``'s parameters as source, or None when a generic wrapper must serve.

    Only a plain Python function (not a method, a partial, a builtin or a callable object) whose
    parameters are named ones, without ``*args`` or ``**kwargs``, and none of them in the
    generated code's own ``__sl_`` namespace.
    """
    if type(fn) is not types.FunctionType:
        return None
    code = fn.__code__
    if code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS):
        return None
    n_pos, n_kw = code.co_argcount, code.co_kwonlyargcount
    names = code.co_varnames[: n_pos + n_kw]
    if len(names) > _MAX_PARAMETERS or any(n.startswith("__sl_") for n in names):
        return None
    positional, keyword = names[:n_pos], names[n_pos:]
    defaults: list[object] = []
    params: list[str] = []
    pos_defaults = fn.__defaults__ or ()
    first_default = n_pos - len(pos_defaults)
    for i, name in enumerate(positional):
        if i >= first_default:
            params.append(f"{name}=__sl_d{len(defaults)}")
            defaults.append(pos_defaults[i - first_default])
        else:
            params.append(name)
        if i == code.co_posonlyargcount - 1:
            params.append("/")
    kw_defaults = fn.__kwdefaults__ or {}
    if keyword:
        params.append("*")
    for name in keyword:
        if name in kw_defaults:
            params.append(f"{name}=__sl_d{len(defaults)}")
            defaults.append(kw_defaults[name])
        else:
            params.append(name)
    return _Signature(
        params=", ".join(params),
        call=", ".join([*positional, *(f"{n}={n}" for n in keyword)]),
        args="".join(f"{n}, " for n in positional),
        kwargs=", ".join(f"{n!r}: {n}" for n in keyword),
        defaults=tuple(defaults),
    )


def _generate(source: str, signature: _Signature, factory: str, *closure: object) -> Any:
    """Compile ``source`` for ``signature`` and build the wrapper from ``closure``."""
    names = "".join(f", __sl_d{i}" for i in range(len(signature.defaults)))
    text = source.format(
        defaults=names,
        params=signature.params,
        call=signature.call,
        args=signature.args,
        kwargs=signature.kwargs,
    )
    namespace: dict[str, Any] = {}
    # The source is ours; only parameter names, already checked to be identifiers, come from fn.
    exec(compile(text, f"<strategylab {factory}>", "exec"), {}, namespace)  # noqa: S102
    return namespace[factory](*closure, *signature.defaults)


def is_fused(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is a wrapper built by :func:`fuse_sync` or :func:`fuse_async`."""
    code = getattr(fn, "__code__", None)
    return code is not None and code.co_qualname in _FUSED_NAMES


_FUSED_NAMES = frozenset({"fuse_sync.<locals>.fused", "fuse_async.<locals>.fused"})
