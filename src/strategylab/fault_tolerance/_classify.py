"""Error classification: which :class:`ErrorType` an exception is.

A :class:`Classifier` asks, in order:

1. the user's rules (:meth:`Classifier.add_rule`, :func:`register_rule`), first added first asked;
2. the exception itself: any exception whose ``error_type`` attribute is an :class:`ErrorType` is
   that type, so project exceptions declare their kind instead of being guessed at;
3. the built-in rules, chosen by the exception's class (walking its MRO) and reading structured
   attributes: ``errno``, ``sqlite_errorcode``, PostgreSQL's ``sqlstate``, an HTTP status.

If none of them recognises the exception, the same three steps are applied to its cause chain
(``__cause__``, else ``__context__`` unless suppressed with ``from None``), so that
``RuntimeError("flush failed") from OSError(ENOSPC, ...)`` is a full disk. Members of an exception
group (what ``asyncio.TaskGroup`` raises) are classified one by one and the most severe type wins.

Only when nothing in the chain is recognised does the component name decide (see
:func:`component_kind`): an unknown exception in a strategy is a STRATEGY_EXECUTION_ERROR, in a
backtest or the optimiser a BACKTEST_ENGINE_FAILURE, and so on. With no hint either, the
classifier's ``default`` applies: DATA_INGESTION_FAILURE, because it is HIGH severity (an unknown
failure is not quietly down-ranked to MEDIUM) without being CRITICAL (an unknown failure does not
trigger the kill switch), and its chain (retry, restart the component, fail over) is the generic
recovery that helps whatever the cause.

Third-party drivers are consulted lazily: the rules for psycopg, websockets, msgspec and orjson are
loaded only when that library is already in :data:`sys.modules`, never imported here. That is also
why the per-class cache is safe: a class derived from a driver's exception cannot exist before the
driver was imported, so a class looked up before the driver loaded never needs the driver's rules.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import errno
import functools
import json
import queue
import re
import socket
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Final, Protocol

from strategylab.errors import (
    AuditIntegrityError,
    BulkheadFullError,
    CallTimeoutError,
    CircuitOpenError,
    ConfigurationError,
    RecoveryRejectedError,
)

from ._taxonomy import DEFAULT_SEVERITY, ErrorType

__all__ = [
    "ClassificationRule",
    "Classifier",
    "ComponentKind",
    "classify",
    "component_kind",
    "default_classifier",
    "is_corruption",
    "register_rule",
]

_T = ErrorType


class ClassificationRule(Protocol):
    """A user rule: the :class:`ErrorType` of ``exc``, or ``None`` to let the next rule decide."""

    def __call__(self, exc: BaseException, component: str | None, /) -> ErrorType | None: ...


# --------------------------------------------------------------------------------------------------
# Component hints
# --------------------------------------------------------------------------------------------------


class ComponentKind(enum.Enum):
    """What a component's name says it is; see :func:`component_kind`."""

    STRATEGY = "strategy"
    BACKTEST = "backtest"
    OPTIMIZER = "optimizer"
    FEED = "feed"
    INGEST = "ingest"
    STORE = "store"
    API = "api"
    CONFIG = "config"

    @property
    def fallback(self) -> ErrorType:
        """The type of an exception in this component that no rule recognises."""
        return _FALLBACK[self]

    @property
    def connection(self) -> ErrorType:
        """The type of a dropped, refused or unreachable connection in this component."""
        return _CONNECTION[self]


