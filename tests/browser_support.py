"""Debian's Chromium driven by Playwright, for the browser tests (never a downloaded browser).

Without ``/usr/bin/chromium`` a browser test is skipped, except in CI (``CI`` set), where it
fails: CI must run it (``.ci/run`` installs the package).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
HAVE_CHROMIUM = CHROMIUM.exists()
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.asynccontextmanager
async def chromium(timeout_ms: float) -> AsyncIterator[Browser]:
    """A launched headless Chromium, closed on exit; skip (or, in CI, fail) without one."""
    if not HAVE_CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: CI must run the browser test")
        pytest.skip(f"{CHROMIUM} is not installed")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=ARGS, timeout=timeout_ms
        )
        try:
            yield launched
        finally:
            await launched.close()
