"""Issue 19, outcome 1: a partial parse is never silent to an agent. A message whose parse lost
or altered content lists each defect in the API's ticket, marks the ticket on the queue page,
counts in /metrics as gateway_parse_defects_total{kind}, and its raw message stays downloadable.
A clean message shows none of it."""

from __future__ import annotations

from sqlalchemy import select

from gateway.api.queue_page import badges
from gateway.storage.models import Intake, Ticket
from tests.api.conftest import ApiServer
from tests.test_health import metric

RUSSIAN = "Сервер не отвечает с утра, клиенты не могут оплатить заказы. " * 4
# Declared UTF-8, written in windows-1251: the charset is detected, and the message says so.
MISLABELLED = (
    b"From: sam@bluebird.example\nTo: support@example.com\nSubject: Server\n"
    b"Message-ID: <cp1251@bluebird.example>\nMIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=utf-8\n\n" + RUSSIAN.encode("cp1251")
)


def ticket_of(server: ApiServer, spool_id: str) -> Ticket:
    with server.gateway.session() as s:
        intake = s.execute(select(Intake).where(Intake.spool_id == spool_id)).scalar_one()
        return s.get_one(Ticket, intake.ticket_id)


def test_a_ticket_with_parse_defects_lists_them_marks_the_queue_and_counts_them(
    sqlite_api: ApiServer,
) -> None:
    scraped = sqlite_api.get("/metrics", token=None).body.decode()
    assert "gateway_parse_defects_total{" not in scraped  # the seeded tickets parsed cleanly
    spool_id = sqlite_api.gateway.ingest(MISLABELLED, mail_from="sam@bluebird.example")
    sqlite_api.gateway.drain()
    ticket = ticket_of(sqlite_api, spool_id)

    data = sqlite_api.get(f"/api/v1/tickets/{ticket.reference}").json()
    (message,) = data["messages"]
    assert "Сервер не отвечает" in message["text"]
    (defect,) = message["parse_defects"]
    assert defect["kind"] == "charset-detected"
    assert defect["detail"] == "text/plain: utf-8 -> cp1251"
    assert defect["meaning"].startswith("the declared charset did not fit")
    assert "parse-defects" in data["tags"]
    assert sqlite_api.get(message["raw_url"]).body == MISLABELLED  # the raw message stays

    assert [b.text for b in badges(ticket)] == ["PARSE"]
    text = sqlite_api.get("/metrics", token=None).body.decode()
    assert metric(text, "gateway_parse_defects_total", kind="charset-detected") == 1


def test_a_clean_message_has_no_parse_defects_and_no_mark(sqlite_api: ApiServer) -> None:
    clean = MISLABELLED.replace(b"cp1251@", b"utf8@").replace(
        RUSSIAN.encode("cp1251"), RUSSIAN.encode("utf-8")
    )
    spool_id = sqlite_api.gateway.ingest(clean, mail_from="sam@bluebird.example")
    sqlite_api.gateway.drain()
    ticket = ticket_of(sqlite_api, spool_id)
    data = sqlite_api.get(f"/api/v1/tickets/{ticket.reference}").json()
    assert data["messages"][0]["parse_defects"] == []
    assert "parse-defects" not in data["tags"]
    assert badges(ticket) == ()


def test_the_defect_counter_counts_each_message_once_and_never_goes_down(
    sqlite_api: ApiServer,
) -> None:
    """Each scrape reads only what was stored since the last one; a purge or an erasure that
    later deletes or blanks messages must not make a counter fall (Prometheus would read a
    reset)."""
    from sqlalchemy import update

    from gateway.storage.models import Message

    def counted() -> float:
        text = sqlite_api.get("/metrics", token=None).body.decode()
        return metric(text, "gateway_parse_defects_total", kind="charset-detected")

    sqlite_api.gateway.ingest(MISLABELLED, mail_from="sam@bluebird.example")
    sqlite_api.gateway.drain()
    assert counted() == 1
    assert counted() == 1  # scraped again: the same message is not counted twice
    second = MISLABELLED.replace(b"cp1251@", b"second@")
    sqlite_api.gateway.ingest(second, mail_from="sam@bluebird.example")
    sqlite_api.gateway.drain()
    assert counted() == 2
    with sqlite_api.gateway.session() as s, s.begin():
        s.execute(update(Message).values(defects=""))
    assert counted() == 2