_FALLBACK: Final[dict[ComponentKind, ErrorType]] = {
    ComponentKind.STRATEGY: _T.STRATEGY_EXECUTION_ERROR,
    ComponentKind.BACKTEST: _T.BACKTEST_ENGINE_FAILURE,
    # The optimiser runs backtests over a grid: an unknown failure is the engine's. Only timeouts
    # (and a lost worker pool) are OPTIMIZATION_TIMEOUT.
    ComponentKind.OPTIMIZER: _T.BACKTEST_ENGINE_FAILURE,
    ComponentKind.FEED: _T.DATA_INGESTION_FAILURE,
    ComponentKind.INGEST: _T.DATA_INGESTION_FAILURE,
    # Any store failure we cannot name gets the store's chain: retry, then spool to local durable
    # storage, so acknowledged ticks never depend on an unexplained error going away.
    ComponentKind.STORE: _T.DATABASE_CONNECTION_LOST,
    ComponentKind.API: _T.EXTERNAL_API_FAILURE,
    ComponentKind.CONFIG: _T.CONFIGURATION_ERROR,
}
# Which peer a bare socket error came from depends on who was talking. Strategies, backtests and the
# optimiser only talk to the order API directly (the store is reached through its driver, whose own
# exceptions say so). The ingestor sits between the feed and the store, so its peer is unknown and
# the ingestion chain (retry, restart, fail over) suits either.
_CONNECTION: Final[dict[ComponentKind, ErrorType]] = {
    ComponentKind.STRATEGY: _T.EXTERNAL_API_FAILURE,
    ComponentKind.BACKTEST: _T.EXTERNAL_API_FAILURE,
    ComponentKind.OPTIMIZER: _T.EXTERNAL_API_FAILURE,
    ComponentKind.FEED: _T.WEBSOCKET_CONNECTION_DROPPED,
    ComponentKind.INGEST: _T.DATA_INGESTION_FAILURE,
    ComponentKind.STORE: _T.DATABASE_CONNECTION_LOST,
    ComponentKind.API: _T.EXTERNAL_API_FAILURE,
    ComponentKind.CONFIG: _T.EXTERNAL_API_FAILURE,
}

# Whole-word matches, so that "strategylab.market.feed" is a feed and not a strategy.
_HINTS: Final[tuple[tuple[re.Pattern[str], ComponentKind], ...]] = (
    (re.compile(r"strat|strateg(y|ies)"), ComponentKind.STRATEGY),
    (re.compile(r"backtest(s|er|ing)?"), ComponentKind.BACKTEST),
    (re.compile(r"optim|optimi[sz](e|er|ers|ation)"), ComponentKind.OPTIMIZER),
    (re.compile(r"feeds?|ws|websockets?|streams?"), ComponentKind.FEED),
    (re.compile(r"ingest(or|ion|er)?"), ComponentKind.INGEST),
    (
        re.compile(r"stores?|storage|db|database|sqlite|postgres(ql)?|pg|spool"),
        ComponentKind.STORE,
    ),
    (re.compile(r"api|exchange|orders?|broker|gateway|http|rest"), ComponentKind.API),
    (re.compile(r"config(uration)?|settings"), ComponentKind.CONFIG),
)
_TOKEN = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


@functools.lru_cache(maxsize=1024)
def component_kind(component: str | None) -> ComponentKind | None:
    """The kind a component name hints at, or ``None``.

    The name is split into words (at punctuation and camelCase humps); the LAST word that names a
    kind wins, because dotted names run from general to specific: ``"strategylab.market.feed"`` is
    a feed, ``"optimizer.backtest"`` a backtest, ``"TickStore"`` a store.
    """
    if not component:
        return None
    for token in reversed(_TOKEN.findall(component)):
        word = token.lower()
        for pattern, kind in _HINTS:
            if pattern.fullmatch(word):
                return kind
    return None


def _connection(kind: ComponentKind | None) -> ErrorType:
    # With no hint, a peer we cannot reach is treated as an external service.
    return kind.connection if kind is not None else _T.EXTERNAL_API_FAILURE


def _timeout(kind: ComponentKind | None) -> ErrorType:
    return _T.OPTIMIZATION_TIMEOUT if kind is ComponentKind.OPTIMIZER else _T.NETWORK_TIMEOUT


# --------------------------------------------------------------------------------------------------
# Built-in rules. Each handler sees one exception and the component's kind; None = not recognised.
# --------------------------------------------------------------------------------------------------

