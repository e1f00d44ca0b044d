"""The analytics, calendar and pipelines pages in a real browser: `astralis serve` (LLM off) with data made
through the API (intakes routed to pipelines and assigned, a booking form that books a calendar event), signed in
through the login form, each page driven by headless Chromium (Debian's, through Playwright) and checked for its
content and for no console errors. CI installs chromium (.ci/run); elsewhere the test skips when it is absent."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.server.test_api import HELD
from tests.server.test_reports_browser import chromium_or_skip

NEW_YORK = ZoneInfo("America/New_York")  # acme's time zone: the browser runs in it too

INTAKES = [
    {"id": "dash-sales-1", "source": "EMAIL", "type": "email:received",
     "data": {"from": "Jo Rivera <jo@shop.example>", "to": "hello@acme.example", "subject": "Pricing for a new store",
              "text": "Hi, how much would a Shopify build cost? We'd like a quote and a demo."}},
    {"id": "dash-support-1", "source": "EMAIL", "type": "email:received",
     "data": {"from": "Mia Chen <mia@bakery.example>", "to": "help@acme.example", "subject": "Checkout broken",
              "text": "Our checkout page is showing a 500 error since the plugin update, nobody can pay."}},
]


def booking_start() -> datetime:
    """10:00 in New York on the Tuesday of the week after next: in the future and in business hours."""
    today = datetime.now(NEW_YORK).date()
    day = today + timedelta(days=14 - today.weekday() + 1)
    return datetime(day.year, day.month, day.day, 10, tzinfo=NEW_YORK)


class Site:
    """The running service with its key, and the data the test made."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.decisions: dict[str, dict[str, Any]] = {}

    def api(self, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(self.url + path, method="GET" if body is None else "POST",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {self.key}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=15) as r:
            return json.loads(r.read())

    def process(self, event: dict[str, Any]) -> dict[str, Any]:
        decision = self.api("/api/agent/process?mode=sync", event)
        self.decisions[event["id"]] = decision
        return decision

    def until(self, what: str, check: Callable[[], Any], within: float = 15.0) -> Any:
        deadline = time.monotonic() + within
        while True:
            got = check()
            if got:
                return got
            assert time.monotonic() < deadline, f"no {what} after {within} s"
            time.sleep(0.1)


@pytest.fixture
def site(serve: Callable[..., Any]) -> Site:
    server = serve()
    server.start()
    asyncio.run(server.ready())
    s = Site(server.url, server.key)
    held = s.process(HELD)  # held for a person: approved, so the turnaround has a value
    assert held["status"] == "REQUIRES_APPROVAL", held
    s.process({**HELD, "id": "dash-held-2"})  # and one still awaiting
    s.api(f"/api/agent/decisions/{held['id']}/approve", {"by": "kim"})
    for event in INTAKES:
        s.process(event)
    s.intakes = s.until("intakes", lambda: (lambda got: got if len(got) >= len(INTAKES) and all(
        i["assignee"] for i in got) else None)(s.api("/api/agent/intakes")["intakes"]))
    start = booking_start()
    s.booking_start = start
    s.process({"id": "dash-booking-1", "source": "WEBHOOK", "type": "booking:created",
               "data": {"form": "booking", "name": "Luca Bianchi", "email": "luca@example.com",
                        "requested_start": start.isoformat(), "duration_minutes": 30,
                        "purpose": "Discuss the new menu pages", "host": "u-sam"}})
    week = (start - timedelta(days=start.weekday())).date()
    s.booked = s.until("calendar event", lambda: s.api(
        f"/api/agent/calendar?host=u-sam&from={week}T00:00:00Z&to={week + timedelta(days=8)}T00:00:00Z")["events"])
    return s


@contextmanager
def browser_page(site: Site) -> Iterator[tuple[Any, list[str]]]:
    """A signed-in page (through the login form) and the console errors and page errors seen after signing in."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_or_skip(), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                          "--disable-background-networking"])
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000}, timezone_id="America/New_York",
                                          locale="en-US")
            page = context.new_page()
            page.set_default_timeout(10_000)
            page.goto(f"{site.url}/login")
            page.fill("#key", site.key)
            page.click("button[type=submit]")
            page.wait_for_url(f"{site.url}/")
            assert any(c["name"] == "astralis_session" for c in context.cookies())
            page.on("console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            yield page, errors
        finally:
            browser.close()


def test_analytics_draws_its_charts(site: Site, tmp_path: Path) -> None:
    with browser_page(site) as (page, errors):
        page.goto(f"{site.url}/analytics")
        page.wait_for_selector("[data-chart=by-type] .uplot canvas")
        # counts over time: uPlot, a time axis in sensible buckets (24 h → 30 min), every decision counted
        by_type = page.locator("[data-chart=by-type] > div")
        assert by_type.get_attribute("data-step") == "1800" and by_type.get_attribute("data-buckets") in ("48", "49")
        total = len(site.decisions)
        assert by_type.get_attribute("data-total") == str(total)
        assert page.locator("[data-chart=by-status] > div").get_attribute("data-total") == str(total)
        legend = page.locator("[data-chart=by-type] .u-legend").inner_text()
        assert "Book a meeting" in legend and "Assign to a pipeline" in legend  # human labels
        assert "(per 30 min, EST)" in page.locator("[data-chart=by-type] figcaption").inner_text() or \
            "(per 30 min, EDT)" in page.locator("[data-chart=by-type] figcaption").inner_text()
        # with the LLM off there are no calls: said in words, no bar for zero
        assert page.locator("[data-chart=llm-rate] canvas").count() == 0
        assert "No LLM calls in this window" in page.locator("[data-chart=llm-rate]").inner_text()
        # categories: a zero shows its number and no bar
        bars = {name: page.locator(f"[data-chart={name}] svg rect.bar").count()
                for name in ("decided-by", "approvals", "top-rules")}
        assert all(n > 0 for n in bars.values()), bars
        approvals = page.locator("[data-chart=approvals] svg")
        assert approvals.locator("rect.bar").count() == 2  # approved 1, awaiting 1; rejected 0 draws nothing
        assert "rejected" in (approvals.text_content() or "")
        top = page.locator("[data-chart=top-rules] svg").text_content() or ""
        assert "bookings/booking-form" in top
        never = page.locator("[data-chart=unmatched-rules] li").all_inner_texts()
        assert never and "bookings/booking-form" not in never and "spam/" in " ".join(never)
        assert page.locator("#summary").inner_text().startswith("Decisions")
        assert page.locator("#failures").inner_text().count("No dead-lettered actions") == 1
        page.screenshot(path=str(tmp_path / "analytics-24h.png"), full_page=True)
        # another window: the last 7 days, in 3-hour buckets
        page.select_option("#range", "7d")
        page.click("#window button[type=submit]")
        page.wait_for_url("**/analytics?range=7d")
        page.wait_for_function("document.querySelector('[data-chart=by-status] > div')?.dataset.step === '10800'")
        page.wait_for_selector("[data-chart=by-status] .uplot canvas")
        page.screenshot(path=str(tmp_path / "analytics.png"), full_page=True)
    assert errors == []


def test_the_calendar_shows_the_agents_booking_in_its_week(site: Site, tmp_path: Path) -> None:
    [event] = site.booked
    decision_id = site.decisions["dash-booking-1"]["id"]
    assert event["decision_id"] == decision_id
    week = (site.booking_start - timedelta(days=site.booking_start.weekday())).date()
    with browser_page(site) as (page, errors):
        page.goto(f"{site.url}/calendar?host=u-sam&week={week}")
        shown = page.locator(f"[data-event-id='{event['id']}']")
        shown.wait_for()
        assert "agent" in (shown.get_attribute("class") or "")
        assert shown.locator(".agent-mark").inner_text() == "agent"
        assert "Discuss the new menu pages" in shown.inner_text() and "10:00" in shown.inner_text()
        assert shown.locator("a").get_attribute("href") == f"/decisions/{decision_id}"
        assert page.locator(f"[data-day='{site.booking_start.date()}'] [data-event-id]").count() == 1
        assert page.locator("#host").input_value() == "u-sam"
        page.screenshot(path=str(tmp_path / "calendar-week.png"), full_page=True)
        # the next week is empty; back again shows it
        page.click("#next")
        page.wait_for_url(f"**week={week + timedelta(days=7)}")
        page.wait_for_selector(f"[data-day='{week + timedelta(days=7)}']")
        assert page.locator("[data-event-id]").count() == 0
        page.click("#prev")
        page.wait_for_selector(f"[data-event-id='{event['id']}']")
        # another host has nothing that week
        page.select_option("#host", "u-kim")
        page.wait_for_url("**host=u-kim**")
        page.wait_for_function("!document.querySelector('[data-event-id]')")
        page.screenshot(path=str(tmp_path / "calendar.png"), full_page=True)
    assert errors == []


def test_the_calendar_opens_on_the_hosts_who_take_bookings_and_the_week_of_the_next_booking(site: Site,
                                                                                          tmp_path: Path) -> None:
    [event] = site.booked
    week = (site.booking_start - timedelta(days=site.booking_start.weekday())).date()
    with browser_page(site) as (page, errors):
        page.goto(f"{site.url}/calendar")  # no host, no week: the page chooses
        page.wait_for_url(f"**week={week}")  # the week after next, where the booking is; not this (empty) one
        shown = page.locator(f"[data-event-id='{event['id']}']")
        shown.wait_for()
        assert page.locator("#host").input_value() == ""
        assert "Sam Carter, Lee Park" in page.locator("#host option[value='']").inner_text()  # takes_bookings
        assert "10:00–10:30 · Sam Carter" in shown.inner_text()
        assert shown.locator("q.their-words").inner_text() == "Discuss the new menu pages"  # the sender's words
        assert "— Luca Bianchi" in shown.inner_text()
        assert "Times in America/New_York" in page.locator("main").inner_text()
        assert "1 booking this week" in page.locator("#summary").inner_text()
        page.click("#today")
        page.wait_for_url(f"**week={datetime.now(NEW_YORK).date() - timedelta(days=datetime.now(NEW_YORK).weekday())}")
        page.click("#upcoming")
        page.wait_for_url(f"**week={week}")
        shown.wait_for()
        page.screenshot(path=str(tmp_path / "calendar-opened.png"), full_page=True)
    assert errors == []


def test_the_boards_show_each_intake_in_its_stage(site: Site, tmp_path: Path) -> None:
    with browser_page(site) as (page, errors):
        page.goto(f"{site.url}/pipelines")
        page.wait_for_selector("[data-intake-id]")
        for intake in site.intakes:
            card = page.locator(f"[data-pipeline='{intake['pipeline']}'] [data-stage='{intake['stage']}'] "
                                f"[data-intake-id='{intake['id']}']")
            assert card.count() == 1, intake
            assert f"P{intake['priority']}" in card.inner_text()
        assert page.locator("#loads svg rect.bar").count() == 7  # acme's users
        loads = page.locator("#loads svg").text_content() or ""
        assert "/ 12" in loads and "1 / " in loads
        assert page.locator("#detail").is_hidden()
        # ?intake=ID opens one with its history and its decision
        sales = next(i for i in site.intakes if i["pipeline"] == "sales-inquiries")
        page.goto(f"{site.url}/pipelines?intake={sales['id']}")
        page.wait_for_selector("#detail .decision-link")
        assert page.locator("#detail .decision-link").get_attribute("href") == f"/decisions/{sales['decision_id']}"
        assert sales["decision_id"] == site.decisions["dash-sales-1"]["id"]
        assert page.locator("#detail tbody tr").count() == len(sales["history"]) >= 1
        assert "assigned" in page.locator("#detail tbody").inner_text()
        assert page.locator(f".intake-card.selected[data-intake-id='{sales['id']}']").count() == 1
        # clicking another card opens that one
        other = next(i for i in site.intakes if i["id"] != sales["id"])
        page.click(f"[data-intake-id='{other['id']}']")
        page.wait_for_url(f"**intake={other['id']}")
        page.wait_for_function(f"document.querySelector('#detail h2')?.textContent.includes({json.dumps(other['title'])})")
        page.screenshot(path=str(tmp_path / "pipelines.png"), full_page=True)
    assert errors == []
