"""An emergency request that joins an open ticket never demotes it (issue 17 item 1).

A pending confirmation is a state of the emergency request, not of the ticket: the ticket keeps
its queue place and its SLA clock and is marked "emergency pending"; confirming lifts it to the
top; nobody confirming leaves it where it was. `show`, `show --json`, the API and /queue say the
same. Real pipeline (SMS spooled as the webhook spools it), the API and the queue page served
over real sockets, instants named."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from gateway.cli.main import main as gateway_main
from gateway.emergency.holds import release_expired
from gateway.storage.queries import as_utc, list_queue
from tests.api.conftest import READ_TOKEN, ApiServer, add_tokens
from tests.billing.conftest import TUESDAY_10, Desk, email

OUTAGE = "The phone system is down, nobody can call in and patients are waiting"


@pytest.fixture
def served(make_config: Callable[..., Path]) -> Iterator[tuple[ApiServer, Desk]]:
    server = ApiServer(add_tokens(make_config())).start()
    server.now = TUESDAY_10 + timedelta(minutes=15)
    yield server, Desk(server.gateway)
    server.stop()


def _queue(desk: Desk) -> list[str]:
    with desk.gw.session() as session:
        return [t.reference or "" for t in list_queue(session)]


def _open_ticket_with_a_question_below_it(desk: Desk) -> tuple[str, str]:
    """Dana's urgent outage by SMS, and a how-to question that sits below it."""
    question = desk.mail(
        email("Printing", "How do I print a label?", acknowledged=False, message_id="<q@x>"),
        TUESDAY_10 - timedelta(hours=1),
    )
    outage = desk.sms(OUTAGE, TUESDAY_10)
    assert _queue(desk) == [outage.reference, question.reference]
    return outage.reference or "", question.reference or ""


def test_an_emergency_request_on_an_open_ticket_keeps_its_place_and_clock_until_confirmed(
    served: tuple[ApiServer, Desk], capsys: pytest.CaptureFixture[str]
) -> None:
    server, desk = served
    ref, question = _open_ticket_with_a_question_below_it(desk)
    before = desk.ticket(ref)
    assert before.severity == "urgent" and before.first_response_due is not None

    asked = desk.sms("EMERGENCY the phone system is down", TUESDAY_10 + timedelta(minutes=10))
    assert (asked.outcome, asked.reference) == ("hold", ref)

    after = desk.ticket(ref)
    assert _queue(desk) == [ref, question]  # not demoted below the question
    assert (after.held, after.emergency_pending, after.severity, after.jump_queue) == (
        False,
        True,
        before.severity,
        before.jump_queue,
    )
    assert after.first_response_due == before.first_response_due  # the clock did not stop
    due = as_utc(after.first_response_due)
    assert due is not None
    due_text = due.isoformat().replace("+00:00", "Z")

    # Every surface says the same: pending, not held, the same due time.
    shown = desk.show(ref)
    assert (shown["held"], shown["emergency_pending"], shown["first_response_due"]) == (
        False,
        True,
        due_text,
    )
    assert not any("until the hold ends" in d["text"] for d in shown["decisions"])
    config = str(desk.gw.settings.directory)
    assert gateway_main(["--config", config, "show", ref, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["emergency_pending"] is True
    assert gateway_main(["--config", config, "show", ref]) == 0
    text = capsys.readouterr().out
    assert (
        f"EMERGENCY PENDING: awaiting the contact's confirmation of the charge; the ticket "
        f"keeps its place, first response due {due_text}" in text
    )
    assert "HELD" not in text
    listed = server.get("/api/v1/tickets").json()["tickets"]
    assert [t["reference"] for t in listed][:2] == [ref, question]
    assert (listed[0]["emergency_pending"], listed[0]["held"]) == (True, False)
    assert listed[0]["first_response_due"].replace("+00:00", "Z") == due_text
    with httpx.Client(base_url=server.base, timeout=10) as client:
        assert client.post("/queue/login", data={"token": READ_TOKEN}).status_code == 303
        page = client.get("/queue").text
    row = page.split(f'data-ref="{ref}"', 1)[1].split("</tr>", 1)[0]
    assert 'class="badge pending"' in row and ">EMERGENCY PENDING<" in row
    assert page.index(f'data-ref="{ref}"') < page.index(f'data-ref="{question}"')

    # Confirming lifts it to the top as an emergency; the mark goes.
    desk.sms("YES", TUESDAY_10 + timedelta(minutes=20))
    confirmed = desk.ticket(ref)
    assert (confirmed.emergency_acknowledged, confirmed.emergency_pending) == (True, False)
    assert _queue(desk)[0] == ref


def test_an_emergency_request_nobody_confirms_leaves_the_ticket_where_it_was(
    served: tuple[ApiServer, Desk],
) -> None:
    _, desk = served
    ref, question = _open_ticket_with_a_question_below_it(desk)
    before = desk.ticket(ref)
    desk.sms("EMERGENCY the phone system is down", TUESDAY_10 + timedelta(minutes=10))

    released = release_expired(
        desk.gw.worker.sessions,
        desk.gw.settings,
        desk.runtime.policy.calendars,
        TUESDAY_10 + timedelta(hours=5),
    )
    assert released == [ref]
    after = desk.ticket(ref)
    assert _queue(desk) == [ref, question]
    assert (after.emergency_pending, after.emergency_acknowledged, after.held) == (
        False,
        False,
        False,
    )
    kept = ("severity", "jump_queue", "queue", "routing_rule", "first_response_due")
    assert {k: getattr(after, k) for k in kept} == {k: getattr(before, k) for k in kept}
