"""Configuration from a TOML file with environment overrides, reloaded on change and on SIGHUP.

:class:`ConfigReloader` is the backing of the CACHE_CLEAR_RELOAD strategy for configuration: its
:meth:`~ConfigReloader.reload` drops the configuration in force and loads it again from the
source of truth, and a bad new one is rejected while the last good one stays in force.

A load is: read the file (a regular file of at most :data:`MAX_CONFIG_BYTES`; a symlink to one
is followed, as Kubernetes' ConfigMap volumes need), parse it with :mod:`tomllib`, apply the
environment overrides, and hand the resulting ``dict`` to the caller's ``parse(data) -> config``,
which validates it and raises :class:`~strategylab.errors.ConfigurationError` naming the key and
the value. Anything wrong is reported in one line naming the file and the key and value (or, for
bad TOML, the line and column), kept in :attr:`ReloadStatus.last_error`, and the configuration
in force does not change.

Environment overrides: ``STRATEGYLAB_SECTION__KEY=value`` sets ``[section] key`` (names are
lowercased; more ``__`` go deeper: ``STRATEGYLAB_STORE__POOL__SIZE``). The value is read as a
TOML value (``500``, ``1.5``, ``true``, ``"text"``, ``[1, 2]``) and, when it is not one, as a
plain string (``ws://host:1/feed``). Variables with the prefix but without ``__``
(``STRATEGYLAB_ADMIN_TOKEN``) are not overrides, unless the caller's prefix is one only overrides
use (``bare_keys``): then ``PREFIX_NAME`` sets the top-level key ``name`` and the parser refuses
it by name. An error caused by an override names the variable, also when it is about a table
that only the overrides created.

Whatever sits at the path (a directory, a FIFO, a symlink loop, a file it may not read, any
``OSError``) is a rejection naming the path and why: polling goes on and a good file put back is
loaded at the next poll.

Reloads happen on :meth:`ConfigReloader.reload`, when :meth:`~ConfigReloader.run` (the polling
task :meth:`~ConfigReloader.start` starts) sees the file's mtime, size, inode or device change,
and on SIGHUP once :meth:`~ConfigReloader.install_sighup` has installed the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import os
import signal
import stat
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, Generic, TypeVar

from strategylab._tasks import cancel_and_wait
from strategylab._validate import seconds as _seconds
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError

__all__ = [
    "DEFAULT_ENV_PREFIX",
    "MAX_CONFIG_BYTES",
    "ConfigReloader",
    "ReloadStatus",
    "apply_env_overrides",
    "load_toml_config",
]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

DEFAULT_ENV_PREFIX: Final = "STRATEGYLAB_"
"""The prefix of the environment variables that override configuration keys."""
MAX_CONFIG_BYTES: Final = 1024 * 1024
"""The largest configuration file read, in bytes."""
_NONBLOCK: Final = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)


class _RejectedError(Exception):
    """A load failed; ``str()`` is the one-line reason (file, key and value)."""


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, for the one-line reason."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _why(exc: OSError) -> str:
    """``exc`` in a few words: its strerror (``Is a directory``), else its class name."""
    return exc.strerror or type(exc).__name__


def _read_config_file(path: Path) -> bytes:
    """The bytes of the regular file ``path``; ``_RejectedError`` naming ``path`` and why for
    anything else (a missing file, a directory, a FIFO, a symlink loop, a permission refused,
    any other ``OSError`` while opening or reading it)."""
    try:
        # O_NONBLOCK: a FIFO planted at the path must not block the open (or the event loop).
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    except OSError as exc:
        raise _RejectedError(f"{path}: cannot be read ({_why(exc)})") from None
    try:
        # fstat of the descriptor opened, not of the path: no race with a rename in between.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _RejectedError(f"{path}: not a regular file ({_kind(info.st_mode)})")
        if info.st_size > MAX_CONFIG_BYTES:
            raise _RejectedError(
                f"{path}: {info.st_size} bytes, more than the {MAX_CONFIG_BYTES} read"
            )
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise _RejectedError(f"{path}: cannot be read ({_why(exc)})") from None
    finally:
        os.close(fd)
    if size > MAX_CONFIG_BYTES:
        raise _RejectedError(f"{path}: more than the {MAX_CONFIG_BYTES} bytes read")
    return b"".join(chunks)


def _env_value(text: str) -> object:
    """An override's value: a TOML value when it is one, else the string itself."""
    if "\n" in text or "\r" in text:
        return text  # never let a value add keys of its own
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_env_overrides(
    data: Mapping[str, object],
    environ: Mapping[str, str],
    *,
    prefix: str = DEFAULT_ENV_PREFIX,
    bare_keys: bool = False,
) -> tuple[dict[str, object], dict[str, str]]:
    """``data`` with the overrides from ``environ`` applied (a copy; ``data`` is not changed),
    and the dotted keys overridden, each mapped to the variable that set it.

    A table that only overrides created (in no file) is mapped too, to the first variable (by
    name) that created it, so that an error about an unknown table names that variable.
    A variable with the prefix but without ``__`` is skipped, unless ``bare_keys`` is true: then
    it sets the top-level key it names (``STRATEGYLAB_NODE_INGEST=1`` sets ``ingest = 1``), for
    a prefix that only overrides use, so that the parser refuses it by name rather than it being
    silently ignored.

    Raises :class:`~strategylab.errors.ConfigurationError` naming the variable when it names an
    empty key or a key under a value that is not a table.
    """
    merged = _deep_copy(data)
    sources: dict[str, str] = {}
    for name in sorted(environ):
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        if "__" not in rest and not bare_keys:
            continue
        parts = [part.lower() for part in rest.split("__")]
        if any(not part for part in parts):
            raise ConfigurationError(name, environ[name], "names an empty configuration key")
        table = merged
        for depth, part in enumerate(parts[:-1]):
            if part not in table:
                sources.setdefault(".".join(parts[: depth + 1]), name)
            inner = table.setdefault(part, {})
            if not isinstance(inner, dict):
                dotted = ".".join(parts[: depth + 1])
                raise ConfigurationError(
                    name, environ[name], f"{dotted} is not a table in the configuration"
                )
            table = inner
        table[parts[-1]] = _env_value(environ[name])
        sources[".".join(parts)] = name
    return merged, sources


