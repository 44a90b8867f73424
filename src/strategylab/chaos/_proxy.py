"""An asyncio TCP fault proxy in the model of Toxiproxy.

A :class:`Proxy` listens on one address and forwards every connection to one upstream address,
applying the :mod:`toxics <strategylab.chaos._toxics>` configured on it. With no toxic it forwards
in the event loop's protocol callbacks, bytes in large reads straight to the other socket's write
buffer, with transport flow control, so it costs little next to a direct connection. Toxics apply to
connections already open as well as to new ones, as Toxiproxy's do.

    async with Proxy("exchange", upstream=f"127.0.0.1:{port}") as proxy:
        connect_to(proxy.listen_port)
        async with proxy.toxic("latency", latency=500):
            ...                       # every chunk now arrives half a second late
        await proxy.disable()         # open connections are closed, new ones refused
        await proxy.enable()          # listening again on the same port

A :class:`ProxyServer` holds named proxies; :mod:`strategylab.chaos._proxy_api` serves a subset of
Toxiproxy's HTTP API over one, so Toxiproxy's clients can drive it.

Errors::

    StrategyLabError
    ├── ConfigurationError        bad listen/upstream address, toxic type, stream or attribute
    └── ProxyError
        ├── ProxyExistsError      a proxy with that name already exists (HTTP 409)
        ├── ProxyNotFoundError    no proxy by that name (HTTP 404)
        ├── ToxicExistsError      the proxy already has a toxic with that name (HTTP 409)
        └── ToxicNotFoundError    the proxy has no toxic by that name (HTTP 404)
    OSError                       a listen address cannot be bound; the message names the proxy

A change that fails changes nothing: listen addresses are bound before a proxy moves to them, and
:class:`ProxyServer` applies a change to several proxies only once all of them are ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import random
import re
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self

from strategylab.errors import ConfigurationError, StrategyLabError

from ._proxy_link import Connection, Counters
from ._toxics import Stream, Toxic, check_name, shown

__all__ = [
    "Proxy",
    "ProxyError",
    "ProxyExistsError",
    "ProxyNotFoundError",
    "ProxyServer",
    "ProxyStatistics",
    "ToxicExistsError",
    "ToxicNotFoundError",
]

_log = logging.getLogger("strategylab.chaos.proxy")


class ProxyError(StrategyLabError):
    """A fault-proxy operation named a proxy or toxic that does (or does not) exist."""


class ProxyExistsError(ProxyError):
    """A proxy with this name already exists."""

    def __init__(self, name: str) -> None:
        super().__init__(f"proxy {name!r} already exists")
        self.name = name


class ProxyNotFoundError(ProxyError):
    """No proxy has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"proxy {name!r} not found")
        self.name = name


class ToxicExistsError(ProxyError):
    """The proxy already has a toxic with this name."""

    def __init__(self, proxy: str, toxic: str) -> None:
        super().__init__(f"toxic {toxic!r} already exists on proxy {proxy!r}")
        self.proxy = proxy
        self.toxic = toxic


class ToxicNotFoundError(ProxyError):
    """The proxy has no toxic with this name."""

    def __init__(self, proxy: str, toxic: str) -> None:
        super().__init__(f"toxic {toxic!r} not found on proxy {proxy!r}")
        self.proxy = proxy
        self.toxic = toxic


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProxyStatistics:
    """A snapshot of one proxy's counters.

    ``bytes_upstream``/``bytes_downstream`` were forwarded (to the server / to the client);
    ``bytes_received_*`` were read by the proxy. The difference is what toxics dropped or hold.
    """

    name: str
    enabled: bool
    listen_port: int
    connections_total: int
    connections_active: int
    upstream_failures: int
    bytes_upstream: int
    bytes_downstream: int
    bytes_received_upstream: int
    bytes_received_downstream: int


_HOST: Final = re.compile(r"[A-Za-z0-9._:%-]+")
_MAX_HOST: Final = 253


