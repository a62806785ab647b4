"""The queue page over HTTP, against its routes served by uvicorn on a real port: login and
sessions, the table in queue order, escaping, the refresh fragment, and its failure answers."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape
from typing import Any

import httpx
import pytest

from gateway.api.auth import TokenTable
from gateway.api.queue_page import COOKIE_NAME
from tests.queue_page.conftest import LEVELS, T0, TOKEN, QueueServer, start_queue_server

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(2)>'


def refs(html: str) -> list[str]:
    return re.findall(r'<tr class="ticket[^"]*" data-ref="([^"]+)"', html)


def set_cookie(response: httpx.Response) -> str:
    values = response.headers.get_list("set-cookie")
    assert len(values) == 1, values
    return values[0]


# ---- login and sessions -------------------------------------------------------------------


def test_the_queue_redirects_to_the_login_form_without_a_session(
    queue_server: QueueServer,
) -> None:
    with queue_server.client() as client:
        response = client.get("/queue")
        assert response.status_code == 303
        assert response.headers["location"] == "/queue/login"
        form = client.get("/queue/login")
        assert form.status_code == 200
        assert 'name="token"' in form.text and 'type="password"' in form.text


def test_the_refresh_fragment_answers_401_with_the_error_body_without_a_session(
    queue_server: QueueServer,
) -> None:
    with queue_server.client() as client:
        response = client.get("/queue/rows")
    assert response.status_code == 401
    assert response.json() == {
        "error": {"code": "unauthorized", "message": "log in at /queue/login"}
    }


def test_login_sets_an_httponly_samesite_strict_cookie_that_is_not_the_token(
    queue_server: QueueServer,
) -> None:
    with queue_server.client() as client:
        response = client.post("/queue/login", data={"token": TOKEN})
        assert response.status_code == 303 and response.headers["location"] == "/queue"
        cookie = set_cookie(response)
        page = client.get("/queue")
    attributes = [part.strip().lower() for part in cookie.split(";")]
    name, _, value = cookie.split(";")[0].partition("=")
    assert name == COOKIE_NAME
    assert len(value) >= 40 and TOKEN not in cookie
    assert {"httponly", "samesite=strict", "path=/queue"} <= set(attributes)
    assert "secure" not in attributes  # plain http here; over https the cookie is Secure
    assert page.status_code == 200
    assert TOKEN not in page.text and "shift-lead" in page.text
    assert len(queue_server.logins) == 1


def test_login_over_https_marks_the_cookie_secure(queue_server: QueueServer) -> None:
    # uvicorn takes the scheme from a trusted proxy's X-Forwarded-Proto (loopback is trusted).
    with queue_server.client() as client:
        response = client.post(
            "/queue/login", data={"token": TOKEN}, headers={"X-Forwarded-Proto": "https"}
        )
    assert "secure" in [part.strip().lower() for part in set_cookie(response).split(";")]


@pytest.mark.parametrize(
    ("token", "status", "message"),
    [
        ("igw_not-a-configured-token", 401, "That token is not valid."),
        ("   ", 400, "Paste an API token to log in."),
        ("x" * 600, 400, "That is not an API token."),
    ],
)
def test_login_with_a_bad_token_is_refused_with_no_cookie(
    queue_server: QueueServer, token: str, status: int, message: str
) -> None:
    with queue_server.client() as client:
        response = client.post("/queue/login", data={"token": token})
    assert response.status_code == status
    assert message in response.text
    assert "set-cookie" not in response.headers
    assert token.strip() == "" or token not in response.text


def test_a_login_posted_from_another_site_is_refused(queue_server: QueueServer) -> None:
    with queue_server.client() as client:
        foreign = client.post(
            "/queue/login", data={"token": TOKEN}, headers={"Origin": "https://evil.example"}
        )
        cross_site = client.post(
            "/queue/login", data={"token": TOKEN}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        same = client.post(
            "/queue/login", data={"token": TOKEN}, headers={"Origin": queue_server.base_url}
        )
    assert (foreign.status_code, cross_site.status_code, same.status_code) == (403, 403, 303)
    assert "set-cookie" not in foreign.headers and "set-cookie" not in cross_site.headers


def test_logout_ends_the_session_on_the_server_not_only_in_the_browser(
    queue_server: QueueServer,
) -> None:
    with queue_server.logged_in() as client:
        session_id = client.cookies[COOKIE_NAME]
        out = client.post("/queue/logout")
        assert out.status_code == 303 and out.headers["location"] == "/queue/login"
        assert "max-age=0" in set_cookie(out).lower()
    with queue_server.client() as replay:
        replay.cookies.set(COOKIE_NAME, session_id, path="/queue")
        assert replay.get("/queue").status_code == 303
        assert replay.get("/queue/rows").status_code == 401
    assert len(queue_server.logins) == 0


def test_a_session_expires_after_its_lifetime(queue_server: QueueServer) -> None:
    with queue_server.logged_in() as client:
        queue_server.clock.advance(hours=11, minutes=59)
        assert client.get("/queue/rows").status_code == 200
        queue_server.clock.advance(minutes=1)
        assert client.get("/queue/rows").status_code == 401


def test_removing_a_token_from_the_config_ends_its_sessions(queue_server: QueueServer) -> None:
    with queue_server.logged_in() as client:
        assert client.get("/queue/rows").status_code == 200
        queue_server.tokens.table = TokenTable()  # a reload without the token
        assert client.get("/queue/rows").status_code == 401
        assert client.get("/queue").headers["location"] == "/queue/login"


def test_the_page_allows_only_its_own_nonced_script_and_style(queue_server: QueueServer) -> None:
    with queue_server.logged_in() as client:
        first, second = client.get("/queue"), client.get("/queue")
    csp = first.headers["content-security-policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", csp)
    assert nonce is not None and "default-src 'none'" in csp
    assert f'<script nonce="{nonce.group(1)}">' in first.text
    assert nonce.group(1) not in second.headers["content-security-policy"]
    assert first.headers["cache-control"] == "no-store"
    assert first.headers["x-frame-options"] == "DENY"


# ---- the table ----------------------------------------------------------------------------


def test_open_tickets_are_listed_in_the_one_queue_order_with_their_badges(
    queue_server_any_db: QueueServer,
) -> None:
    server = queue_server_any_db
    server.add(n=1, severity="normal")
    server.add(n=2, severity="urgent")
    server.add(n=3, severity="normal", jump_queue=True, jump_reason="outage")
    server.add(n=4, severity="urgent", held=True, hold_reason="needs review")
    server.add(n=5, severity="high", emergency=True, emergency_acknowledged=True)
    server.add(n=6, severity="urgent", status="closed")
    server.add(
        n=7,
        severity="low",
        status="waiting",
        first_response_at=T0 - timedelta(minutes=30),
        waiting_since=T0 - timedelta(minutes=20),
    )
    with server.logged_in() as client:
        page = client.get("/queue").text
        fragment = client.get("/queue/rows")
    # Acknowledged emergency, queue jumper, then by level; held last; closed never.
    expected = ["T-000005", "T-000003", "T-000002", "T-000001", "T-000007", "T-000004"]
    assert refs(page) == expected
    assert refs(fragment.text) == expected
    assert fragment.headers["content-type"].startswith("text/html")
    assert "6 open tickets" in page
    row = dict(zip(expected, page.split('<tr class="ticket')[1:], strict=True))
    assert 'class="badge emergency"' in row["T-000005"] and "AWAITING ACK" not in row["T-000005"]
    assert 'class="badge jump" title="outage">JUMP<' in row["T-000003"]
    assert 'class="badge held" title="needs review">HELD<' in row["T-000004"]
    assert 'class="level lvl-0">urgent<' in row["T-000002"]
    assert "paused: waiting on customer" in row["T-000007"]


def test_the_page_shows_the_first_tickets_and_says_how_many_are_open(
    sqlite_url: str,
) -> None:
    from gateway.api.queue_page import QueuePageSettings

    with start_queue_server(sqlite_url, QueuePageSettings(limit=2)) as server:
        for n in range(1, 4):
            server.add(n=n)
        with server.logged_in() as client:
            page = client.get("/queue").text
        assert refs(page) == ["T-000001", "T-000002"]
        assert "3 open tickets, showing the first 2" in page


def test_sla_countdowns_are_computed_server_side_from_the_clock(
    queue_server: QueueServer,
) -> None:
    queue_server.add(n=1, first_response_due=T0 + timedelta(hours=20))  # ok
    queue_server.add(n=2, first_response_due=T0 + timedelta(minutes=10))  # amber
    queue_server.add(n=3, first_response_due=T0 - timedelta(minutes=5))  # red
    with queue_server.logged_in() as client:
        page = client.get("/queue").text
    spans = re.findall(
        r'<span class="sla (\w+)" data-due="([^"]+)" data-amber="(\d+)">([^<]+)</span>', page
    )
    by_due = {due: (state, text) for state, due, _amber, text in spans}
    assert by_due == {
        "2026-11-23T14:55:00.000Z": ("red", "overdue 5m 00s"),
        "2026-11-23T15:10:00.000Z": ("amber", "10m 00s"),
        "2026-11-24T11:00:00.000Z": ("ok", "20h 00m"),
    }
    assert f'data-now="{int(T0.timestamp() * 1000)}"' in page


def test_customer_text_is_escaped_everywhere_it_appears(queue_server: QueueServer) -> None:
    queue_server.add(
        n=1,
        subject=f"Help {SCRIPT} {IMG}",
        contact_name=IMG,
        contact_email="x@example.net",
        hold_reason=f"{IMG}{SCRIPT}",
        held=True,
        jump_reason=IMG,
        jump_queue=True,
        plan='"><b>plan',
        channel="<i>email",
    )
    with queue_server.logged_in() as client:
        texts: dict[str, Any] = {
            "page": client.get("/queue").text,
            "fragment": client.get("/queue/rows").text,
        }
    for name, html in texts.items():
        assert SCRIPT not in html, name
        assert "<img" not in html and "<b>" not in html and "<i>" not in html, name
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, name
        assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in html, name
        # Decoding the entities gives the customer's text back, exactly.
        assert f"Help {SCRIPT} {IMG}" in unescape(html), name


def test_a_database_that_does_not_answer_gives_503_not_a_crash(sqlite_url: str) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker
    from starlette.applications import Starlette

    from gateway.api.queue_page import queue_routes
    from tests.queue_page.conftest import Tokens, serve

    # Nothing listens on port 1: every query fails to connect.
    dead = sessionmaker(create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"))
    routes = queue_routes(sessions=dead, tokens=Tokens(), levels=lambda: LEVELS)
    with serve(Starlette(routes=routes)) as base, httpx.Client(base_url=base) as client:
        assert client.post("/queue/login", data={"token": TOKEN}).status_code == 303
        page = client.get("/queue")
        fragment = client.get("/queue/rows")
    assert page.status_code == 503 and "database is not answering" in page.text
    assert fragment.status_code == 503
    assert fragment.json()["error"]["code"] == "unavailable"
