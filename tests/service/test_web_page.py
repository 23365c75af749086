"""The web console at ``/`` in a real headless Chromium (Debian's ``chromium``, driven by Playwright)
against a running ``recagent serve`` with the stand-in model.

One service per module (per xdist worker) keeps the tests fast; each test works on its own
users and compares only what it changed itself, so the order they run in does not matter.

Every wait is on a DOM condition (a card, a ``data-state``, a text), never on time. The browser
may reach 127.0.0.1 only: any other request is aborted and fails the test. Each test saves a
screenshot to ``out/screenshots/`` (git-ignored); ``docs/screenshot.png`` is one of them.
Skipped only where no Chromium is installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, Request, Route, expect, sync_playwright

from tests.service.conftest import SAMPLE, LiveService

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "out" / "screenshots"
CHROMIUM = Path(os.environ.get("RECAGENT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # the tests run as root in CI, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000  # a bound for a broken page, not a pace: every wait ends on its condition


@dataclass
class Browser:
    page: Page
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    def screenshot(self, name: str, *, full_page: bool = False) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


@pytest.fixture(scope="module")
def console(shared_service: LiveService) -> LiveService:
    """The module's shared ``recagent serve`` (sample data, tenant ``shop``, stand-in model)."""
    return shared_service


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """A fresh Chromium profile and one page; requests off 127.0.0.1 are aborted and recorded."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        page = context.pages[0] if context.pages else context.new_page()
        seen = Browser(page)

        def only_loopback(route: Route, request: Request) -> None:
            seen.requests.append(request.url)
            if request.url.startswith("http://127.0.0.1:"):
                route.continue_()
            else:
                seen.blocked.append(request.url)
                route.abort()

        context.route("**/*", only_loopback)
        page.on("console", lambda m: seen.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: seen.console_errors.append(str(e)))
        try:
            yield seen
        finally:
            context.close()
    assert seen.blocked == [], seen.blocked


def sign_in(browser: Browser, service: LiveService, key: str, user: str = "u001") -> Page:
    """Open the page and sign in with the keyboard; returns once the user's cards are shown."""
    page = browser.page
    response = page.goto(f"{service.url}/")
    assert response is not None and response.ok
    page.get_by_label("User id").fill(user)
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")
    expect(page.locator("#tenant-name")).to_have_text("shop")
    expect(page.locator("#recs-list .card").first).to_be_visible()
    return page


def card_ids(page: Page) -> list[str]:
    return page.locator("#recs-list .card").evaluate_all("cards => cards.map(c => c.dataset.itemId)")


def test_cards_render_and_a_dislike_removes_the_item_on_refresh(
    console: LiveService, browser: Browser
) -> None:
    key = console.keys["rw"]
    page = sign_in(browser, console, key)
    cards = page.locator("#recs-list .card")
    expect(cards).to_have_count(6)
    first = cards.first
    title = first.locator("h3").inner_text()
    assert first.locator(".reason").inner_text().strip()
    assert set(cards.locator(".badge").all_inner_texts()) <= {"llm", "retriever", "fallback", "cold start"}
    disliked = card_ids(page)[0]
    before = page.locator("#recs-list").get_attribute("data-loaded")

    page.get_by_role("button", name=f"Dislike: {title}", exact=True).click()
    expect(first).to_have_attribute("data-reaction", "dislike")
    expect(page.locator("#status")).to_contain_text("Dislike recorded")
    page.get_by_role("button", name="Refresh", exact=True).click()
    expect(page.locator("#recs-list")).not_to_have_attribute("data-loaded", before or "")
    expect(cards.first).to_be_visible()
    browser.screenshot("dislike-then-refresh")

    assert disliked not in card_ids(page)
    # the key travelled only in headers: no URL, no log line, nothing but this tab's sessionStorage
    assert not [url for url in browser.requests if key in url]
    assert key not in console.log.read_text()
    stored = page.evaluate("() => [sessionStorage.getItem('recagent.apiKey'), localStorage.length]")
    assert stored == [key, 0]
    assert browser.console_errors == []  # includes Content-Security-Policy violations