def parse_address(field: str, value: object, *, allow_port_zero: bool) -> tuple[str, int]:
    """``"host:port"`` (``"[v6]:port"`` too) as ``(host, port)``; errors name ``field``.

    Raises :class:`ConfigurationError` for a missing part, a host with characters no host name
    or IP address has (NUL, spaces, ``/``...) or longer than 253, or a port outside 0..65535
    (1..65535 unless ``allow_port_zero``).
    """
    if not isinstance(value, str):
        raise ConfigurationError(field, shown(value), "must be a string 'host:port'")
    host, sep, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not port_text.isascii():
        raise ConfigurationError(field, shown(value), "must be 'host:port'")
    if len(host) > _MAX_HOST or not _HOST.fullmatch(host):
        raise ConfigurationError(
            field, shown(value), "host must be a name or IP address (letters, digits, '.-_:%')"
        )
    if len(port_text) > 5:
        raise ConfigurationError(field, shown(value), "port out of range")
    port = int(port_text)
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ConfigurationError(field, value, "port out of range")
    return host, port


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Listener:
    """A proxy's listening socket; its connections go to ``owner``.

    The owner can change: a proxy that :meth:`ProxyServer.populate` replaces hands its socket to
    its successor when both listen on the same address, so the port is never released between.
    """

    __slots__ = ("owner", "server")

    def __init__(self, owner: Proxy) -> None:
        self.owner = owner
        self.server: asyncio.Server | None = None

    def accept(self) -> asyncio.Protocol:
        return self.owner.connection_protocol()

    @property
    def port(self) -> int:
        assert self.server is not None  # noqa: S101 - set by _listen_on
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def serving(self) -> bool:
        return self.server is not None and self.server.is_serving()

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def _listen_on(owner: Proxy, address: tuple[str, int]) -> _Listener:
    """A listener bound to ``address`` for ``owner``.

    :class:`OSError` (its ``errno`` kept, the message naming the proxy and the address) when the
    address cannot be bound or resolved; :class:`ConfigurationError` when the resolver refuses the
    host outright (an IDNA label too long, say).
    """
    listener = _Listener(owner)
    shown_address = _format_address(*address)
    try:
        listener.server = await asyncio.get_running_loop().create_server(
            listener.accept, address[0], address[1], reuse_address=True
        )
    except OSError as exc:
        reason = (
            os.strerror(exc.errno)
            if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror)
            else (exc.strerror or str(exc))
        )
        message = f"proxy {owner.name!r} cannot listen on {shown_address}: {reason.lower()}"
        raise OSError(exc.errno, message) from exc
    except (ValueError, UnicodeError) as exc:
        raise ConfigurationError("listen", shown_address, f"cannot listen: {exc}") from None
    return listener


