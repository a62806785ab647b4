"""The queue page in a real browser against the real daemon: Debian's Chromium at
/usr/bin/chromium driven by Playwright (its bundled browsers are never downloaded: no
`playwright install`). Without Chromium the test skips, under CI=true it fails (`.ci/test`
installs the `chromium` package when it is absent and we are root).

Screenshots go to $GATEWAY_TEST_ARTIFACTS, or tests/artifacts/ (ignored by git).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from email.utils import formataddr
from pathlib import Path
from typing import Any

import pytest

from gateway.api.auth import token_digest
from tests.helpers import ROOT, DaemonProcess, make_email
from tests.queue_page.conftest import TOKEN

CHROMIUM = Path("/usr/bin/chromium")
# As root Chromium needs --no-sandbox; the rest keep it from reaching the network on its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS_SUBJECT = "Invoice export <script>alert(1)</script>"
XSS_NAME = '"><img src=x onerror=alert(2)>'
JUMPER_SUBJECT = "Everything is down"
# The page's own refresh, the worker and SMTP together take seconds; this only bounds a hang.
WAIT_MS = 45_000
COUNTDOWN = re.compile(r"^(overdue )?(\d+d \d\dh|\d+h \d\dm|\d+m \d\ds)$")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is required under CI=true (.ci/test installs chromium)")
        pytest.skip(f"{CHROMIUM} is not installed (skipped outside CI; apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def artifacts() -> Path:
    path = Path(os.environ.get("GATEWAY_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def daemon_with_token(
    make_config: Callable[..., Path], daemons: list[DaemonProcess]
) -> DaemonProcess:
    config = make_config()
    with (config / "gateway.toml").open("a") as fh:
        fh.write(
            "\n[[api.tokens]]\n"
            'name = "shift-lead"\n'
            f'sha256 = "{token_digest(TOKEN)}"\n'
            'scopes = ["read"]\n'
        )
    daemon = DaemonProcess(config)
    daemons.append(daemon)
    return daemon.start()


def first_row_subject_is(subject: str) -> str:
    return (
        "() => { const row = document.querySelector('tr.ticket .subject-text');"
        f" return row !== null && row.textContent === {subject!r}; }}"
    )


def test_a_queue_jumping_ticket_rises_to_the_top_on_the_pages_own_refresh(
    browser: Any, daemon_with_token: DaemonProcess, artifacts: Path
) -> None:
    daemon = daemon_with_token
    base = f"http://{daemon.status()['listeners']['api']}"
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:  # alert() from injected markup would land here
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    try:
        # A normal ticket from an unknown sender whose subject and name are markup (sent first:
        # the worker makes its ticket while we log in).
        daemon.send(
            make_email(
                subject=XSS_SUBJECT,
                body="How do I export last month's invoices to CSV?",
                sender=formataddr((XSS_NAME, "pat@unknown.example")),
                message_id="<normal@unknown.example>",
            )
        )
        # Not logged in: the page sends us to its login form; the token gets us a session.
        page.goto(f"{base}/queue")
        assert page.url == f"{base}/queue/login"
        page.fill("#token", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/queue")
        cookies = context.cookies()
        assert [c["name"] for c in cookies] == ["gw_queue_session"]
        assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
        assert TOKEN not in cookies[0]["value"] and TOKEN not in page.content()

        page.wait_for_function(first_row_subject_is(XSS_SUBJECT), timeout=WAIT_MS)
        # From here on the page must update itself: a reload would lose this marker.
        page.evaluate("window.__stillTheSameDocument = true")
        refreshes = int(page.get_attribute("#queue", "data-refreshes") or "0")

        # A queue-jumping ticket: an outage for all users, on a plan that may jump the queue.
        daemon.send(
            make_email(
                subject=JUMPER_SUBJECT,
                body="None of our staff can open the application since 7am.",
                message_id="<outage@acme-clinic.example>",
            )
        )
        page.wait_for_function(first_row_subject_is(JUMPER_SUBJECT), timeout=WAIT_MS)
        assert page.evaluate("window.__stillTheSameDocument") is True
        assert int(page.get_attribute("#queue", "data-refreshes") or "0") > refreshes

        rows = page.locator("tr.ticket")
        assert rows.count() == 2
        assert "JUMP" in rows.nth(0).locator(".badge").all_inner_texts()
        assert rows.nth(0).locator(".level").inner_text() == "urgent"
        # Customer text shows as text: the markup is on screen, never in the document.
        assert rows.nth(1).locator(".subject-text").inner_text() == XSS_SUBJECT
        assert XSS_NAME in rows.nth(1).locator(".contact").inner_text()
        assert page.locator("tr.ticket img, tr.ticket script").count() == 0
        assert dialogs == []
        # The countdowns are ticked by the page's script in the format the server renders.
        for sla in rows.locator(".sla[data-due]").all():
            assert COUNTDOWN.match(sla.inner_text()), sla.inner_text()
            assert sla.get_attribute("class") in ("sla ok", "sla amber", "sla red")

        laptop = artifacts / "queue-laptop.png"
        page.screenshot(path=str(laptop), full_page=True)
        # On a phone the table becomes cards: no header row, the labels beside the values.
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.locator("table.queue thead").is_hidden()
        phone = artifacts / "queue-phone.png"
        page.screenshot(path=str(phone), full_page=True)
        for shot in (laptop, phone):
            assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and shot.stat().st_size > 1000

        # Logging out ends the session: the page is closed to us again.
        page.click("header button[type=submit]")
        page.wait_for_url(f"{base}/queue/login")
        page.goto(f"{base}/queue")
        assert page.url == f"{base}/queue/login"
    finally:
        context.close()