_Handler = Callable[[BaseException, ComponentKind | None], ErrorType | None]


def _fixed(error_type: ErrorType) -> _Handler:
    def handler(_exc: BaseException, _kind: ComponentKind | None) -> ErrorType:
        return error_type

    return handler


def _errnos(*names: str) -> frozenset[int]:
    # getattr: EDQUOT and friends are not defined on every platform.
    return frozenset(getattr(errno, n) for n in names if hasattr(errno, n))


_CONNECTION_ERRNOS: Final = _errnos(
    "ECONNRESET",
    "ECONNREFUSED",
    "ECONNABORTED",
    "EPIPE",
    "ENETUNREACH",
    "EHOSTUNREACH",
    "ENETDOWN",
    "EHOSTDOWN",
)
_ERRNO_TYPES: Final[dict[int, ErrorType]] = {
    **dict.fromkeys(_errnos("ENOSPC", "EDQUOT", "EFBIG"), _T.DISK_SPACE_EXHAUSTED),
    **dict.fromkeys(_errnos("ENOMEM"), _T.MEMORY_EXHAUSTION),
    # A TCP-level timeout is the network's, even inside the optimiser.
    **dict.fromkeys(_errnos("ETIMEDOUT"), _T.NETWORK_TIMEOUT),
    # A permission error from the OS is, in practice, a data directory or socket path set up with
    # the wrong owner or mode (or a read-only mount): a deployment problem. An attack is not
    # inferred from EACCES; code that detects one (a bad signature) raises an exception whose
    # error_type is SECURITY_VIOLATION.
    **dict.fromkeys(_errnos("EACCES", "EPERM", "EROFS"), _T.CONFIGURATION_ERROR),
    # Out of descriptors, buffers or "try again": the process or the kernel is saturated.
    **dict.fromkeys(
        _errnos("EMFILE", "ENFILE", "EAGAIN", "EWOULDBLOCK", "ENOBUFS"), _T.SYSTEM_OVERLOAD
    ),
}


def _os_error(exc: BaseException, kind: ComponentKind | None) -> ErrorType | None:
    code = getattr(exc, "errno", None)
    if code is not None:
        if code in _CONNECTION_ERRNOS:
            return _connection(kind)
        found = _ERRNO_TYPES.get(code)
        if found is not None:
            return found
    # Raised by Python code rather than the OS (no errno): the class is all there is. An
    # errno-less PermissionError is deliberately not recognised: it says nothing about the cause.
    if isinstance(exc, TimeoutError):
        return _timeout(kind)
    if isinstance(exc, ConnectionError):
        return _connection(kind)
    return None


def _gaierror(_exc: BaseException, kind: ComponentKind | None) -> ErrorType:
    # Name resolution failed: the peer cannot be reached. (Its errno values are EAI_* codes, which
    # must not be read as errno values, hence a handler of its own.)
    return _connection(kind)


def _timeout_error(_exc: BaseException, kind: ComponentKind | None) -> ErrorType:
    return _timeout(kind)


def _broken_executor(_exc: BaseException, kind: ComponentKind | None) -> ErrorType | None:
    # A broken pool lost its jobs, usually because a worker was killed (most often by the memory
    # limit). In the optimiser, retrying with a smaller scope then skipping is the right chain.
    if kind is ComponentKind.OPTIMIZER:
        return _T.OPTIMIZATION_TIMEOUT
    if kind is ComponentKind.BACKTEST:
        return _T.BACKTEST_ENGINE_FAILURE
    return None


def _decode_error(_exc: BaseException, kind: ComponentKind | None) -> ErrorType:
    # Undecodable bytes are bad market data, unless what was being decoded was the configuration.
    return _T.CONFIGURATION_ERROR if kind is ComponentKind.CONFIG else _T.INVALID_MARKET_DATA


