"""A node whose disk is full is not ready, but it is live: restarting it would not free the disk.

Found by the lab's storage-full fault (category 4): /health/live answered 503 while the node's
writes failed, which tells an orchestrator to restart a node that only needs space.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from strategylab.chaos import DiskFill, Pipeline, PipelineConfig, injected


async def _until_ready(pipeline: Pipeline, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while True:
            if (await pipeline.ready())[0]:
                return
            await asyncio.sleep(0.1)  # polling a real node's HTTP answer


@pytest.mark.timeout(90)
async def test_a_full_disk_fails_readiness_not_liveness(tmp_path: Path) -> None:
    """Every write of the node fails (RLIMIT_FSIZE 0: EFBIG, as a full disk): /health/ready
    goes 503 naming the store, /health/live stays 200 throughout; after the heal, ready."""
    async with Pipeline(PipelineConfig(work_dir=tmp_path / "lab", trader=False)) as pipeline:
        await _until_ready(pipeline, 20)
        full = DiskFill(pipeline.node_dir, mode="fsize", pid=pipeline.node_pid, limit=0)
        lives: list[bool] = []
        async with injected(full):
            async with asyncio.timeout(30):
                while True:
                    lives.append((await pipeline.live())[0])
                    ready, detail = await pipeline.ready()
                    if not ready and "store" in detail:
                        break
                    await asyncio.sleep(0.1)
            for _ in range(10):  # a second more on the full disk
                lives.append((await pipeline.live())[0])
                await asyncio.sleep(0.1)
        assert all(lives), lives
        await _until_ready(pipeline, 30)
