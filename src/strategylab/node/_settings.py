"""The node's configuration file: :func:`load_node_config` and :class:`NodeReloader`.

The file is TOML with five tables, ``[node]``, ``[feed]``, ``[ingest]``, ``[status]`` and
``[degradation]``; each key is spelled as the :class:`~strategylab.node.NodeConfig` field it sets
(``[ingest] batch_size = 5000``). ``docs/node-config.md`` lists every key with its type, default,
environment variable and whether it reloads.

Environment overrides follow :func:`~strategylab.fault_tolerance.apply_env_overrides` with the
prefix :data:`NODE_ENV_PREFIX`: ``STRATEGYLAB_NODE_INGEST__BATCH_SIZE=5000`` sets ``[ingest]
batch_size``; the value is read as a TOML value. Every variable with the prefix is an override:
one without ``__`` names a top-level key (``STRATEGYLAB_NODE_INGEST=1`` is ``ingest = 1``, a
table given a value), so it is refused by name like an unknown or misplaced one rather than
ignored; an error caused by a variable names the variable, not the file. Precedence, highest
first: the command-line options the user gave (``explicit``), the environment, the file, the
defaults (the ``base`` configuration). Secrets (``signing_key``, ``audit_key``,
``admin_token``) are never read from the file or these variables: they come from their own
options and variables, so a configuration file can be shared and logged. The values go through
:class:`~strategylab.node.NodeConfig`'s checks as the command line's do (``node.node_name`` as
``--name``, ``status.status_host`` as ``--status-host``, ``degradation.memory_budget`` at most
1 PiB).

Reloads (on a change of the file's mtime, size or inode, and on SIGHUP) go through
:class:`~strategylab.fault_tolerance.ConfigReloader`: a bad file (invalid TOML, an unknown key, a
value of the wrong type or out of range, a missing or oversized file, a directory, a FIFO or
anything else that is not a readable regular file) or a change to a key that needs a restart
(:data:`RESTART_KEYS`) is rejected with one line naming the key and the value (or the path and
why), and the last good configuration stays in force; polling goes on. Only
:data:`RELOADABLE_KEYS` change a running node; the node's ``apply`` callback is called only with
an accepted configuration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from strategylab import _validate
from strategylab._tasks import cancel_and_wait
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import ConfigReloader, apply_env_overrides, load_toml_config

from ._config import NodeConfig

__all__ = [
    "NODE_ENV_PREFIX",
    "RELOADABLE_KEYS",
    "RESTART_KEYS",
    "NodeReloader",
    "load_node_config",
]

_log = logging.getLogger(__name__)

NODE_ENV_PREFIX: Final = "STRATEGYLAB_NODE_"
"""``STRATEGYLAB_NODE_<TABLE>__<KEY>`` overrides ``[table] key`` of the node's file."""

_SYMBOL: Final = re.compile(r"[A-Za-z0-9._\-:/]{1,32}")  # as ``--symbols`` takes them
_SECRETS: Final = frozenset({"signing_key", "audit_key", "admin_token", "config_file"})

Check = Callable[[str, object], object]


def _seconds(key: str, value: object) -> float:
    return _validate.seconds(key, value)


def _seconds_or_zero(key: str, value: object) -> float:
    return _validate.seconds(key, value, allow_zero=True)


def _count(key: str, value: object) -> int:
    return _validate.integer(key, value, minimum=1)


def _port(key: str, value: object) -> int:
    return _validate.integer(key, value, minimum=0, maximum=65535)


def _flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(key, _validate.clipped(value), "must be true or false")
    return value