_SQLITE_EXTENDED: Final[dict[int, ErrorType]] = {
    sqlite3.SQLITE_IOERR_NOMEM: _T.MEMORY_EXHAUSTION,
}
_SQLITE_PRIMARY: Final[dict[int, ErrorType]] = {
    sqlite3.SQLITE_FULL: _T.DISK_SPACE_EXHAUSTED,
    sqlite3.SQLITE_NOMEM: _T.MEMORY_EXHAUSTION,
    # BUSY/LOCKED: the database is up and answering, but another connection holds the lock. That
    # is contention, i.e. load: shedding batch readers and shrinking write batches relieves it,
    # whereas DATABASE_CONNECTION_LOST would fail a healthy store over to the spool.
    sqlite3.SQLITE_BUSY: _T.SYSTEM_OVERLOAD,
    sqlite3.SQLITE_LOCKED: _T.SYSTEM_OVERLOAD,
    sqlite3.SQLITE_CANTOPEN: _T.DATABASE_CONNECTION_LOST,
    sqlite3.SQLITE_IOERR: _T.DATABASE_CONNECTION_LOST,
    # Integrity: the stored data can no longer be trusted, which is an ingestion failure. Unlike
    # the other causes of that type it is never transient (see is_corruption): the store moves
    # the damaged file aside and rebuilds instead of retrying it.
    sqlite3.SQLITE_CORRUPT: _T.DATA_INGESTION_FAILURE,
    sqlite3.SQLITE_NOTADB: _T.DATA_INGESTION_FAILURE,
    # Same reasoning as EACCES: a read-only file or mount is a deployment problem.
    sqlite3.SQLITE_READONLY: _T.CONFIGURATION_ERROR,
    sqlite3.SQLITE_PERM: _T.CONFIGURATION_ERROR,
}


_CORRUPT_SQLITE: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_CORRUPT_SQLSTATES: Final = frozenset({"XX001", "XX002"})


def _is_corrupt(exc: BaseException) -> bool:
    if getattr(exc, "corruption", False) is True:
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in _CORRUPT_SQLITE:
        return True
    return getattr(exc, "sqlstate", None) in _CORRUPT_SQLSTATES


def is_corruption(exc: BaseException) -> bool:
    """True when ``exc``, or an exception in its cause chain, says stored data is damaged.

    Corruption is SQLite's ``SQLITE_CORRUPT`` or ``SQLITE_NOTADB`` (any extended code),
    PostgreSQL's ``data_corrupted`` / ``index_corrupted`` (XX001, XX002), or a project exception
    with ``corruption = True`` (``StoreCorruptedError``). It classifies as DATA_INGESTION_FAILURE,
    but unlike the other causes of that type it is never transient: retrying the same file cannot
    succeed, so callers stop retrying, keep the damaged file for a human and rebuild.
    """
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen and len(seen) < _MAX_CHAIN:
        if _is_corrupt(link):
            return True
        seen.add(id(link))
        link = _next_link(link)
    return False


def _sqlite_error(exc: BaseException, kind: ComponentKind | None) -> ErrorType | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return None
    if code in _SQLITE_EXTENDED:
        return _SQLITE_EXTENDED[code]
    if (code & 0xFF) == sqlite3.SQLITE_INTERRUPT:
        # Connection.interrupt() is how a statement timeout is enforced on SQLite.
        return _timeout(kind)
    # Extended result codes carry the primary code in their low byte.
    return _SQLITE_PRIMARY.get(code & 0xFF)


