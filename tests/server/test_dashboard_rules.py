"""The ruleset editor in a real browser (issues 7 and 16): CodeMirror with a completion from the JSON Schema;
break a rule and see the error as a diagnostic at its line (and scrolled to from the findings), fix it, simulate
the edit against past events (the flips, linked to the past decisions they name), save it (hot-reloaded), and
roll back — with no console errors. Headless Chromium (Debian's) driven by Playwright; skips where chromium is
absent, fails under CI without it."""

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


def set_text(page, text: str) -> None:
    """Replace the editor's text as a person pasting would (select all, type over it)."""
    page.click(".cm-content")
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(text)


def diagnostic_line(page) -> str:
    """The number in the gutter beside the line that carries the error diagnostic."""
    return page.evaluate("""() => {
        const mark = document.querySelector('.cm-lintRange-error');
        const top = mark.closest('.cm-line').getBoundingClientRect().top;
        const numbers = [...document.querySelectorAll('.cm-lineNumbers .cm-gutterElement')];
        return numbers.find((n) => Math.abs(n.getBoundingClientRect().top - top) < 3)?.textContent;
    }""")


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
            page.wait_for_selector("body[data-loaded]")
            assert page.locator("#no-history").is_visible()  # nothing saved yet, and it says so
            page.click("#files li[data-name='intake.yaml']")
            page.wait_for_selector(".cm-content")

            # simulating with no edits says so at once (it used to hang on "Simulating…")
            page.click("#simulate")
            page.wait_for_selector("#simulated")
            assert "Nothing edited yet" in page.inner_text("#simulated")

            # a completion from the ruleset schema: the intents, offered at `intent: BILL`
            set_text(page, original.replace(rule, "    then: {intent: BILL, confidence: 0.85}"))
            page.keyboard.press("Control+Home")
            for _ in range(line - 1):
                page.keyboard.press("ArrowDown")
            page.keyboard.press("End")
            for _ in range(len(", confidence: 0.85}")):
                page.keyboard.press("ArrowLeft")
            page.keyboard.press("Control+Space")
            page.wait_for_selector(".cm-tooltip-autocomplete li")
            assert "BILLING_QUESTION" in page.locator(".cm-tooltip-autocomplete li").all_inner_texts()[0]
            page.keyboard.press("Escape")

            # break it: an intent that does not exist, a diagnostic at its line as you type
            set_text(page, original.replace(rule, rule.replace("BILLING_QUESTION", "BILLING_QUESTIONS")))
            page.wait_for_selector(f"#problems li:has-text('intake.yaml:{line}:')")
            page.click(f"#problems li:has-text('intake.yaml:{line}:')")  # scrolls the editor to it
            page.wait_for_selector(".cm-lintRange-error")
            assert diagnostic_line(page) == str(line)
            assert page.locator(".cm-lint-marker-error").count() == 1
            assert page.is_disabled("#save")

            # fix it with a real change: billing by this rule now needs approval
            set_text(page, original.replace(rule, rule.replace("0.85", "0.65")))
            page.wait_for_function("document.getElementById('state').textContent === 'valid, not saved'")
            assert page.locator("#problems li.error").count() == 0
            assert page.locator(".cm-lintRange-error").count() == 0

            page.fill("#days", "1")
            page.click("#simulate")
            page.wait_for_selector("#simulated:has-text('would change')")
            header = page.inner_text("#simulated")
            assert "past decisions would change" in header and not header.startswith("0 of"), header
            flip = page.locator(".flips li").first
            assert "Billing question" in flip.inner_text() and "needs approval" in flip.inner_text()
            href = flip.locator("a").get_attribute("href")
            assert href.startswith("/decisions/dec_")  # the past decision, openable
            flip.locator("a").click()
            page.wait_for_url(f"**{href}")
            page.wait_for_selector("body[data-loaded]")
            page.go_back()
            page.wait_for_selector("body[data-loaded]")
            page.click("#files li[data-name='intake.yaml']")
            set_text(page, original.replace(rule, rule.replace("0.85", "0.65")))
            page.wait_for_function("document.getElementById('state').textContent === 'valid, not saved'")

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
