"""The html simulation report in a real browser: headless Chromium (Debian's, driven by Playwright) renders it
with no console errors, the four charts are drawn with a size, and a screenshot shows them (written under the
test's temporary folder, never into the repo). CI installs chromium (.ci/run); elsewhere the test skips with the
reason when the browser is absent."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.server.test_cli_simulate import compare_args, dirs, main  # noqa: F401 (dirs is a fixture)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def chromium_or_skip() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail("CI must have Debian's chromium (.ci/run installs it)")
    pytest.skip("no chromium here (apt-get install chromium): the browser check runs in CI")


def test_the_html_report_renders_in_chromium(dirs, tmp_path: Path) -> None:  # noqa: F811 (the fixture)
    browser_path = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    report = tmp_path / "report.html"
    assert main(compare_args(dirs, "--format", "html", "--out", str(report))) == 0
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                          "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            boxes = [page.locator("svg").nth(i).bounding_box() for i in range(page.locator("svg").count())]
            shot = Path(os.environ.get("ASTRALIS_REPORT_SHOT", tmp_path / "report.png"))
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert requests == [report.as_uri()], "the report loaded something besides itself"
    assert len(boxes) == 4 and all(b is not None and b["width"] > 100 and b["height"] > 50 for b in boxes), boxes
    assert shot.stat().st_size > 20_000