_SQLSTATE_EXACT: Final[dict[str, ErrorType]] = {
    "53100": _T.DISK_SPACE_EXHAUSTED,  # disk_full
    "53200": _T.MEMORY_EXHAUSTION,  # out_of_memory
    "53300": _T.SYSTEM_OVERLOAD,  # too_many_connections
    "53400": _T.SYSTEM_OVERLOAD,  # configuration_limit_exceeded
    "55P03": _T.SYSTEM_OVERLOAD,  # lock_not_available: contention, as SQLITE_BUSY
    "57P01": _T.DATABASE_CONNECTION_LOST,  # admin_shutdown
    "57P02": _T.DATABASE_CONNECTION_LOST,  # crash_shutdown
    "57P03": _T.DATABASE_CONNECTION_LOST,  # cannot_connect_now
    "57P05": _T.DATABASE_CONNECTION_LOST,  # idle_session_timeout: the server closed the session
    "25P03": _T.DATABASE_CONNECTION_LOST,  # idle_in_transaction_session_timeout
    "3D000": _T.CONFIGURATION_ERROR,  # invalid_catalog_name: the database does not exist
    "3F000": _T.CONFIGURATION_ERROR,  # invalid_schema_name
    "XX001": _T.DATA_INGESTION_FAILURE,  # data_corrupted
    "XX002": _T.DATA_INGESTION_FAILURE,  # index_corrupted
}
_SQLSTATE_CLASS: Final[dict[str, ErrorType]] = {
    "08": _T.DATABASE_CONNECTION_LOST,  # connection exception
    "53": _T.SYSTEM_OVERLOAD,  # insufficient resources
    "58": _T.DATABASE_CONNECTION_LOST,  # system error (I/O), as SQLITE_IOERR
    # Invalid authorization: a wrong role or password in the DSN. Like EACCES, a deployment problem;
    # a refused login is the server protecting itself, not an attack on us.
    "28": _T.CONFIGURATION_ERROR,
    # Syntax error or access rule violation: in a deployed system these are a schema that was not
    # migrated (undefined table or column) or a missing GRANT; a true SQL bug fails in tests first.
    "42": _T.CONFIGURATION_ERROR,
}


def _psycopg_error(exc: BaseException, kind: ComponentKind | None) -> ErrorType | None:
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str):
        if state == "57014":  # query_canceled: statement_timeout fired
            return _timeout(kind)
        found = _SQLSTATE_EXACT.get(state) or _SQLSTATE_CLASS.get(state[:2])
        if found is not None:
            return found
    psycopg = sys.modules["psycopg"]
    if isinstance(exc, psycopg.OperationalError):
        return _connect_failure(str(exc))
    return None


# Message text, only because there is nothing else: libpq reports a failed connection attempt as
# text alone, so psycopg's OperationalError has no sqlstate even when the server sent a FATAL with
# one. These are the server's English messages; a localised server falls through to
# DATABASE_CONNECTION_LOST, whose retry-then-spool chain is safe whatever the cause.
_CONNECT_FATALS: Final[tuple[tuple[str, ErrorType], ...]] = (
    ("too many clients", _T.SYSTEM_OVERLOAD),  # 53300
    ("remaining connection slots are reserved", _T.SYSTEM_OVERLOAD),  # 53300
    ("does not exist", _T.CONFIGURATION_ERROR),  # 3D000 database, 28000 role
    ("password authentication failed", _T.CONFIGURATION_ERROR),  # 28P01
    ("no pg_hba.conf entry", _T.CONFIGURATION_ERROR),  # 28000
)


def _connect_failure(message: str) -> ErrorType:
    _, fatal, detail = message.partition("FATAL:")
    if fatal:
        for needle, error_type in _CONNECT_FATALS:
            if needle in detail:
                return error_type
    # No reply, or a reply we cannot read: the connection failed or was lost.
    return _T.DATABASE_CONNECTION_LOST


def _ws_status(status: object) -> ErrorType | None:
    if not isinstance(status, int):
        return None
    if status in {401, 403}:
        return _T.SECURITY_VIOLATION
    if status == 429 or status >= 500:
        return _T.EXTERNAL_API_FAILURE
    if status in {400, 404, 407, 410}:
        # Wrong path, bad query parameters, a proxy wanting credentials: our URL is wrong.
        return _T.CONFIGURATION_ERROR
    return _T.EXTERNAL_API_FAILURE


