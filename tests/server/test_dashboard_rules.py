"""The ruleset editor in a real browser (issue 7): break a rule and see the error at its line, fix it, simulate
the edit against past events, save it (hot-reloaded), and roll back — with no console errors. Headless Chromium
(Debian's) driven by Playwright; skips where chromium is absent, fails under CI without it."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from tests.server.test_crash import CORPUS
from tests.server.test_reports_browser import chromium_or_skip

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]


def _post(url: str, key: str, event: dict) -> dict:
    req = urllib.request.Request(f"{url}/api/agent/process?mode=sync", data=json.dumps(event).encode(),
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.loads(r.read())


def _config(url: str, key: str) -> dict:
    req = urllib.request.Request(f"{url}/api/agent/config", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.loads(r.read())


def test_break_fix_simulate_save_and_roll_back_in_the_editor(serve, config_dirs) -> None:
    browser_path = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    rulesets, policies = config_dirs  # the editor saves: into a copy, never the repo's own files
    front = serve("--rulesets", str(rulesets), "--policies", str(policies))
    front.start()
    asyncio.run(front.ready())
    billing = [e for e in CORPUS if "invoice" in json.dumps(e).lower()][:6]
    for i, e in enumerate(billing):
        _post(front.url, front.key, {k: v for k, v in e.items() if k != "org"} | {"id": f"past-{i}"})
    original = _config(front.url, front.key)["files"]["intake.yaml"]
    rule = "    then: {intent: BILLING_QUESTION, confidence: 0.85}"
    line = original.splitlines().index(rule) + 1

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.goto(f"{front.url}/login")
            page.fill("#key", front.key)
            page.click("button[type=submit]")
            page.wait_for_url(f"{front.url}/")
            page.goto(f"{front.url}/rules")
            page.click("#files li[data-name='intake.yaml']")

            # break it: an intent that does not exist, reported at its line as you type
            page.fill("#text", original.replace(rule, rule.replace("BILLING_QUESTION", "BILLING_QUESTIONS")))
            page.wait_for_selector(f"#problems li:has-text('intake.yaml:{line}:')")
            assert page.inner_text("#gutter .bad") == str(line)
            assert page.is_disabled("#save")

            # fix it with a real change: billing by this rule now needs approval
            page.fill("#text", original.replace(rule, rule.replace("0.85", "0.65")))
            page.wait_for_function("document.getElementById('state').textContent === 'valid, not saved'")
            assert page.locator("#problems li.error").count() == 0

            page.fill("#days", "1")
            page.click("#simulate")
            page.wait_for_selector("#simulated")
            header = page.inner_text("#simulated")
            assert "past decisions would change" in header and not header.startswith("0 of"), header

            page.click("#save")
            page.wait_for_selector("#saved")
            saved = _config(front.url, front.key)
            assert saved["files"]["intake.yaml"] == original.replace(rule, rule.replace("0.85", "0.65"))

            page.click("#history button[data-rollback]")
            page.wait_for_selector("#rolled-back")
            assert _config(front.url, front.key)["files"]["intake.yaml"] == original
            page.wait_for_selector("#history .pill")  # the history now marks the rolled-back revision active
        finally:
            browser.close()
    assert errors == []
