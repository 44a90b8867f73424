"""report.html in a real headless browser (Debian's chromium driven by Playwright), offline.

The page is opened from a ``file://`` URL with every network request aborted and counted: none
may be made. Each category's timeline SVG must be rendered with a non-zero size and hold its
drawn parts (shaded fault windows, probe dots, the rate line). With
``STRATEGYLAB_LAB_SCREENSHOT`` set, a full-page screenshot goes to that path (the README's
``docs/lab-report.png``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Route

from browser_support import chromium
from strategylab.chaos import prepare_report_dir, write_report
from test_lab_report import _report

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

WAIT_MS = 15_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium(WAIT_MS) as launched:
        yield launched


async def test_report_html_draws_every_timeline_offline(browser: Browser, tmp_path: Path) -> None:
    """Opened offline, report.html makes no request and draws a non-empty SVG per category."""
    directory = prepare_report_dir(tmp_path / "report")
    files = write_report(_report(tmp_path), directory)
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    requested: list[str] = []

    async def refuse(route: Route) -> None:
        if route.request.url.startswith("file://"):
            await route.continue_()
        else:
            requested.append(route.request.url)
            await route.abort()

    await page.route("**/*", refuse)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(files.html.as_uri(), wait_until="load", timeout=WAIT_MS)
    boxes = await page.evaluate(
        """() => [...document.querySelectorAll('figure.timeline')].map(f => {
            const svg = f.querySelector('svg');
            const r = svg.getBoundingClientRect();
            return {category: f.dataset.category, width: r.width, height: r.height,
                    paths: svg.querySelectorAll('path').length,
                    uses: svg.querySelectorAll('use').length};
        })"""
    )
    assert [b["category"] for b in boxes] == ["3", "4", "5"]
    for box in boxes:
        assert box["width"] > 300, box
        assert box["height"] > 80, box
        assert box["paths"] > 5, box  # axes, ticks, spines at least
    # The categories that ran have probe dots (matplotlib draws markers as <use> of one path).
    assert boxes[0]["uses"] > 20
    assert boxes[1]["uses"] > 10
    assert requested == []
    assert errors == []
    shot = os.environ.get("STRATEGYLAB_LAB_SCREENSHOT")
    if shot:
        await page.screenshot(path=shot, full_page=True)