def _ws_handshake(exc: BaseException, _kind: ComponentKind | None) -> ErrorType:
    # InvalidStatus and InvalidProxyStatus carry the response; the legacy InvalidStatusCode carries
    # status_code directly (read by attribute: importing it emits a DeprecationWarning).
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None) or getattr(exc, "status_code", None)
    found = _ws_status(status)
    # Any other handshake failure: the endpoint answered, but not with a usable upgrade.
    return found if found is not None else _T.EXTERNAL_API_FAILURE


def _psycopg_rules() -> list[tuple[type[BaseException], _Handler]]:
    psycopg = sys.modules["psycopg"]
    return [(psycopg.Error, _psycopg_error)]


def _psycopg_pool_rules() -> list[tuple[type[BaseException], _Handler]]:
    # PoolTimeout derives from OperationalError but is not a lost connection: every pooled
    # connection is busy.
    return [(sys.modules["psycopg_pool"].PoolTimeout, _fixed(_T.SYSTEM_OVERLOAD))]


def _websockets_rules() -> list[tuple[type[BaseException], _Handler]]:
    ws = sys.modules["websockets.exceptions"]
    return [
        (ws.ConnectionClosed, _fixed(_T.WEBSOCKET_CONNECTION_DROPPED)),
        (ws.InvalidURI, _fixed(_T.CONFIGURATION_ERROR)),
        (ws.InvalidProxy, _fixed(_T.CONFIGURATION_ERROR)),
        # The server closed the connection, or sent no HTTP at all, during the handshake
        # (websockets chains the EOFError or OSError as its cause): the feed connection is down.
        (ws.InvalidMessage, _fixed(_T.WEBSOCKET_CONNECTION_DROPPED)),
        (ws.InvalidHandshake, _ws_handshake),
        (ws.ProtocolError, _fixed(_T.INVALID_MARKET_DATA)),
        (ws.PayloadTooBig, _fixed(_T.INVALID_MARKET_DATA)),
        (ws.TooManyFragments, _fixed(_T.INVALID_MARKET_DATA)),
    ]


def _msgspec_rules() -> list[tuple[type[BaseException], _Handler]]:
    # ValidationError derives from DecodeError.
    return [(sys.modules["msgspec"].DecodeError, _decode_error)]


def _orjson_rules() -> list[tuple[type[BaseException], _Handler]]:
    return [(sys.modules["orjson"].JSONDecodeError, _decode_error)]


def _ssl_rules() -> list[tuple[type[BaseException], _Handler]]:
    ssl = sys.modules["ssl"]
    # SSLError.errno is an OpenSSL code (1 would read as EPERM), so TLS needs its own rules. A
    # certificate that fails verification is, in practice, an expired certificate, a missing CA or
    # clock skew; TLS already refused the peer, so nothing was exposed: a configuration problem.
    return [
        (ssl.SSLCertVerificationError, _fixed(_T.CONFIGURATION_ERROR)),
        (ssl.SSLError, lambda _exc, kind: _connection(kind)),
    ]


_STDLIB_RULES: Final[tuple[tuple[type[BaseException], _Handler], ...]] = (
    (MemoryError, _fixed(_T.MEMORY_EXHAUSTION)),
    # TimeoutError and ConnectionError are OSError subclasses: errno first, then the class.
    (OSError, _os_error),
    (socket.gaierror, _gaierror),
    (concurrent.futures.BrokenExecutor, _broken_executor),
    # A full bounded queue is backpressure: the consumer cannot keep up.
    (queue.Full, _fixed(_T.SYSTEM_OVERLOAD)),
    (asyncio.QueueFull, _fixed(_T.SYSTEM_OVERLOAD)),
    (json.JSONDecodeError, _decode_error),
    (UnicodeDecodeError, _decode_error),
    (sqlite3.Error, _sqlite_error),
    (ConfigurationError, _fixed(_T.CONFIGURATION_ERROR)),
    # The breaker protected callers from a failing dependency; the dependency is what failed.
    (CircuitOpenError, _fixed(_T.EXTERNAL_API_FAILURE)),
    (BulkheadFullError, _fixed(_T.SYSTEM_OVERLOAD)),
    (RecoveryRejectedError, _fixed(_T.SYSTEM_OVERLOAD)),
    (CallTimeoutError, _timeout_error),
    # A broken hash chain means a record was deleted or altered: evidence of tampering.
    (AuditIntegrityError, _fixed(_T.SECURITY_VIOLATION)),
)