class Proxy:
    """A TCP proxy from ``listen`` to ``upstream`` that applies toxics.

    ``rng`` decides toxicity (once per connection and toxic) and the random parts of toxics
    (jitter, slice sizes, corrupted bits); seed it for a reproducible run. ``listen_port`` is the
    bound port once started (``listen`` may ask for port 0); disabling and enabling keeps it.
    Implements the :class:`~strategylab.fault_tolerance.Component` protocol.
    """

    def __init__(
        self,
        name: str,
        listen: str = "127.0.0.1:0",
        upstream: str = "127.0.0.1:5432",
        enabled: bool = True,
        *,
        rng: random.Random | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        check_name("name", name)
        if not isinstance(enabled, bool):
            raise ConfigurationError("enabled", shown(enabled), "must be a boolean")
        self._name = name
        self._listen = parse_address("listen", listen, allow_port_zero=True)
        self._upstream = parse_address("upstream", upstream, allow_port_zero=False)
        self._enabled = enabled
        self.rng = rng if rng is not None else random.Random()
        self.counters = Counters()
        self._connect_timeout = connect_timeout
        self._toxics: dict[str, Toxic] = {}
        self._toxic_tuple: tuple[Toxic, ...] = ()
        self._listener: _Listener | None = None
        self._started = False
        self._changing = asyncio.Lock()  # one address or state change at a time
        self._connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)

    # Configuration.

    @property
    def name(self) -> str:
        """The proxy's name."""
        return self._name

    @property
    def listen(self) -> str:
        """The listen address, with the bound port once the proxy has listened."""
        return _format_address(*self._listen)

    @property
    def listen_port(self) -> int:
        """The bound port (0 until the proxy first listened on an ephemeral port)."""
        return self._listen[1]

    @property
    def upstream(self) -> str:
        """Where connections are forwarded to."""
        return _format_address(*self._upstream)

    @property
    def enabled(self) -> bool:
        """Whether the proxy accepts connections."""
        return self._enabled

    @property
    def toxics(self) -> tuple[Toxic, ...]:
        """The toxics in the order they apply."""
        return self._toxic_tuple

    # Lifecycle (the Component protocol).

    async def start(self) -> None:
        """Listen, if enabled. Starting a started proxy does nothing.

        Raises :class:`OSError` (naming the proxy and the address) when the listen address cannot
        be bound, :class:`ConfigurationError` when the resolver refuses its host.
        """
        if self._started:
            return
        if self._enabled:
            self._install(await _listen_on(self, self._listen))
        self._started = True

    async def stop(self) -> None:
        """Stop listening, close every connection, and wait for the proxy's tasks to end."""
        self._started = False
        await self._close()
        tasks = tuple(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def health(self) -> bool:
        """True when the proxy is enabled and its listening socket is open."""
        return self._enabled and self._listener is not None and self._listener.serving

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def enable(self) -> None:
        """Accept connections again, on the same port as before (unchanged if that fails)."""
        await self.update(enabled=True)

    async def disable(self) -> None:
        """Close every open connection and refuse new ones (the port is released)."""
        await self.update(enabled=False)

    async def update(
        self, *, listen: str | None = None, upstream: str | None = None, enabled: bool | None = None
    ) -> None:
        """Change addresses or state; an address change closes open connections, as Toxiproxy.

        All or nothing: everything is validated (:class:`ConfigurationError`) and a new listen
        address bound (:class:`OSError`) before anything changes, so a failed update leaves the
        proxy listening where it was, with its connections and toxics. The new address is bound
        while the old one is still held: moving to another host on the *same* port needs a
        disable first (or two updates through another port). A disabled proxy's new address is
        probed (bound and released) too, so that no later enable or ``/reset`` fails on it.
        """
        new_listen = (
            self._listen
            if listen is None
            else parse_address("listen", listen, allow_port_zero=True)
        )
        new_upstream = (
            self._upstream
            if upstream is None
            else parse_address("upstream", upstream, allow_port_zero=False)
        )
        if enabled is not None and not isinstance(enabled, bool):
            raise ConfigurationError("enabled", shown(enabled), "must be a boolean")
        async with self._changing:
            wanted = self._enabled if enabled is None else enabled
            moved = new_listen != self._listen
            listener = None
            if self._started and wanted and (moved or self._listener is None):
                listener = await _listen_on(self, new_listen)  # may fail: nothing changed yet
            elif self._started and moved:
                # Disabled, but never with an address it cannot bind: enabling it (or /reset)
                # would fail on it for ever. Probe it (may fail: nothing changed yet).
                probe = await _listen_on(self, new_listen)
                await probe.aclose()
            # Nothing below can fail.
            old = None
            if moved or not wanted:
                old, self._listener = self._listener, None
            if moved or new_upstream != self._upstream or not wanted:
                self._abort_connections()
            self._listen, self._upstream, self._enabled = new_listen, new_upstream, wanted
            if listener is not None:
                self._install(listener)
            if old is not None:
                await old.aclose()

    def _install(self, listener: _Listener) -> None:
        listener.owner = self
        self._listener = listener
        self._listen = (self._listen[0], listener.port)
        _log.debug("proxy %s listening on %s -> %s", self._name, self.listen, self.upstream)

    def _abort_connections(self) -> None:
        for conn in tuple(self._connections):
            conn.abort()

    async def _close(self) -> None:
        listener, self._listener = self._listener, None
        self._abort_connections()
        if listener is not None:
            await listener.aclose()

    # Two-phase changes for ProxyServer: bind first (may fail), then apply (cannot fail).

    async def _bind_to_enable(self) -> _Listener | None:
        """A listener on the proxy's address when enabling it needs one, bound but not used."""
        if self._started and self._listener is None:
            return await _listen_on(self, self._listen)
        return None

    def _reset_with(self, listener: _Listener | None) -> None:
        """Remove every toxic and enable, with the listener :meth:`_bind_to_enable` bound."""
        self._toxics.clear()
        self._toxics_changed()
        self._enabled = True
        if listener is not None:
            self._install(listener)

    def _hands_over(self, successor: Proxy) -> bool:
        """Whether ``successor`` (replacing this proxy) asks for the socket this one listens on."""
        return (
            successor.enabled
            and self._listener is not None
            and successor._listen == self._listen
            and self._listen[1] != 0
        )

    def _take_listener(self, predecessor: Proxy) -> None:
        """Become started on ``predecessor``'s socket (see :meth:`_hands_over`)."""
        listener = predecessor._listener
        predecessor._listener = None
        assert listener is not None  # noqa: S101 - checked by _hands_over
        self._install(listener)
        self._started = True

    # Toxics.

    def add_toxic(
        self,
        toxic_type: str,
        *,
        name: str | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
        **attributes: float,
    ) -> Toxic:
        """Add a toxic (attributes as Toxiproxy names them); it applies to open connections too."""
        return self.put_toxic(
            Toxic.build(
                toxic_type, name=name, stream=stream, toxicity=toxicity, attributes=attributes
            )
        )

    def put_toxic(self, toxic: Toxic) -> Toxic:
        """Add a ready-made toxic record."""
        if toxic.name in self._toxics:
            raise ToxicExistsError(self._name, toxic.name)
        self._toxics[toxic.name] = toxic
        self._toxics_changed()
        return toxic

    def get_toxic(self, name: str) -> Toxic:
        """The toxic called ``name``."""
        try:
            return self._toxics[name]
        except KeyError:
            raise ToxicNotFoundError(self._name, name) from None

    def update_toxic(
        self, name: str, *, toxicity: float | None = None, **attributes: float
    ) -> Toxic:
        """Change a toxic's toxicity or some attributes; toxicity is drawn again per connection."""
        return self.update_toxic_from(name, toxicity=toxicity, attributes=attributes)

    def update_toxic_from(
        self, name: str, *, toxicity: float | None, attributes: Mapping[str, object]
    ) -> Toxic:
        """:meth:`update_toxic` with loosely typed attributes (decoded JSON)."""
        toxic = self.get_toxic(name).updated(toxicity=toxicity, attributes=attributes)
        self._toxics[name] = toxic
        self._toxics_changed()
        return toxic

    def remove_toxic(self, name: str) -> None:
        """Remove a toxic; data it holds is released, data it dropped stays dropped."""
        if self._toxics.pop(name, None) is None:
            raise ToxicNotFoundError(self._name, name)
        self._toxics_changed()

    @contextlib.asynccontextmanager
    async def toxic(
        self,
        toxic_type: str,
        *,
        name: str | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
        **attributes: float,
    ) -> AsyncIterator[Toxic]:
        """Add a toxic for the duration of an ``async with`` block."""
        toxic = self.add_toxic(
            toxic_type, name=name, stream=stream, toxicity=toxicity, **attributes
        )
        try:
            yield toxic
        finally:
            if self._toxics.get(toxic.name) is toxic:
                self.remove_toxic(toxic.name)

    async def reset(self) -> None:
        """Remove every toxic and enable the proxy (nothing changes if it cannot listen)."""
        async with self._changing:
            self._reset_with(await self._bind_to_enable())

    def _toxics_changed(self) -> None:
        self._toxic_tuple = tuple(self._toxics.values())
        for conn in tuple(self._connections):
            conn.refresh()

    # Statistics.

    def statistics(self) -> ProxyStatistics:
        """A frozen snapshot of the proxy's counters."""
        c = self.counters
        up, down = Stream.UPSTREAM, Stream.DOWNSTREAM
        return ProxyStatistics(
            name=self._name,
            enabled=self._enabled,
            listen_port=self.listen_port,
            connections_total=c.connections_total,
            connections_active=c.connections_active,
            upstream_failures=c.upstream_failures,
            bytes_upstream=c.sent[_index(up)],
            bytes_downstream=c.sent[_index(down)],
            bytes_received_upstream=c.received[_index(up)],
            bytes_received_downstream=c.received[_index(down)],
        )

    async def wait_for(self, predicate: Callable[[ProxyStatistics], bool]) -> ProxyStatistics:
        """Wait until ``predicate(statistics())`` holds; bound it with ``asyncio.timeout``.

        Re-checked whenever bytes arrive or a connection opens or closes, so a test can wait for
        "the proxy has read the bytes" without sleeping.
        """
        snapshot = self.statistics()
        if predicate(snapshot):
            return snapshot
        changed = asyncio.Event()
        self.counters.waiters.append(changed.set)
        try:
            while True:
                changed.clear()
                await changed.wait()
                snapshot = self.statistics()
                if predicate(snapshot):
                    return snapshot
        finally:
            self.counters.waiters.remove(changed.set)

    def to_json(self) -> dict[str, object]:
        """Toxiproxy's JSON shape: ``{name, listen, upstream, enabled, toxics}``."""
        return {
            "name": self._name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self._enabled,
            "toxics": [toxic.to_json() for toxic in self._toxic_tuple],
        }

    def __repr__(self) -> str:
        return (
            f"Proxy({self._name!r}, listen={self.listen!r}, upstream={self.upstream!r}, "
            f"enabled={self._enabled}, toxics={len(self._toxics)})"
        )

    # The LinkOwner side, used by connections.

    def current_toxics(self) -> tuple[Toxic, ...]:
        return self._toxic_tuple

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def accepted(self, conn: Connection) -> None:
        self._connections.add(conn)
        c = self.counters
        c.connections_total += 1
        c.connections_active += 1
        self.spawn(self._connect(conn), f"proxy-{self._name}-connect-{conn.ident}")
        if c.waiters:
            c.notify()

    def connection_finished(self, conn: Connection) -> None:
        if conn in self._connections:
            self._connections.discard(conn)
            self.counters.connections_active -= 1
            if self.counters.waiters:
                self.counters.notify()

    def connection_protocol(self) -> asyncio.Protocol:
        """The protocol for a socket accepted on the proxy's listener."""
        return Connection(self, next(self._ids)).client

    async def _connect(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        host, port = self._upstream
        try:
            async with asyncio.timeout(self._connect_timeout):
                transport, _ = await loop.create_connection(lambda: conn.upstream, host, port)
        except (OSError, TimeoutError) as exc:
            self.counters.upstream_failures += 1
            _log.info("proxy %s: upstream %s unreachable: %r", self._name, self.upstream, exc)
            conn.abort()
            return
        if conn.closed:
            transport.abort()
            return
        conn.wire()


def _index(stream: Stream) -> int:
    return 0 if stream is Stream.UPSTREAM else 1


def validate_records(configs: object) -> list[tuple[str, str, str, bool]]:
    """``(name, listen, upstream, enabled)`` of each ``{name, listen?, upstream, enabled?}``
    record of a JSON list (what ``/populate`` and ``--config`` take), every field checked.

    Raises :class:`ConfigurationError` naming the record and the field (``[1].listen``) for a
    value that is not a list of objects, a bad field, or a name given twice.
    """
    if not isinstance(configs, list | tuple):
        raise ConfigurationError("proxies", shown(configs), "must be a JSON list of proxies")
    records: list[tuple[str, str, str, bool]] = []
    names: set[str] = set()
    for index, config in enumerate(configs):
        try:
            record = _record(config, names)
        except ConfigurationError as exc:
            raise ConfigurationError(f"[{index}].{exc.key}", exc.value, exc.reason) from None
        names.add(record[0])
        records.append(record)
    return records


def _record(config: object, names: set[str]) -> tuple[str, str, str, bool]:
    if not isinstance(config, Mapping):
        raise ConfigurationError("proxy", shown(config), "must be a JSON object")
    name = check_name("name", config.get("name"))
    if name in names:
        raise ConfigurationError("name", name, "is given twice")
    listen = config.get("listen", "127.0.0.1:0")
    upstream = config.get("upstream")
    enabled = config.get("enabled", True)
    parse_address("listen", listen, allow_port_zero=True)
    parse_address("upstream", upstream, allow_port_zero=False)
    if not isinstance(enabled, bool):
        raise ConfigurationError("enabled", shown(enabled), "must be a boolean")
    return name, str(listen), str(upstream), enabled


class ProxyServer:
    """Named proxies, created, listed and deleted together (what the HTTP API serves).

    Every change is all or nothing: it is validated and every listener it needs is bound before
    any proxy changes, so a change that fails (:class:`ConfigurationError`, :class:`OSError`,
    :class:`ProxyError`) leaves every proxy as it was. Changes through the server are serialized.
    """

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()
        self._proxies: dict[str, Proxy] = {}
        self._lock = asyncio.Lock()

    @property
    def proxies(self) -> Mapping[str, Proxy]:
        """The proxies by name (a read-only view)."""
        return MappingProxyType(self._proxies)

    def get(self, name: str) -> Proxy:
        """The proxy called ``name``."""
        try:
            return self._proxies[name]
        except KeyError:
            raise ProxyNotFoundError(name) from None

    async def create(
        self, name: str, *, listen: str = "127.0.0.1:0", upstream: str, enabled: bool = True
    ) -> Proxy:
        """Create and start a proxy."""
        proxy = Proxy(name, listen, upstream, enabled, rng=self._rng)  # validates
        async with self._lock:
            if name in self._proxies:
                raise ProxyExistsError(name)
            await proxy.start()
            self._proxies[name] = proxy
            return proxy

    async def update(
        self,
        name: str,
        *,
        listen: str | None = None,
        upstream: str | None = None,
        enabled: bool | None = None,
    ) -> Proxy:
        """:meth:`Proxy.update` the proxy called ``name``, serialized with the other changes."""
        async with self._lock:
            proxy = self.get(name)
            await proxy.update(listen=listen, upstream=upstream, enabled=enabled)
            return proxy

    async def populate(self, configs: Iterable[Mapping[str, object]]) -> list[Proxy]:
        """Create or replace proxies from ``{name, listen, upstream, enabled}`` records.

        All or nothing: every record is validated (:func:`validate_records`) and every new
        listener bound before the first proxy is replaced. A replaced proxy whose successor asks
        for the address it listens on hands its socket over, so the port is never released.
        """
        records = validate_records(list(configs))
        async with self._lock:
            fresh = [
                Proxy(name, listen, upstream, enabled, rng=self._rng)
                for name, listen, upstream, enabled in records
            ]
            inherit: set[str] = set()  # names whose successor takes the listening socket
            started: list[Proxy] = []
            try:
                for proxy in fresh:
                    old = self._proxies.get(proxy.name)
                    if old is not None and old._hands_over(proxy):  # noqa: SLF001
                        inherit.add(proxy.name)
                    else:
                        await proxy.start()
                        started.append(proxy)
            except BaseException:
                for proxy in started:
                    await proxy.stop()
                raise
            # Nothing below can fail.
            replaced = []
            for proxy in fresh:
                old = self._proxies.get(proxy.name)
                if old is not None:
                    if proxy.name in inherit:
                        proxy._take_listener(old)  # noqa: SLF001
                    replaced.append(old)
                self._proxies[proxy.name] = proxy
            for old in replaced:
                await old.stop()
            return fresh

    async def delete(self, name: str) -> None:
        """Stop and forget a proxy."""
        async with self._lock:
            proxy = self.get(name)
            del self._proxies[name]
        await proxy.stop()

    async def reset(self) -> None:
        """Remove every toxic from every proxy and enable them all.

        All or nothing: when a disabled proxy cannot listen again, nothing changes.
        """
        async with self._lock:
            staged: list[tuple[Proxy, _Listener | None]] = []
            try:
                for proxy in self._proxies.values():
                    # One at a time, so that a failure knows what to release.
                    staged.append((proxy, await proxy._bind_to_enable()))  # noqa: PERF401, SLF001
            except BaseException:
                for _, listener in staged:
                    if listener is not None:
                        await listener.aclose()
                raise
            for proxy, listener in staged:
                proxy._reset_with(listener)  # noqa: SLF001

    async def close(self) -> None:
        """Stop every proxy."""
        proxies = tuple(self._proxies.values())
        self._proxies.clear()
        for proxy in proxies:
            await proxy.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
