"""Throughput of the fault proxy against a direct connection, each part in its own process.

    python -m strategylab.chaos._proxy_bench [--megabytes 200] [--chunk 65536] [--rounds 3]

A sink process reads until EOF and answers with the byte count; this process writes
``--megabytes`` in ``--chunk`` sized writes, once straight to the sink and once through a proxy run
by ``python -m strategylab.chaos._proxy_api`` (a third process, as in the chaos lab), and prints one
JSON line per chunk size with MB/s direct, MB/s through the proxy and their ratio (best of
``--rounds``), and the proxy process's CPU time per MB forwarded (what it takes from the pipeline
on a shared machine: at 50 MB/s, 1 ms/MB is 5 % of one core).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import struct
import sys
from collections.abc import Sequence

import aiohttp
import psutil

from strategylab._logging import configure_logging

__all__ = ["main", "measure"]


async def _sink(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        while chunk := await reader.read(1 << 18):
            total += len(chunk)
        writer.write(struct.pack("!Q", total))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    sys.stdout.write(json.dumps({"event": "listening", "port": server.sockets[0].getsockname()[1]}))
    sys.stdout.write("\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


async def _spawn(
    *args: str, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, stdout=asyncio.subprocess.PIPE, env=env
    )
    assert process.stdout is not None  # noqa: S101
    async with asyncio.timeout(30):
        line = await process.stdout.readline()
    return process, int(json.loads(line)["port"])


async def _send(port: int, total: int, chunk: int) -> float:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    block = b"\x5a" * chunk
    started = loop.time()
    sent = 0
    while sent < total:
        writer.write(block)
        sent += chunk
        if writer.transport.get_write_buffer_size() > 1 << 20:
            await writer.drain()
    writer.write_eof()
    received = struct.unpack("!Q", await reader.readexactly(8))[0]
    elapsed = loop.time() - started
    writer.close()
    await writer.wait_closed()
    if received != sent:
        raise RuntimeError(f"sink received {received} bytes of {sent}")
    return sent / elapsed / 1e6


async def measure(megabytes: int, chunks: Sequence[int], rounds: int) -> list[dict[str, float]]:
    """MB/s direct and through the proxy for each chunk size (best of ``rounds``)."""
    sink, sink_port = await _spawn("strategylab.chaos._proxy_bench", "--sink")
    # The API's admin token goes to the child in its environment, never on its command line.
    token = secrets.token_urlsafe(24)
    env = {**os.environ, "STRATEGYLAB_ADMIN_TOKEN": token}
    api, api_port = await _spawn("strategylab", "proxy", "--port", "0", env=env)
    try:
        async with aiohttp.ClientSession() as http:
            response = await http.post(
                f"http://127.0.0.1:{api_port}/proxies",
                json={"name": "bench", "upstream": f"127.0.0.1:{sink_port}"},
                headers={"Authorization": f"Bearer {token}"},
            )
            response.raise_for_status()
            proxy_port = int((await response.json())["listen"].rpartition(":")[2])
        cpu = psutil.Process(api.pid)
        results = []
        for chunk in chunks:
            total = megabytes * 1_000_000 // chunk * chunk
            direct = max([await _send(sink_port, total, chunk) for _ in range(rounds)])
            before = cpu.cpu_times()
            proxied = max([await _send(proxy_port, total, chunk) for _ in range(rounds)])
            after = cpu.cpu_times()
            used = (after.user + after.system) - (before.user + before.system)
            results.append(
                {
                    "chunk": chunk,
                    "direct_mb_s": round(direct, 1),
                    "proxy_mb_s": round(proxied, 1),
                    "ratio": round(proxied / direct, 3),
                    "proxy_cpu_ms_per_mb": round(used * 1000 / (rounds * total / 1e6), 3),
                }
            )
        return results
    finally:
        for process in (api, sink):
            process.terminate()
            await process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m strategylab.chaos._proxy_bench")
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--chunk", type=int, action="append", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    configure_logging()
    if args.sink:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_sink(0))
        return 0
    results = asyncio.run(measure(args.megabytes, args.chunk or [65536, 4096], args.rounds))
    for result in results:
        sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