# Loaded the first time a class is looked up after the library appears in sys.modules.
_LAZY_RULES: Final[dict[str, Callable[[], list[tuple[type[BaseException], _Handler]]]]] = {
    "psycopg": _psycopg_rules,
    "psycopg_pool": _psycopg_pool_rules,
    # The submodule, not the package: websockets' __init__ imports most names lazily.
    "websockets.exceptions": _websockets_rules,
    "msgspec": _msgspec_rules,
    "orjson": _orjson_rules,
    "ssl": _ssl_rules,
}


_MAX_CACHED_CLASSES: Final = 4096


class _BuiltinRules:
    """The built-in rules, looked up by exception class through its MRO, with a per-class cache."""

    def __init__(self) -> None:
        self._by_class: dict[type[BaseException], _Handler] = dict(_STDLIB_RULES)
        self._pending = dict(_LAZY_RULES)
        self._cache: dict[type[BaseException], _Handler | None] = {}
        self._lock = threading.Lock()

    def handler(self, cls: type[BaseException]) -> _Handler | None:
        try:
            return self._cache[cls]
        except KeyError:
            pass
        with self._lock:
            self._load_pending()
            found = next((self._by_class[c] for c in cls.__mro__ if c in self._by_class), None)
            if len(self._cache) >= _MAX_CACHED_CLASSES:
                # Classes made at run time must not grow the cache without bound.
                self._cache.clear()
            self._cache[cls] = found
        return found

    def _load_pending(self) -> None:
        for module in [m for m in self._pending if m in sys.modules]:
            loader = self._pending.pop(module)
            # A library whose exception names moved in some version must not break the classifier.
            try:
                rules = loader()
            except AttributeError:
                continue
            for cls, handler in rules:
                self._by_class.setdefault(cls, handler)


_BUILTINS: Final = _BuiltinRules()
_MAX_CHAIN: Final = 32


def _next_link(exc: BaseException) -> BaseException | None:
    if exc.__cause__ is not None:
        return exc.__cause__
    if exc.__suppress_context__:
        return None
    return exc.__context__


