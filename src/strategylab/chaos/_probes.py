"""Probe factories: small async checks of the system that answer ``(passed, what was seen)``.

Each factory returns a :data:`~strategylab.chaos.Probe`; calling it never raises for a failed
check (a refused connection, a timeout, a non-200 answer are all ``(False, detail)``), only
cancellation propagates. The node probes take the :class:`~strategylab.chaos.Pipeline` rather than
a URL, because a restarted node listens on a new status port.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from ._harness import Pipeline, PipelineError
from ._scenario import Probe

__all__ = [
    "all_of",
    "http_ok",
    "node_live",
    "node_ready",
    "node_serving",
    "store_caught_up",
    "tcp_connect",
]


def _check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise ValueError(f"timeout={timeout!r}: must be > 0 (seconds)")


def http_ok(url: str, *, timeout: float = 1.0) -> Probe:
    """A probe: ``GET url`` answers 200 within ``timeout`` seconds. Raises :class:`ValueError`
    for a URL that is not ``http(s)://`` or a timeout that is not positive."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url={url!r}: must start with http:// or https://")
    _check_timeout(timeout)

    async def probe() -> tuple[bool, str]:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
                http.get(url) as response,
            ):
                await response.read()
                return response.status == 200, f"{response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return False, f"{type(exc).__name__}: {exc}"

    return probe


def tcp_connect(host: str, port: int, *, timeout: float = 1.0) -> Probe:
    """A probe: a TCP connection to ``host:port`` opens within ``timeout`` seconds. Raises
    :class:`ValueError` for a port outside 1..65535."""
    if not 0 < port < 65536:
        raise ValueError(f"port={port!r}: must be in 1..65535")
    _check_timeout(timeout)

    async def probe() -> tuple[bool, str]:
        try:
            async with asyncio.timeout(timeout):
                _reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            return False, f"{type(exc).__name__}: {exc}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True, "connected"

    return probe


def node_live(pipeline: Pipeline) -> Probe:
    """A probe: the node's ``/health/live`` answers 200."""
    return pipeline.live


def node_ready(pipeline: Pipeline) -> Probe:
    """A probe: the node's ``/health/ready`` answers 200."""
    return pipeline.ready


def node_serving(pipeline: Pipeline) -> Probe:
    """The lab's default availability probe: the node keeps serving its users, ``/health/live``
    answers 200 and ``/status`` answers."""

    async def probe() -> tuple[bool, str]:
        ok, detail = await pipeline.live()
        if not ok:
            return False, f"live: {detail}"
        try:
            await pipeline.status()
        except PipelineError as exc:
            return False, f"status: {exc}"
        return True, "serving"

    return probe


def store_caught_up(pipeline: Pipeline, *, allowance: float = 0.5) -> Probe:
    """A probe: the node's store holds every tick the exchange had emitted when asked
    (:meth:`Pipeline.caught_up`, ``allowance`` seconds for the frames in flight)."""
    if allowance < 0:
        raise ValueError(f"allowance={allowance!r}: must be >= 0 (seconds)")

    async def probe() -> tuple[bool, str]:
        return await pipeline.caught_up(allowance)

    return probe


def all_of(*probes: Probe) -> Probe:
    """A probe that passes when every one of ``probes`` passes (run in order; the first failure
    is the detail). Raises :class:`ValueError` for no probes."""
    if not probes:
        raise ValueError("all_of(): give at least one probe")

    async def probe() -> tuple[bool, str]:
        details = []
        for each in probes:
            try:
                ok, detail = await each()
            except Exception as exc:  # a probe must not raise; one that does has failed
                return False, f"{type(exc).__name__}: {exc}"
            if not ok:
                return False, detail
            details.append(detail)
        return True, "; ".join(details)

    return probe
