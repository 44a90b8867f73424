"""Child processes the benchmarks start (the exchange simulator, the fault proxy): spawned with
``python -m``, ready once they print their JSON line on stdout, terminated at the end."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any


async def spawn(
    *args: str, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """``python -m ARGS``; returns the process and the JSON object of its first stdout line
    (within 30 s)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, stdout=asyncio.subprocess.PIPE, env=env
    )
    assert process.stdout is not None
    async with asyncio.timeout(30):
        line = await process.stdout.readline()
    return process, json.loads(line)


async def stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, and wait (at most 30 s) for the exit."""
    if process.returncode is None:
        process.terminate()
        async with asyncio.timeout(30):
            await process.wait()