def test_a_chat_message_streams_a_reply_that_names_catalog_items(
    console: LiveService, browser: Browser
) -> None:
    page = sign_in(browser, console, console.keys["ro"])
    box = page.get_by_label("Message")
    box.fill("I'm looking for a board game for two")
    box.press("Enter")
    reply = page.locator("#chat-log li.assistant").last
    expect(reply).to_have_attribute("data-state", "done")
    browser.screenshot("chat")

    text = reply.locator(".text").inner_text()
    # appended delta by delta as the events arrived: one text node per `text` event
    pieces = reply.locator(".text").evaluate("span => span.childNodes.length")
    picks = reply.locator(".picks li").all_inner_texts()
    with (SAMPLE / "items.csv").open() as handle:
        catalog = {row["title"] for row in csv.DictReader(handle)}
    assert pieces > 1 and picks
    assert set(picks) <= catalog
    assert picks[0] in text  # the streamed reply names the catalog item it recommends first
    assert browser.console_errors == []


def test_the_profile_history_shows_the_version_made_by_feedback_and_refinement(
    console: LiveService, browser: Browser
) -> None:
    page = sign_in(browser, console, console.keys["rw"], user="u002")
    history = page.locator("#profile-history li")
    expect(history).to_have_count(0)
    page.get_by_role("button", name="Build profile").click()
    expect(history).to_have_count(1)
    expect(page.locator("#diff-title")).to_have_text("Changes in v1")

    expect(page.get_by_label("Refine the profile with each reaction")).to_be_checked()
    title = page.locator("#recs-list .card h3").nth(1).inner_text()
    page.get_by_role("button", name=f"Like: {title}", exact=True).click()
    expect(history).to_have_count(2)
    expect(page.locator("#profile-history li").first).to_contain_text("refine")
    expect(page.locator("#diff-title")).to_have_text("Changes v1 → v2")
    expect(page.locator("#profile-diff li").first).to_be_visible()
    browser.screenshot("profile-history")

    with console.client(console.keys["ro"]) as http:
        versions = http.get("/v1/users/u002/profile/history").json()["versions"]
    assert [(v["version"], v["producer"]) for v in versions] == [(1, "profile"), (2, "refine")]
    assert page.locator("#profile-current").inner_text().startswith("Version 2 · refine")
    assert browser.console_errors == []


def _tile(page: Page, name: str) -> int:
    return int(re.sub(r"[^0-9]", "", page.locator(f"#dash-{name}").inner_text()))


def test_the_dashboard_counters_move_after_requests(console: LiveService, browser: Browser) -> None:
    page = sign_in(browser, console, console.keys["rw"], user="u003")
    page.get_by_label("auto-refresh").uncheck()  # only the refreshes below change the tiles
    loads = int(page.locator("#dashboard").get_attribute("data-loads") or 0)
    page.get_by_role("button", name="Refresh dashboard").click()
    expect(page.locator("#dashboard")).to_have_attribute("data-loads", str(loads + 1))
    expect(page.locator("#dash-items")).to_have_text("300")
    before = {name: _tile(page, name) for name in ("events", "feedback", "rate", "model-calls", "tokens")}
    assert before["model-calls"] >= 1  # the cards of the sign-in came from the model

    with console.client(console.keys["rw"]) as http:
        posted = http.post(
            "/v1/events",
            json={"events": [{"user_id": "u003", "item_id": "SKU-10001", "behavior": "view"}] * 3},
        )
        assert posted.status_code == 200, posted.text
        for user in ("u004", "u005"):
            assert http.get(f"/v1/users/{user}/recommendations", params={"k": 3}).status_code == 200
    box = page.get_by_label("Message")
    box.fill("something for the kitchen")
    box.press("Enter")
    expect(page.locator("#chat-log li.assistant").last).to_have_attribute("data-state", "done")
    title = page.locator("#recs-list .card h3").nth(1).inner_text()
    # feedback from the page, which refreshes the dashboard and the profile by itself
    page.get_by_role("button", name=f"Like: {title}", exact=True).click()
    expect(page.locator("#dash-feedback")).to_have_text(str(before["feedback"] + 1))
    expect(page.locator("#profile-history li")).to_have_count(2)  # the like refined a first profile
    browser.screenshot("dashboard", full_page=True)  # every panel in use: docs/screenshot.png

    after = {name: _tile(page, name) for name in before}
    assert after["events"] == before["events"] + 3
    assert after["rate"] > before["rate"]
    assert after["model-calls"] > before["model-calls"] and after["tokens"] > before["tokens"]
    served = httpx.get(f"{console.url}/v1/dashboard", headers={"Authorization": "Bearer x"})
    assert served.status_code == 401  # the dashboard's numbers need a key like the rest of /v1