class Classifier:
    """An ordered registry of classification rules.

    ``rules`` are asked first, in order, then the exception's own ``error_type`` attribute, then
    (if ``include_builtins``) the built-in rules; then the same for each exception in the cause
    chain; then the component hint (if ``component_hints``); and last ``default``.
    """

    __slots__ = ("_builtins", "_default", "_hints", "_rules")

    def __init__(
        self,
        rules: Iterable[ClassificationRule] = (),
        *,
        include_builtins: bool = True,
        component_hints: bool = True,
        default: ErrorType = ErrorType.DATA_INGESTION_FAILURE,
    ) -> None:
        if not isinstance(default, ErrorType):
            raise TypeError(f"default={default!r}: must be an ErrorType")
        self._rules: tuple[ClassificationRule, ...] = ()
        for rule in rules:
            self.add_rule(rule, first=False)
        self._builtins = _BUILTINS if include_builtins else None
        self._hints = component_hints
        self._default = default

    @property
    def rules(self) -> tuple[ClassificationRule, ...]:
        """The user rules, in the order they are asked."""
        return self._rules

    @property
    def default(self) -> ErrorType:
        """The type of an exception that nothing recognises."""
        return self._default

    def add_rule(self, rule: ClassificationRule, *, first: bool = True) -> ClassificationRule:
        """Add a user rule, asked before the rules already added (after them if not ``first``).

        Every user rule is asked before the built-in rules. Returns ``rule``, so this works as a
        decorator.
        """
        if not callable(rule):
            raise TypeError(f"rule={rule!r}: must be callable as rule(exc, component)")
        # A tuple swapped in whole: a classify() running in another thread sees old or new rules.
        self._rules = (rule, *self._rules) if first else (*self._rules, rule)
        return rule

    def remove_rule(self, rule: ClassificationRule) -> None:
        """Remove a user rule; ``ValueError`` if it was never added."""
        if rule not in self._rules:
            raise ValueError(f"rule={rule!r}: not registered")
        rules = list(self._rules)
        rules.remove(rule)
        self._rules = tuple(rules)

    def classify(self, exc: BaseException, component: str | None = None) -> ErrorType:
        """The :class:`ErrorType` of ``exc`` raised in ``component``."""
        kind = component_kind(component)
        found = self._recognise_chain(exc, component, kind)
        if found is not None:
            return found
        if self._hints and kind is not None:
            return kind.fallback
        return self._default

    def _recognise_chain(
        self, exc: BaseException, component: str | None, kind: ComponentKind | None
    ) -> ErrorType | None:
        found = self._recognise(exc, component, kind)
        if found is not None:
            return found
        # Only now allocate: the common case is recognised at the first link.
        seen = {id(exc)}
        link = _next_link(exc)
        while link is not None and id(link) not in seen and len(seen) < _MAX_CHAIN:
            found = self._recognise(link, component, kind)
            if found is not None:
                return found
            seen.add(id(link))
            link = _next_link(link)
        return None

    def _recognise(
        self, exc: BaseException, component: str | None, kind: ComponentKind | None
    ) -> ErrorType | None:
        for rule in self._rules:
            found = rule(exc, component)
            if found is not None:
                if not isinstance(found, ErrorType):
                    raise TypeError(
                        f"rule {rule!r} returned {found!r}: expected an ErrorType or None"
                    )
                return found
        declared = getattr(exc, "error_type", None)
        if isinstance(declared, ErrorType):
            return declared
        if self._builtins is not None:
            handler = self._builtins.handler(type(exc))
            if handler is not None:
                found = handler(exc, kind)
                if found is not None:
                    return found
        if isinstance(exc, BaseExceptionGroup):
            return self._recognise_group(exc, component, kind)
        return None

    def _recognise_group(
        self,
        group: BaseExceptionGroup[BaseException],
        component: str | None,
        kind: ComponentKind | None,
    ) -> ErrorType | None:
        # Several tasks failed together; recovery must answer the worst of them.
        worst: ErrorType | None = None
        for member in group.exceptions:
            found = self._recognise_chain(member, component, kind)
            if found is not None and (
                worst is None or DEFAULT_SEVERITY[found] > DEFAULT_SEVERITY[worst]
            ):
                worst = found
        return worst

    def __repr__(self) -> str:
        return (
            f"Classifier(rules={len(self._rules)}, include_builtins={self._builtins is not None}, "
            f"default={self._default})"
        )


_DEFAULT_CLASSIFIER: Final = Classifier()


def default_classifier() -> Classifier:
    """The classifier behind :func:`classify` and :func:`register_rule`."""
    return _DEFAULT_CLASSIFIER


def classify(exc: BaseException, component: str | None = None) -> ErrorType:
    """The :class:`ErrorType` of ``exc`` raised in ``component``, by the default classifier."""
    return _DEFAULT_CLASSIFIER.classify(exc, component)


def register_rule(rule: ClassificationRule, *, first: bool = True) -> ClassificationRule:
    """Add a user rule to the default classifier; returns ``rule``, so it works as a decorator."""
    return _DEFAULT_CLASSIFIER.add_rule(rule, first=first)
