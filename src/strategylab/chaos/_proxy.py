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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import random
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self

from strategylab.errors import ConfigurationError, StrategyLabError

from ._proxy_link import Connection, Counters
from ._toxics import Stream, Toxic

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
        raise ConfigurationError(field, value, "must be a string 'host:port'")
    host, sep, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not port_text.isascii():
        raise ConfigurationError(field, value, "must be 'host:port'")
    if len(host) > _MAX_HOST or not _HOST.fullmatch(host):
        raise ConfigurationError(
            field, value, "host must be a name or IP address (letters, digits, '.-_:%')"
        )
    if len(port_text) > 5:
        raise ConfigurationError(field, value, "port out of range")
    port = int(port_text)
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ConfigurationError(field, value, "port out of range")
    return host, port


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
        if not isinstance(name, str) or not name:
            raise ConfigurationError("name", name, "must be a non-empty string")
        if not isinstance(enabled, bool):
            raise ConfigurationError("enabled", enabled, "must be a boolean")
        self._name = name
        self._listen = parse_address("listen", listen, allow_port_zero=True)
        self._upstream = parse_address("upstream", upstream, allow_port_zero=False)
        self._enabled = enabled
        self.rng = rng if rng is not None else random.Random()
        self.counters = Counters()
        self._connect_timeout = connect_timeout
        self._toxics: dict[str, Toxic] = {}
        self._toxic_tuple: tuple[Toxic, ...] = ()
        self._server: asyncio.Server | None = None
        self._started = False
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
        """Listen, if enabled. Starting a started proxy does nothing."""
        if self._started:
            return
        self._started = True
        if self._enabled:
            await self._open()

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
        return self._enabled and self._server is not None and self._server.is_serving()

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
        """Accept connections again, on the same port as before."""
        self._enabled = True
        if self._started and self._server is None:
            await self._open()

    async def disable(self) -> None:
        """Close every open connection and refuse new ones (the port is released)."""
        self._enabled = False
        await self._close()

    async def update(
        self, *, listen: str | None = None, upstream: str | None = None, enabled: bool | None = None
    ) -> None:
        """Change addresses or state; an address change closes open connections, as Toxiproxy.

        Everything is validated before anything changes (:class:`ConfigurationError`). When the
        new listen address cannot be bound (:class:`OSError`, or :class:`ConfigurationError`
        for an address the resolver refuses), the proxy goes back to its previous addresses and
        listens there again before the error is raised.
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
            raise ConfigurationError("enabled", enabled, "must be a boolean")
        previous = (self._listen, self._upstream, self._enabled)
        if (new_listen, new_upstream) != (self._listen, self._upstream):
            await self._close()
            self._listen, self._upstream = new_listen, new_upstream
        if enabled is not None:
            self._enabled = enabled
        if not self._enabled:
            await self._close()
        elif self._started and self._server is None:
            try:
                await self._open()
            except (OSError, ValueError, UnicodeError) as exc:
                self._listen, self._upstream, self._enabled = previous
                if self._enabled and self._started:
                    await self._open()
                if isinstance(exc, OSError):
                    raise
                raise ConfigurationError("listen", listen, f"cannot listen: {exc}") from None

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self._listen
        self._server = await loop.create_server(
            self._protocol_factory, host, port, reuse_address=True
        )
        bound = self._server.sockets[0].getsockname()
        self._listen = (host, int(bound[1]))
        _log.debug("proxy %s listening on %s -> %s", self._name, self.listen, self.upstream)

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in tuple(self._connections):
            conn.abort()
        if server is not None:
            await server.wait_closed()

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
        """Remove every toxic and enable the proxy."""
        self._toxics.clear()
        self._toxics_changed()
        await self.enable()

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

    def _protocol_factory(self) -> asyncio.Protocol:
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


class ProxyServer:
    """Named proxies, created, listed and deleted together (what the HTTP API serves)."""

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
        async with self._lock:
            if name in self._proxies:
                raise ProxyExistsError(name)
            proxy = Proxy(name, listen, upstream, enabled, rng=self._rng)
            await proxy.start()
            self._proxies[name] = proxy
            return proxy

    async def populate(self, configs: Iterable[Mapping[str, Any]]) -> list[Proxy]:
        """Create or replace proxies from ``{name, listen, upstream, enabled}`` records."""
        created = []
        for config in configs:
            name = config.get("name")
            if not isinstance(name, str):
                raise ConfigurationError("name", name, "must be a non-empty string")
            if name in self._proxies:
                await self.delete(name)
            created.append(
                await self.create(
                    name,
                    listen=config.get("listen", "127.0.0.1:0"),
                    upstream=config.get("upstream"),  # type: ignore[arg-type]
                    enabled=config.get("enabled", True),
                )
            )
        return created

    async def delete(self, name: str) -> None:
        """Stop and forget a proxy."""
        async with self._lock:
            proxy = self.get(name)
            del self._proxies[name]
        await proxy.stop()

    async def reset(self) -> None:
        """Remove every toxic from every proxy and enable them all."""
        for proxy in tuple(self._proxies.values()):
            await proxy.reset()

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