def test_the_page_is_served_with_its_types_and_a_self_only_policy(console: LiveService) -> None:
    files = {
        "/": "text/html",
        "/web/style.css": "text/css",
        "/web/app.js": "javascript",
        "/web/vendor/eventsource-parser/stream.js": "javascript",
        "/web/favicon.svg": "image/svg+xml",
    }
    for path, kind in files.items():
        response = httpx.get(f"{console.url}{path}")
        assert response.status_code == 200, path
        assert kind in response.headers["content-type"], (path, response.headers["content-type"])
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "unsafe" not in policy and "http" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
    page = httpx.get(f"{console.url}/").text
    assert "<script>" not in page and "style=" not in page  # nothing inline: the policy forbids it
    assert httpx.get(f"{console.url}/web/nothing.js").status_code == 404
    document = httpx.get(f"{console.url}/openapi.json").json()
    assert "/" not in document["paths"] and "/v1/dashboard" in document["paths"]


def test_the_page_works_from_the_keyboard_with_labelled_controls(
    console: LiveService, browser: Browser
) -> None:
    page = sign_in(browser, console, console.keys["rw"])
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, textarea, select, button')]
              .filter(el => !el.closest('[hidden]'))
              .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                            && !el.textContent.trim())
              .map(el => el.outerHTML)"""
    )
    assert unlabelled == []
    # Tab from the recommendations' Refresh button reaches the first card's Like button
    page.get_by_role("button", name="Refresh", exact=True).focus()
    title = page.locator("#recs-list .card h3").first.inner_text()
    for _ in range(5):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.dataset.signal") == "like":
            break
    focused = page.evaluate(
        "() => [document.activeElement.getAttribute('aria-label'),"
        " getComputedStyle(document.activeElement).outlineStyle]"
    )
    assert focused == [f"Like: {title}", "solid"]  # the focus ring is visible
    page.keyboard.press("Enter")
    expect(page.locator("#recs-list .card").first).to_have_attribute("data-reaction", "like")
    assert browser.console_errors == []


def test_a_wrong_key_is_refused_and_signing_out_forgets_the_key(
    console: LiveService, browser: Browser
) -> None:
    page = browser.page
    page.goto(f"{console.url}/")
    page.get_by_label("API key").fill("rk_00000000_not-a-real-key-at-all")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#status")).to_contain_text("unknown or revoked API key")
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate("() => sessionStorage.length") == 0

    page = sign_in(browser, console, console.keys["ro"], user="u007")
    page.reload()  # the key outlives a reload of the tab...
    expect(page.locator("#recs-list .card").first).to_be_visible()
    page.get_by_role("button", name="Sign out").click()  # ...but not signing out
    expect(page.get_by_label("API key")).to_be_focused()
    assert page.evaluate("() => sessionStorage.getItem('recagent.apiKey')") is None
    expect(page.locator("#recs-list .card")).to_have_count(0)
