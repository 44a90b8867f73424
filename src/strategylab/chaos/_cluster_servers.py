"""The servers of the lab's cluster run (``strategylab lab --cluster N``): a throwaway Redis, the
PostgreSQL URLs the nodes get, and the two server-side faults (Redis killed, a PostgreSQL
partition of one node).

:class:`ThrowawayRedis` is a ``redis-server`` of the lab's own, on a free port of 127.0.0.1, with
no persistence (``--save ''``, ``--appendonly no``): killing it loses its data, as a Redis without
persistence does. It runs under :class:`strategylab._children.ChildProcesses` (it never outlives
the lab) and restarts on the same port, so the nodes' URL stays valid.

:class:`RedisKill` SIGKILLs it (inject) and starts it again as its service manager would (heal).
The nodes are not told: they must notice the outage, fall back, and re-join by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import time
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar, Final, Self

from strategylab._children import ChildGuard, ChildProcesses

from ._injector import Injector, InjectorError
from ._severity import Severity

__all__ = ["RedisKill", "ThrowawayRedis", "free_port", "pg_url_via", "throwaway_pg_url"]

_START_TIMEOUT: Final = 10.0
"""Seconds a ``redis-server`` has to answer PING after it was started."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def throwaway_pg_url(port: int, user: str = "postgres", dbname: str = "postgres") -> str:
    """The ``postgresql://`` URL of a :class:`~strategylab.chaos.ThrowawayPostgres` on ``port``
    (trust authentication, no password)."""
    return f"postgresql://{urllib.parse.quote(user)}@127.0.0.1:{port}/{urllib.parse.quote(dbname)}"


def pg_url_via(url: str, port: int) -> str | None:
    """``url`` (``postgresql://``) with its host and port replaced by ``127.0.0.1:port`` (a fault
    proxy in front of the server); its user, password, database and query kept. ``None`` when the
    URL names no single TCP host (a Unix socket, several hosts): no proxy can stand in front."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"postgresql", "postgres"}:
        return None
    query = urllib.parse.parse_qs(parts.query)
    if "host" in query or "hostaddr" in query or "," in parts.netloc:
        return None
    if not parts.hostname:
        return None
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def pg_upstream(url: str) -> str | None:
    """``HOST:PORT`` of a ``postgresql://`` URL (port 5432 when it gives none); ``None`` as
    :func:`pg_url_via`."""
    if pg_url_via(url, 1) is None:
        return None
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{parts.port or 5432}"


class ThrowawayRedis:
    """A ``redis-server`` of the lab's own (see the module docstring).

    Use as ``async with ThrowawayRedis(directory) as redis:``; :attr:`url` is its
    ``redis://127.0.0.1:PORT/0``. Raises :class:`InjectorError` when ``redis-server`` is not
    installed or does not answer PING within 10 s of a start.
    """

    def __init__(self, directory: Path, *, stop_timeout: float = 5.0) -> None:
        self.directory = directory
        self._guard: ChildGuard | None = None
        self._children: ChildProcesses | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._stop_timeout = stop_timeout
        self.port = 0
        self.starts = 0

    @staticmethod
    def capability() -> str | None:
        """None when a ``redis-server`` can be started here; otherwise why not."""
        return None if shutil.which("redis-server") else "no redis-server on PATH"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (the same after a restart)."""
        if not self.port:
            raise RuntimeError("the throwaway Redis is not started")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Its process runs (it may not answer yet)."""
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs."""
        return self._process.pid if self._process is not None and self.running else None

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start it (on a free port the first time, on the same port after); return once it
        answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise InjectorError("the throwaway Redis: no redis-server on PATH")
        if self.running:
            raise InjectorError("the throwaway Redis is already running")
        if self._children is None:
            self._guard = ChildGuard()
            self._children = ChildProcesses(self._guard, stop_timeout=self._stop_timeout)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.port:
            self.port = free_port()
        self._process = await self._children.start(
            "redis-server", binary,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--dir", str(self.directory), "--protected-mode", "yes"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        self.starts += 1
        deadline = time.monotonic() + _START_TIMEOUT
        while not await self.ping():
            if self._process.returncode is not None:
                raise InjectorError(
                    f"the throwaway Redis exited with {self._process.returncode} at start "
                    f"(port {self.port})"
                )
            if time.monotonic() > deadline:
                raise InjectorError(f"the throwaway Redis did not answer PING on port {self.port}")
            await asyncio.sleep(0.05)

    async def ping(self) -> bool:
        """It answers ``PING`` with ``+PONG`` within 0.5 s (never raises)."""
        try:
            async with asyncio.timeout(0.5):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    writer.write(b"PING\r\n")
                    await writer.drain()
                    return (await reader.readline()).startswith(b"+PONG")
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError):
            return False

    async def kill(self) -> int:
        """SIGKILL it and reap it; its exit status."""
        process, children = self._process, self._children
        if process is None or children is None:
            raise InjectorError("the throwaway Redis is not running")
        return await children.stop(process, signal.SIGKILL)

    async def aclose(self) -> None:
        """Stop it (idempotent)."""
        children, self._children = self._children, None
        try:
            if children is not None:
                await children.aclose()
        finally:
            if self._guard is not None:
                self._guard.close()
                self._guard = None


class RedisKill(Injector):
    """The cluster's Redis SIGKILLed (its data lost: no persistence), started again on the same
    port at heal, as a service manager would. Only a :class:`ThrowawayRedis` the lab owns."""

    kind: ClassVar[str] = "server"

    def __init__(
        self,
        redis: ThrowawayRedis | None,
        *,
        severity: Severity = Severity.MEDIUM,
        name: str = "redis.kill",
        skip_reason: str = "",
    ) -> None:
        super().__init__(name, severity)
        self.redis = redis
        self._skip_reason = skip_reason
        self.exit: int | None = None
        self.restart_s: float | None = None

    def capability(self) -> str | None:
        if self.redis is None:
            return self._skip_reason or "no Redis of the lab's own to kill"
        return self.redis.capability()

    async def _inject(self) -> None:
        assert self.redis is not None  # noqa: S101 - capability() said so
        self.exit = await self.redis.kill()

    async def _heal(self) -> None:
        assert self.redis is not None  # noqa: S101
        began = time.monotonic()
        await self.redis.start()
        self.restart_s = time.monotonic() - began

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "port": None if self.redis is None else self.redis.port,
            "exit": self.exit,
            "restart_s": self.restart_s,
        }
