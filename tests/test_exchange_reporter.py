"""The exchange reports a failure of its tick generator through the library's ErrorReporter."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from strategylab.exchange import Exchange, ExchangeConfig
from strategylab.fault_tolerance import ErrorRecoveryManager, RecoveryEvent


@pytest.mark.timeout(15)
async def test_a_generator_failure_is_reported_once_to_the_manager(tmp_path: Path) -> None:
    """The generator raising (a seam no real input reaches) is one error for the manager, under
    the component ``exchange``, and the exchange is no longer healthy."""
    manager = ErrorRecoveryManager(capture_state=False)
    seen: list[str] = []
    finished = asyncio.Event()

    def listen(event: RecoveryEvent) -> None:
        seen.append(event.component)
        if event.kind == "recovery_finished":
            finished.set()

    manager.add_listener(listen)
    exchange = Exchange(
        ExchangeConfig(symbols=("A",), data_dir=tmp_path / "ex", tick_rate=1000), manager=manager
    )

    def broken(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError("generator broke")

    exchange._gen.generate = broken  # type: ignore[method-assign,assignment]  # the seam
    await exchange.start()
    try:
        async with asyncio.timeout(10):
            await finished.wait()
        assert not await exchange.health()
    finally:
        await exchange.stop()
    assert manager.statistics().total_errors == 1
    assert "exchange" in seen