def _deep_copy(data: Mapping[str, object]) -> dict[str, object]:
    return {
        key: _deep_copy(value) if isinstance(value, Mapping) else value
        for key, value in data.items()
    }


def load_toml_config(
    path: str | os.PathLike[str],
    *,
    env_prefix: str = DEFAULT_ENV_PREFIX,
    environ: Mapping[str, str] | None = None,
) -> dict[str, object]:
    """The TOML file ``path`` with the environment overrides applied, as a ``dict``.

    Raises :class:`~strategylab.errors.ConfigurationError` with a one-line message naming the file
    and the TOML line and column, or the variable, when either is bad.
    """
    file = Path(path)
    try:
        data, _ = _load(file, env_prefix, os.environ if environ is None else environ)
    except _RejectedError as exc:
        raise ConfigurationError(os.fspath(file), "<file>", str(exc)) from None
    return data


def _load(
    path: Path, prefix: str, environ: Mapping[str, str], *, bare_keys: bool = False
) -> tuple[dict[str, object], dict[str, str]]:
    raw = _read_config_file(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _RejectedError(f"{path}: not UTF-8 at byte {exc.start}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _RejectedError(f"{path}: invalid TOML: {exc}") from None
    try:
        return apply_env_overrides(data, environ, prefix=prefix, bare_keys=bare_keys)
    except ConfigurationError as exc:
        raise _RejectedError(f"environment: {exc}") from None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReloadStatus:
    """A frozen view of a :class:`ConfigReloader`.

    ``version`` counts the configurations put in force (1 after the first load; 0 before);
    ``last_error`` is the one-line reason the last attempt was rejected (None when it was
    accepted); ``last_reload`` and ``last_attempt`` are ``clock.time()`` of the last accepted load
    and of the last attempt (None before any); ``attempts`` and ``rejections`` count attempts.
    """

    path: Path
    version: int
    last_error: str | None
    last_reload: float | None
    last_attempt: float | None
    attempts: int
    rejections: int


class ConfigReloader(Generic[_T]):
    """A configuration loaded from ``path`` through ``parse``, reloaded when it changes.

    ``parse(data) -> config`` validates the merged ``dict`` (file plus overrides) and raises
    :class:`~strategylab.errors.ConfigurationError` naming the key and value (a ``ValueError``,
    ``TypeError`` or ``KeyError`` is also taken as a rejection). ``on_change(config)`` (sync or
    async) is called with each new configuration that differs from the one in force, before it
    is put in force: if it raises, the new configuration is rejected too. ``environ`` defaults to
    ``os.environ``, read at each load; ``bare_env_keys`` is :func:`apply_env_overrides`'
    ``bare_keys``. ``poll_interval`` is the seconds between two looks at the file by :meth:`run`.

    Whatever is at ``path`` (a directory, a FIFO, a symlink loop, a file it may not read) is a
    rejection naming the path and why, never an exception out of :meth:`reload` or :meth:`run`:
    polling goes on, and a good file put back is loaded at the next poll.

    It is a component (``name``, ``start``, ``stop``, ``health``) with ``reload()``, so the
    recovery manager's CACHE_CLEAR_RELOAD strategy can drive it. One reloader belongs to one
    event loop.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        parse: Callable[[dict[str, object]], _T],
        *,
        env_prefix: str = DEFAULT_ENV_PREFIX,
        environ: Mapping[str, str] | None = None,
        bare_env_keys: bool = False,
        clock: Clock = SYSTEM_CLOCK,
        on_change: Callable[[_T], object] | None = None,
        poll_interval: float = 1.0,
        name: str = "config",
    ) -> None:
        if not callable(parse):
            raise ConfigurationError("parse", parse, "must be callable")
        if not isinstance(env_prefix, str) or not env_prefix:
            raise ConfigurationError("env_prefix", env_prefix, "must be a non-empty str")
        if not isinstance(name, str) or not name:
            raise ConfigurationError("name", name, "must be a non-empty str")
        self._path = Path(path)
        self._parse = parse
        self._prefix = env_prefix
        self._environ = environ
        self._bare_env_keys = bool(bare_env_keys)
        self._clock = clock
        self._on_change = on_change
        self._poll_interval = _seconds("poll_interval", poll_interval)
        self._name = name
        self._config: _T | None = None
        self._data: dict[str, object] | None = None
        self._version = 0
        self._last_error: str | None = None
        self._last_reload: float | None = None
        self._last_attempt: float | None = None
        self._attempts = 0
        self._rejections = 0
        self._signature: tuple[int, int, int, int] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._sighup: asyncio.Task[bool] | None = None
        self._sighup_again = False
        self._sighup_loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._waiters: list[tuple[int, asyncio.Future[ReloadStatus]]] = []

    # ------------------------------------------------------------------ reading

    @property
    def name(self) -> str:
        """The component name (``"config"`` unless given)."""
        return self._name

    @property
    def path(self) -> Path:
        """The configuration file."""
        return self._path

    @property
    def current(self) -> _T:
        """The configuration in force; ``RuntimeError`` before the first successful load."""
        if self._config is None:
            raise RuntimeError(f"{self._path}: no configuration loaded yet (call load())")
        return self._config

    def status(self) -> ReloadStatus:
        """A frozen snapshot of the reloader's state."""
        return ReloadStatus(
            path=self._path,
            version=self._version,
            last_error=self._last_error,
            last_reload=self._last_reload,
            last_attempt=self._last_attempt,
            attempts=self._attempts,
            rejections=self._rejections,
        )

    # ------------------------------------------------------------------ loading

    def load(self) -> _T:
        """Load the configuration (at start) and put it in force; ``on_change`` is not called.

        Raises :class:`~strategylab.errors.ConfigurationError` with the one-line reason (file,
        key and value) when it is rejected; the configuration in force, if any, is kept.
        """
        accepted = self._attempt()
        if isinstance(accepted, str):
            raise ConfigurationError(os.fspath(self._path), "<file>", accepted)
        config, data = accepted
        self._put_in_force(config, data)
        return config

    async def reload(self) -> bool:
        """Load the configuration again and put it in force when it is valid.

        Returns True when the configuration in force is the file's (a new one, or unchanged),
        False when the new one was rejected (:attr:`ReloadStatus.last_error` says why; the last
        good configuration stays in force).
        """
        async with self._lock:
            return await self._reload_locked()

    async def _reload_locked(self) -> bool:
        accepted = self._attempt()
        if isinstance(accepted, str):
            self._notify()
            return False
        config, data = accepted
        if data == self._data and self._config is not None:
            self._notify()
            return True
        if self._on_change is not None:
            try:
                result = self._on_change(config)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self._reject(f"{self._path}: the new configuration could not be applied: {exc}")
                self._notify()
                return False
        self._put_in_force(config, data)
        _log.warning("%s: configuration version %d in force", self._path, self._version)
        self._notify()
        return True

    def _attempt(self) -> tuple[_T, dict[str, object]] | str:
        """One load: the parsed configuration and its data, or the reason it was rejected."""
        self._attempts += 1
        self._last_attempt = self._clock.time()
        self._signature = self._stat()
        environ = os.environ if self._environ is None else self._environ
        try:
            data, sources = _load(self._path, self._prefix, environ, bare_keys=self._bare_env_keys)
        except _RejectedError as exc:
            return self._reject(str(exc))
        try:
            config = self._parse(_deep_copy(data))
        except ConfigurationError as exc:
            origin = sources.get(exc.key)
            where = f"environment {origin}" if origin is not None else str(self._path)
            return self._reject(f"{where}: {exc}")
        except (ValueError, TypeError, KeyError, OSError) as exc:
            return self._reject(f"{self._path}: {type(exc).__name__}: {exc}")
        return config, data

    def _reject(self, reason: str) -> str:
        self._rejections += 1
        self._last_error = reason
        _log.error("configuration rejected, the last good one stays in force: %s", reason)
        return reason

    def _put_in_force(self, config: _T, data: dict[str, object]) -> None:
        self._config = config
        self._data = data
        self._version += 1
        self._last_error = None
        self._last_reload = self._clock.time()

    def _notify(self) -> None:
        attempts = self._attempts
        still: list[tuple[int, asyncio.Future[ReloadStatus]]] = []
        status = self.status()
        for wanted, future in self._waiters:
            if future.done():
                continue
            if attempts >= wanted:
                future.set_result(status)
            else:
                still.append((wanted, future))
        self._waiters = still

    async def wait_for_attempt(self, attempts: int) -> ReloadStatus:
        """Wait until at least ``attempts`` loads were attempted (by any trigger); the status."""
        if self._attempts >= attempts:
            return self.status()
        future: asyncio.Future[ReloadStatus] = asyncio.get_running_loop().create_future()
        self._waiters.append((attempts, future))
        return await future

    # ------------------------------------------------------------------ watching

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            info = self._path.stat()
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino, info.st_dev)

    def changed(self) -> bool:
        """True when the file's mtime, size, inode or device differ from the last load's."""
        return self._stat() != self._signature

    async def run(self) -> None:
        """Look at the file every ``poll_interval`` seconds on the clock; reload when it changed.
        Runs until cancelled: a reload that fails in an unforeseen way is logged and counted as
        a rejection, and polling goes on."""
        while True:
            await self._clock.asleep(self._poll_interval)
            try:
                if self.changed():
                    await self.reload()
            except Exception as exc:  # the poller must outlive any one bad look at the file
                _log.exception("%s: the configuration poll failed; polling goes on", self._path)
                self._reject(f"{self._path}: the reload failed: {type(exc).__name__}: {exc}")
                self._notify()

    async def start(self) -> None:
        """Load the configuration if none is in force, and start the polling task.

        Raises :class:`~strategylab.errors.ConfigurationError` when the first load is rejected.
        """
        if self._config is None:
            self.load()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(
                self.run(), name=f"{self._name}-poll"
            )

    async def stop(self) -> None:
        """Stop polling and remove the SIGHUP handler; safe on a stopped reloader."""
        self.remove_sighup()
        await cancel_and_wait((self._poller, self._sighup))
        self._poller = None
        self._sighup = None

    async def health(self) -> bool:
        """True when a configuration is in force (a rejected new one leaves the old in force)."""
        return self._config is not None

    # ------------------------------------------------------------------ SIGHUP

    def install_sighup(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Reload on SIGHUP (``loop.add_signal_handler``; the running loop by default).

        A SIGHUP during a reload runs one more reload after it. Raises ``RuntimeError`` (or
        ``NotImplementedError`` where the loop has no signal support, as on Windows).
        """
        target = loop if loop is not None else asyncio.get_running_loop()
        target.add_signal_handler(signal.SIGHUP, self._on_sighup)
        self._sighup_loop = target

    def remove_sighup(self) -> None:
        """Remove the SIGHUP handler installed by :meth:`install_sighup`, if any."""
        loop, self._sighup_loop = self._sighup_loop, None
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)

    def _on_sighup(self) -> None:
        if self._sighup is not None and not self._sighup.done():
            self._sighup_again = True
            return
        loop = self._sighup_loop or asyncio.get_running_loop()
        self._sighup = loop.create_task(self._sighup_reload(), name=f"{self._name}-sighup")

    async def _sighup_reload(self) -> bool:
        _log.warning("%s: SIGHUP, reloading the configuration", self._path)
        accepted = await self.reload()
        while self._sighup_again:
            self._sighup_again = False
            accepted = await self.reload()
        return accepted