def _text(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(key, _validate.clipped(value), "must be a non-empty string")
    if any(not ch.isprintable() for ch in value):
        raise ConfigurationError(key, _validate.clipped(value), "must not hold control characters")
    return value


def _path(key: str, value: object) -> Path:
    return Path(_text(key, value))


def _feed_url(key: str, value: object) -> str:
    url = _text(key, value)
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(key, url, f"is not a valid URL ({exc})") from None
    if parts.scheme not in {"ws", "wss"} or not host or " " in url or port == 0:
        raise ConfigurationError(key, url, "must be a ws:// or wss:// URL with a host")
    return url


def _feed_urls(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigurationError(key, _validate.clipped(value), "must be a list of ws:// URLs")
    return tuple(_feed_url(key, item) for item in value)


def _symbols(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigurationError(key, _validate.clipped(value), "must be a non-empty list")
    for item in value:
        if not isinstance(item, str) or not _SYMBOL.fullmatch(item):
            raise ConfigurationError(
                key, _validate.clipped(item), "a symbol is 1..32 of A-Z a-z 0-9 . _ - : /"
            )
    if len(set(value)) != len(value):
        raise ConfigurationError(key, _validate.clipped(value), "names a symbol twice")
    return tuple(value)


def _postgres(key: str, value: object) -> str:
    url = _text(key, value)
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigurationError(key, "(hidden)", "must start with postgresql:// or postgres://")
    return url


def _bytes(key: str, value: object) -> int:
    """Bytes: an integer, or a string with a unit (``"512MiB"``, ``"512M"``, ``"2GB"``; the rules
    of :func:`strategylab._validate.byte_size`, the same as ``--memory-budget``'s); 1 to
    :attr:`NodeConfig.MAX_MEMORY_BUDGET` (1 PiB)."""
    return _validate.byte_size(key, value, maximum=NodeConfig.MAX_MEMORY_BUDGET)


@dataclasses.dataclass(frozen=True, slots=True)
class _Key:
    table: str
    field: str
    check: Check
    reloadable: bool

    @property
    def dotted(self) -> str:
        return f"{self.table}.{self.field}"


_KEYS: Final = (
    _Key("node", "node_name", _text, reloadable=False),
    _Key("node", "data_dir", _path, reloadable=False),
    _Key("node", "db", _path, reloadable=False),
    _Key("node", "postgres", _postgres, reloadable=False),
    _Key("node", "drain_timeout", _seconds, reloadable=True),
    _Key("node", "shutdown_deadline", _seconds, reloadable=True),
    _Key("node", "disk_full_grace", _seconds, reloadable=True),
    _Key("feed", "exchange_url", _feed_url, reloadable=False),
    _Key("feed", "backup_urls", _feed_urls, reloadable=False),
    _Key("feed", "symbols", _symbols, reloadable=False),
    _Key("feed", "connect_timeout", _seconds, reloadable=True),
    _Key("feed", "stale_after", _seconds, reloadable=True),
    _Key("feed", "backoff_floor", _seconds, reloadable=True),
    _Key("feed", "backoff_cap", _seconds, reloadable=True),
    _Key("feed", "hedge_after", _seconds, reloadable=True),
    _Key("feed", "outage_backoff_cap", _seconds, reloadable=True),
    _Key("ingest", "batch_size", _count, reloadable=True),
    _Key("ingest", "max_queue", _count, reloadable=True),
    _Key("ingest", "linger", _seconds_or_zero, reloadable=True),
    _Key("ingest", "spool", _flag, reloadable=False),
    _Key("status", "status_interval", _seconds, reloadable=True),
    _Key("status", "status_port", _port, reloadable=False),
    _Key("status", "status_host", _text, reloadable=False),
    _Key("degradation", "memory_budget", _bytes, reloadable=True),
)
_BY_TABLE: Final[dict[str, dict[str, _Key]]] = {}
for _key in _KEYS:
    _BY_TABLE.setdefault(_key.table, {})[_key.field] = _key
_BY_FIELD: Final = {key.field: key for key in _KEYS}

RELOADABLE_KEYS: Final = tuple(key.dotted for key in _KEYS if key.reloadable)
"""The keys a running node takes on a reload (``table.key``)."""
RESTART_KEYS: Final = tuple(key.dotted for key in _KEYS if not key.reloadable)
"""The keys whose change a reload rejects: they need a restart."""

_FIELDS: Final = frozenset(field.name for field in dataclasses.fields(NodeConfig))
_DEFAULTS: Final = {
    field.name: field.default
    for field in dataclasses.fields(NodeConfig)
    if field.default is not dataclasses.MISSING
}


def _explicit_fields(explicit: Iterable[str]) -> frozenset[str]:
    names = frozenset(explicit)
    unknown = sorted(names - _FIELDS)
    if unknown:
        raise ConfigurationError("explicit", unknown, "names no NodeConfig field")
    return names


def _values(data: Mapping[str, object]) -> dict[str, object]:
    """The file's (and overrides') values by NodeConfig field, each checked; raises
    :class:`ConfigurationError` naming the dotted key and the value."""
    values: dict[str, object] = {}
    for table, content in data.items():
        keys = _BY_TABLE.get(table)
        if keys is None:
            if table in _BY_FIELD:
                where = f"[{_BY_FIELD[table].table}]"
                raise ConfigurationError(table, _validate.clipped(content), f"belongs in {where}")
            if table in _SECRETS:
                raise ConfigurationError(table, "(hidden)", _secret_problem(table))
            known = ", ".join(f"[{name}]" for name in _BY_TABLE)
            raise ConfigurationError(
                table, _validate.clipped(content), f"unknown table (known: {known})"
            )
        if not isinstance(content, dict):
            example = next(iter(keys))
            raise ConfigurationError(
                table,
                _validate.clipped(content),
                f"is a table, not a value: set one of its keys ([{table}] {example} = ..., or "
                f"{NODE_ENV_PREFIX}{table.upper()}__{example.upper()}=...)",
            )
        for name, value in content.items():
            dotted = f"{table}.{name}"
            if name in _SECRETS:
                raise ConfigurationError(dotted, "(hidden)", _secret_problem(name))
            key = keys.get(name)
            if key is None:
                hint = (
                    f"belongs in [{_BY_FIELD[name].table}]"
                    if name in _BY_FIELD
                    else f"unknown key (known in [{table}]: {', '.join(keys)})"
                )
                raise ConfigurationError(dotted, _validate.clipped(value), hint)
            values[key.field] = key.check(dotted, value)
    return values


def _secret_problem(name: str) -> str:
    return f"{name} is a secret and is not read from the configuration file; use its option"


def _build(
    data: Mapping[str, object], fallback: NodeConfig, explicit: frozenset[str]
) -> NodeConfig:
    """``fallback`` with the values of ``data`` that the command line did not set."""
    values = {k: v for k, v in _values(data).items() if k not in explicit}
    merged = {
        field: values.get(field, getattr(fallback, field))
        for field in ("backoff_floor", "backoff_cap", "db", "postgres")
    }
    if merged["backoff_cap"] < merged["backoff_floor"]:  # type: ignore[operator]
        raise ConfigurationError(
            "feed.backoff_cap", merged["backoff_cap"], "must be >= feed.backoff_floor"
        )
    if merged["db"] is not None and merged["postgres"] is not None:
        raise ConfigurationError(
            "node.db", str(merged["db"]), "contradicts node.postgres; give only one tick store"
        )
    try:
        return dataclasses.replace(fallback, **values)  # type: ignore[arg-type]
    except ConfigurationError as exc:
        key = _BY_FIELD.get(exc.key)
        raise ConfigurationError(
            key.dotted if key is not None else exc.key, exc.value, exc.reason
        ) from None


def _origin(exc: ConfigurationError, sources: Mapping[str, str], file: Path) -> str:
    variable = sources.get(exc.key)
    return f"environment variable {variable}" if variable is not None else f"file {file}"


def load_node_config(
    base: NodeConfig,
    *,
    explicit: Iterable[str] = frozenset(),
    environ: Mapping[str, str] | None = None,
) -> NodeConfig:
    """``base`` with the settings of ``base.config_file`` and the environment applied.

    ``base`` is the configuration from the command line and the defaults; ``explicit`` names the
    NodeConfig fields the user gave on the command line, which neither the file nor the
    environment overrides. ``environ`` defaults to ``os.environ``. Without a ``config_file`` it
    returns ``base`` unchanged. The file is read through
    :func:`~strategylab.fault_tolerance.load_toml_config` (a regular file of at most 1 MiB).

    Raises :class:`~strategylab.errors.ConfigurationError` naming the key as written in the file
    (``ingest.batch_size``) and the value, and the file or the environment variable it came
    from; for bad TOML, the file with the line and column.
    """
    fields = _explicit_fields(explicit)
    path = base.config_file
    if path is None:
        return base
    data = load_toml_config(path, env_prefix=NODE_ENV_PREFIX, environ={})
    env = os.environ if environ is None else environ
    merged, sources = apply_env_overrides(data, env, prefix=NODE_ENV_PREFIX, bare_keys=True)
    try:
        return _build(merged, base, fields)
    except ConfigurationError as exc:
        raise ConfigurationError(
            exc.key, exc.value, f"{exc.reason} (from {_origin(exc, sources, path)})"
        ) from None


def changed_keys(old: NodeConfig, new: NodeConfig) -> list[str]:
    """The file keys (``table.key``) whose values differ between two configurations."""
    return [key.dotted for key in _KEYS if getattr(old, key.field) != getattr(new, key.field)]


class NodeReloader:
    """The node's configuration file, reloaded on change and on SIGHUP, applied when valid.

    ``config`` is the configuration the node runs with now (from :func:`load_node_config`, with
    the same ``explicit``); its ``config_file`` must be set. A reloadable key removed from the
    file falls back to its default (or to its command-line value, when in ``explicit``); a
    restart key removed from the file keeps its value in force. ``apply(new)`` is awaited with
    each accepted configuration that differs from the one in force; if it raises, the new
    configuration is rejected too.
    ``poll_interval`` is the seconds between two looks at the file's stat (mtime_ns, size,
    inode, device) on ``clock``. Overrides come from ``environ`` (default ``os.environ``, read
    at each load) with :data:`NODE_ENV_PREFIX`.

    A reload is rejected, and the configuration in force kept, when the file is bad (the error
    names the key and value, or the TOML line and column) or when a key of
    :data:`RESTART_KEYS` changed ("needs a restart"). Built on
    :class:`~strategylab.fault_tolerance.ConfigReloader` (:attr:`loader`, the
    CACHE_CLEAR_RELOAD component). One reloader belongs to one event loop. Raises
    :class:`~strategylab.errors.ConfigurationError` when ``config`` has no ``config_file``.
    """

    def __init__(
        self,
        config: NodeConfig,
        apply: Callable[[NodeConfig], Awaitable[None]],
        *,
        clock: Clock = SYSTEM_CLOCK,
        poll_interval: float = 1.0,
        explicit: Iterable[str] = frozenset(),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if config.config_file is None:
            raise ConfigurationError("config_file", None, "a reloader needs a configuration file")
        if not callable(apply):
            raise ConfigurationError("apply", apply, "must be callable")
        self._initial = config
        self._apply = apply
        self._explicit = _explicit_fields(explicit)
        # What a key removed from the file falls back to: its default for a reloadable key the
        # command line did not set; the value in force for the others (no restart for nothing).
        self._fallback = dataclasses.replace(
            config,
            **{
                key.field: _DEFAULTS[key.field]
                for key in _KEYS
                if key.reloadable and key.field not in self._explicit
            },
        )
        self._loader: ConfigReloader[NodeConfig] = ConfigReloader(
            config.config_file,
            self._parse,
            env_prefix=NODE_ENV_PREFIX,
            environ=environ,
            bare_env_keys=True,
            clock=clock,
            on_change=self._on_change,
            poll_interval=poll_interval,
            name="config",
        )
        self._poller: asyncio.Task[None] | None = None
        self._sighup = False
        self._last_changed: list[str] = []

    @property
    def loader(self) -> ConfigReloader[NodeConfig]:
        """The underlying reloader: a recovery-manager component with ``reload() -> bool``."""
        return self._loader

    @property
    def current(self) -> NodeConfig:
        """The configuration in force: the last accepted one, or ``config`` before any."""
        return self._loader.current if self._loader.status().version else self._initial

    @property
    def sighup_installed(self) -> bool:
        """True when SIGHUP reloads (the handler is installed on the running loop)."""
        return self._sighup

    def _parse(self, data: dict[str, object]) -> NodeConfig:
        new = _build(data, self._fallback, self._explicit)
        in_force = self.current
        for key in _KEYS:
            if key.reloadable:
                continue
            old, value = getattr(in_force, key.field), getattr(new, key.field)
            if old != value:
                shown = "(hidden)" if key.field == "postgres" else _validate.clipped(value)
                was = "(hidden)" if key.field == "postgres" else _validate.shown(old)
                raise ConfigurationError(
                    key.dotted, shown, f"needs a restart (in force: {was}); not applied"
                )
        return new

    async def _on_change(self, new: NodeConfig) -> None:
        old = self.current
        changed = changed_keys(old, new)
        if changed:
            await self._apply(new)
        self._last_changed = changed

    async def reload(self) -> dict[str, Any]:
        """Load the file again now; put it in force and apply it when it is valid.

        Returns ``{"ok": bool, "version": int, "error": str | None, "changed": [keys]}``:
        ``version`` counts the configurations put in force, ``error`` is the one-line reason
        of a rejection (naming the key and value), ``changed`` the ``table.key`` names that
        changed (empty when rejected or unchanged).
        """
        before = self.current
        ok = await self._loader.reload()
        status = self._loader.status()
        return {
            "ok": ok,
            "version": status.version,
            "error": None if ok else status.last_error,
            "changed": changed_keys(before, self.current) if ok else [],
        }

    def status(self) -> dict[str, Any]:
        """A JSON-ready view: ``path``, ``version``, ``last_error``, ``last_reload`` and
        ``last_attempt`` (``clock.time()``), ``attempts``, ``rejections``, ``last_changed``
        (keys), ``polling`` and ``sighup`` (bools), ``reloadable`` and ``restart`` (keys)."""
        status = self._loader.status()
        return {
            "path": os.fspath(status.path),
            "version": status.version,
            "last_error": status.last_error,
            "last_reload": status.last_reload,
            "last_attempt": status.last_attempt,
            "attempts": status.attempts,
            "rejections": status.rejections,
            "last_changed": list(self._last_changed),
            "polling": self._poller is not None and not self._poller.done(),
            "sighup": self._sighup,
            "reloadable": list(RELOADABLE_KEYS),
            "restart": list(RESTART_KEYS),
        }

    async def start(self) -> None:
        """Load the file once (applying it if it differs from ``config``; a rejection is
        logged and ``config`` stays in force), start polling, and install the SIGHUP handler
        on the running loop where the platform allows (see :attr:`sighup_installed`)."""
        if self._poller is not None and not self._poller.done():
            return
        if not self._loader.status().version:
            await self._loader.reload()
        self._poller = asyncio.get_running_loop().create_task(
            self._loader.run(), name="config-poll"
        )
        try:
            self._loader.install_sighup()
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            _log.warning("SIGHUP does not reload the configuration here: %s", exc)
        else:
            self._sighup = True

    async def aclose(self) -> None:
        """Stop polling and remove the SIGHUP handler; safe to call twice."""
        poller, self._poller = self._poller, None
        await cancel_and_wait((poller,))
        await self._loader.stop()
        self._sighup = False

    async def wait_for_attempt(self, attempts: int) -> dict[str, Any]:
        """Wait until at least ``attempts`` loads were attempted (by any trigger); the status."""
        await self._loader.wait_for_attempt(attempts)
        return self.status()
