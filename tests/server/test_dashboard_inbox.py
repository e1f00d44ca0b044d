"""The approvals inbox as an approver uses it (issue 16, items 1, 3 and 6), in headless Debian Chromium through
Playwright at 1440 and 390 px wide: three held decisions are decided from the list without opening them — one
approved with a click, one rejected with a reason from the keyboard, one corrected from the keyboard (another intent
and assignee: approved with the change, and a label recorded) — each item
saying who wrote, what about (subject and first lines), what the agent proposes in words, why in one line (no
machine text about the LLM) and how sure it is; times are in the org's zone (New York), labelled, whatever the
browser's zone; no page overflows a 390 px screen; no console errors. Screenshots go under the test's temporary
folder (ASTRALIS_SHOTS names another), never into the repo."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.server.test_api import HELD
from tests.server.test_crash import Serve
from tests.server.test_dashboard_browser import Browser, chromium, post, row, started
from tests.server.test_reports_browser import chromium_or_skip

ALL_PAGES = ["/decisions", "/approvals", "/analytics", "/rules", "/calendar", "/pipelines"]


def shots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("ASTRALIS_SHOTS", tmp_path / "shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def in_zone(b: Browser, key: str, width: int) -> Any:
    """A signed-in page `width` px wide whose browser runs in Berlin (the org is in New York)."""
    context = b.browser.new_context(viewport={"width": width, "height": 900}, timezone_id="Europe/Berlin")
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.on("console", lambda m: b.errors.append(f"{page.url} {m.type}: {m.text}") if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: b.errors.append(f"{page.url} pageerror: {e}"))
    page.goto(f"{b.url}/login")
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{b.url}/")
    return page


def get(s: Serve, path: str) -> dict[str, Any]:
    """GET an API path with acme's key: the JSON answer."""
    req = urllib.request.Request(f"{s.url}{path}", headers={"Authorization": f"Bearer {s.key}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return dict(json.loads(r.read()))


def overflow(page: Any) -> int:
    """How many px the page is wider than its viewport (0 when it fits)."""
    return int(page.evaluate("document.documentElement.scrollWidth - window.innerWidth"))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("width", [1440, 390])
def test_an_approver_decides_three_held_decisions_from_the_list(serve: Callable[..., Serve], tmp_path: Path,
                                                                width: int) -> None:
    chromium_or_skip()
    s = started(serve())
    held = [post(s, {**HELD, "id": f"evt-inbox-{i}"}) for i in range(3)]
    assert all(d["status"] == "REQUIRES_APPROVAL" for d in held)
    shots = shots_dir(tmp_path)
    with chromium(s.url) as b:
        page = in_zone(b, s.key, width)
        page.goto(f"{s.url}/approvals")
        page.wait_for_selector("body[data-loaded]")
        assert page.locator("#count").inner_text() == "3"
        first = row(page, held[0]["id"])
        text = first.inner_text()
        # who, what, the proposal in words, why in one line, how sure
        assert "Maya" in first.locator(".who").inner_text()
        assert first.locator(".subject").inner_text() == "Re: December retainer invoice"
        assert "The checkout button does nothing on mobile" in first.locator(".snippet").inner_text()
        assert "Attached is the invoice" not in text  # the quoted reply is not the sender's new words
        proposal = first.locator(".proposal").inner_text()
        assert "Billing question → assign to General intake (new), Ana Ruiz; notify Ana Ruiz" in proposal
        why = first.locator(".why").inner_text()
        assert why.startswith("Why: Rules disagree: billing question vs support request")
        assert "no LLM provider is configured" not in text and "BILLING_QUESTION" not in text
        assert "55% sure" in text
        # relative time, the absolute one on hover in the org's zone, labelled
        stamp = first.locator("time")
        assert "ago" in stamp.inner_text() or stamp.inner_text() == "just now"
        assert stamp.get_attribute("title").endswith(("EST", "EDT"))
        stamp.click()  # a phone has no hover: a tap shows the absolute time
        assert stamp.inner_text() == stamp.get_attribute("title")
        stamp.click()
        assert stamp.inner_text() != stamp.get_attribute("title")
        assert "Times in America/New_York" in page.locator("main").inner_text()
        assert overflow(page) == 0
        page.screenshot(path=str(shots / f"approvals-{width}.png"), full_page=True)

        # j/k move through the queue (from the item the tap above made current)
        page.locator("h1").click()
        for key, want in (("j", 1), ("j", 2), ("j", 2), ("k", 1), ("k", 0)):
            page.keyboard.press(key)
            page.wait_for_function(f"document.querySelector('.item.current')?.dataset.id === '{held[want]['id']}'")
        # 1. approve with a click: the next one becomes the current one
        first.locator("button.approve").click()
        first.wait_for(state="detached")
        page.wait_for_function(f"document.querySelector('.item.current')?.dataset.id === '{held[1]['id']}'")
        # 2. reject from the keyboard: r asks for the reason, Enter sends it
        second = row(page, held[1]["id"])
        page.keyboard.press("r")
        assert second.locator(".reason").is_visible()
        page.keyboard.press("Enter")  # no reason: refused, said why
        second.locator(".verdict .error").wait_for()
        assert "Say why" in second.locator(".verdict .error").inner_text()
        page.keyboard.type("Wrong intent")
        page.keyboard.press("Enter")
        second.wait_for(state="detached")
        # 3. approve from the keyboard: the next one is current already
        # 3. correct from the keyboard: the next one is current already; c opens its form on the intent
        page.wait_for_function(f"document.querySelector('.item.current')?.dataset.id === '{held[2]['id']}'")
        third = row(page, held[2]["id"])
        page.keyboard.press("c")
        form = third.locator(".correct-form")
        assert form.is_visible() and not third.locator("button.correct").is_visible()
        assert page.evaluate("document.activeElement.classList.contains('fix-intent')")
        intent = third.locator(".fix-intent")
        assert intent.input_value() == "BILLING_QUESTION"
        labels = [o.strip() for o in intent.locator("option").all_inner_texts()]
        assert "Billing question (proposed)" in labels and "Support request" in labels and "SUPPORT_REQUEST" not in labels
        assert "Support requests" in third.locator(".fix-pipeline").inner_text()
        assert "Raj Mehta" in third.locator(".fix-assignee").inner_text()
        page.keyboard.press("a")  # a letter typed in the form is not a shortcut: nothing is approved
        page.keyboard.press("Escape")  # Esc closes the form; c opens it again
        assert not form.is_visible() and third.locator("button.correct").is_visible()
        page.keyboard.press("c")
        third.locator(".fix-note").fill("the checkout bug, not the invoice")
        page.keyboard.press("Enter")  # nothing changed yet: refused, said why, inline
        third.locator(".verdict .error").wait_for()
        assert "Nothing changed" in third.locator(".verdict .error").inner_text()
        intent.select_option("SUPPORT_REQUEST")
        assert not third.locator(".verdict .error").is_visible()  # said once; the change clears it
        third.locator(".fix-assignee").select_option(label="Raj Mehta")
        assert overflow(page) == 0
        page.screenshot(path=str(shots / f"approvals-correct-{width}.png"), full_page=True)
        third.locator(".fix-note").press("Enter")
        page.wait_for_function(f"document.querySelector('#rows [data-id=\"{held[2]['id']}\"]')?.dataset.status"
                               " === 'EXECUTED'")  # settles like an approval, with the new status
        assert third.locator(".verdict").inner_text() == "Done"
        third.wait_for(state="detached")
        assert page.locator("#count").inner_text() == "0" and page.locator("#empty").is_visible()
        assert page.url.endswith("/approvals")  # decided without opening any
        resolved = page.locator("#resolved").inner_text()
        assert resolved.count("Re: December retainer invoice") == 3 and "Wrong intent" in resolved
        assert "corrected (Billing question → Support request) and approved" in resolved
        assert overflow(page) == 0
        page.screenshot(path=str(shots / f"approvals-done-{width}.png"), full_page=True)
    assert b.errors == [], b.errors

    def decision(i: int) -> dict[str, Any]:
        return get(s, f"/api/agent/decisions/{held[i]['id']}")

    assert [decision(i)["status"] for i in range(3)] == ["EXECUTED", "REJECTED", "EXECUTED"]
    assert decision(1)["trace"]["review"]["note"] == "Wrong intent"
    fixed = decision(2)
    assert fixed["intent"] == "SUPPORT_REQUEST" and fixed["trace"]["review"]["verdict"] == "approve"
    assert fixed["trace"]["review"]["corrected"]["from"]["intent"] == "BILLING_QUESTION"
    assign = next(a for a in fixed["actions"] if a["type"] == "ASSIGN_PIPELINE")
    assert assign["params"]["pipeline"] == "support-requests" and assign["params"]["assignee"] == "u-raj"
    labels_by = {(x["decision_id"], x["kind"]): x for x in get(s, "/api/agent/labels")["labels"]}
    assert set(labels_by) == {(held[0]["id"], "approval"), (held[2]["id"], "correction")}
    label = labels_by[(held[2]["id"], "correction")]
    assert (label["intent"], label["assignee"], label["note"]) == (
        "SUPPORT_REQUEST", "u-raj", "the checkout bug, not the invoice")
    assert label["decided"]["intent"] == "BILLING_QUESTION"


@pytest.mark.timeout(180)
def test_no_page_overflows_a_phone_and_the_story_can_be_decided_there(serve: Callable[..., Serve],
                                                                      tmp_path: Path) -> None:
    chromium_or_skip()
    s = started(serve())
    held = post(s, HELD)
    shots = shots_dir(tmp_path)
    with chromium(s.url) as b:
        page = in_zone(b, s.key, 390)
        widths = {}
        for path in [*ALL_PAGES, f"/decisions/{held['id']}"]:
            page.goto(f"{s.url}{path}")
            page.wait_for_load_state("networkidle")
            widths[path] = overflow(page)
            page.screenshot(path=str(shots / f"{path.strip('/').replace('/', '-')}-390.png"), full_page=True)
        assert widths == dict.fromkeys(widths, 0), widths
        # one format, in the org's zone (New York) whatever the browser's (Berlin), across a DST change too
        page.wait_for_function("Astralis.zone === 'America/New_York'")
        assert page.evaluate("Astralis.when('2026-12-08T14:00:00Z')") == "Tue 8 Dec 2026, 09:00 EST"
        assert page.evaluate("Astralis.when('2026-07-08T13:00:00Z')") == "Wed 8 Jul 2026, 09:00 EDT"
        assert page.evaluate("Astralis.fromLocal('2026-12-08T09:00')") == "2026-12-08T14:00:00.000Z"
        assert page.evaluate("Astralis.fromLocal('2026-03-08T12:00')") == "2026-03-08T16:00:00.000Z"  # EDT that day
        assert page.evaluate("Astralis.span('2026-12-08T14:00:00Z', '2026-12-08T14:30:00Z')") == \
            "Tue 8 Dec, 09:00–09:30 EST"
        # the story at 390 px: its review box fits and works
        page.goto(f"{s.url}/decisions/{held['id']}")
        page.wait_for_selector("body[data-loaded]")
        box = page.locator("#approve").bounding_box()
        assert box is not None and box["x"] + box["width"] <= 390
        assert "Times in America/New_York" in page.locator("#proposal").inner_text()
        page.click("#approve")
        page.wait_for_function("document.getElementById('status')?.textContent === 'EXECUTED'")
    assert b.errors == [], b.errors


@pytest.mark.timeout(120)
def test_a_held_decision_is_corrected_on_its_story_at_390_px(serve: Callable[..., Serve], tmp_path: Path) -> None:
    chromium_or_skip()
    s = started(serve())
    held = post(s, {**HELD, "id": "evt-story-fix"})
    assert held["status"] == "REQUIRES_APPROVAL" and held["intent"] == "BILLING_QUESTION"
    shots = shots_dir(tmp_path)
    with chromium(s.url) as b:
        page = in_zone(b, s.key, 390)
        page.goto(f"{s.url}/decisions/{held['id']}")
        page.wait_for_selector("body[data-loaded]")
        form = page.locator("#correct")
        assert form.is_visible()
        intent = page.locator("#fix-intent")
        assert intent.input_value() == "BILLING_QUESTION"
        assert "Support request" in intent.inner_text() and "SUPPORT_REQUEST" not in intent.inner_text()
        intent.select_option("SUPPORT_REQUEST")
        page.locator("#fix-pipeline").select_option(label="Support requests")
        page.locator("#fix-assignee").select_option(label="Kim Osei")
        page.fill("#fix-note", "a bug report, not the invoice")
        assert overflow(page) == 0
        page.screenshot(path=str(shots / "story-correct-390.png"), full_page=True)
        page.locator("#correct button[type=submit]").click()
        page.wait_for_function("document.getElementById('status')?.textContent === 'EXECUTED'")
        assert page.locator("#correct-error").is_hidden()
        assert "Support request" in page.locator("#title").inner_text()
    assert b.errors == [], b.errors
    fixed = get(s, f"/api/agent/decisions/{held['id']}")
    assert fixed["status"] == "EXECUTED" and fixed["intent"] == "SUPPORT_REQUEST"
    assign = next(a for a in fixed["actions"] if a["type"] == "ASSIGN_PIPELINE")
    assert assign["params"]["pipeline"] == "support-requests" and assign["params"]["assignee"] == "u-kim"
    [label] = get(s, "/api/agent/labels")["labels"]
    assert (label["decision_id"], label["kind"], label["intent"], label["assignee"], label["note"]) == (
        held["id"], "correction", "SUPPORT_REQUEST", "u-kim", "a bug report, not the invoice")
