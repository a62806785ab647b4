"""The one path, end to end in-process, on SQLite and PostgreSQL: exactly one ticket per message,
duplicates recorded, threading that strangers cannot hijack, poison messages quarantined."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
from sqlalchemy import select

from gateway.stages import classify as classify_stage
from gateway.storage.models import Message
from tests.helpers import BUSINESS_HOURS, Gateway, make_email


def outcomes(gw: Gateway) -> list[str]:
    return [i.outcome for i in gw.intakes()]


def test_a_message_becomes_exactly_one_ticket_and_its_redelivery_a_recorded_duplicate(
    gateway: Gateway,
) -> None:
    raw = make_email()
    gateway.ingest(raw)
    gateway.drain()
    # The same mail again, as a redelivery: another hop added a header, line endings changed.
    gateway.ingest(
        b"Received: from relay2 by mx; Mon, 23 Nov 2026\r\n" + raw.replace(b"\n", b"\r\n")
    )
    gateway.drain()
    tickets = gateway.tickets()
    assert len(tickets) == 1
    assert tickets[0].reference == f"T-{tickets[0].id:06d}"
    assert outcomes(gateway) == ["ticket", "duplicate"]
    duplicate = gateway.intakes()[1]
    assert duplicate.ticket_id == tickets[0].id
    assert "same message as intake" in duplicate.reason


def test_two_different_messages_sharing_a_message_id_make_two_tickets(gateway: Gateway) -> None:
    gateway.ingest(make_email(body="The scanner is broken.", message_id="<reused@x>"))
    gateway.ingest(make_email(body="Invoices are not printing.", message_id="<reused@x>"))
    gateway.drain()
    assert len(gateway.tickets()) == 2
    assert outcomes(gateway) == ["ticket", "ticket"]


def test_messages_without_message_id_are_deduplicated_by_content(gateway: Gateway) -> None:
    raw = make_email(message_id=None)
    gateway.ingest(raw)
    gateway.ingest(raw)
    gateway.ingest(make_email(message_id=None, body="A different question."))
    gateway.drain()
    assert outcomes(gateway) == ["ticket", "duplicate", "ticket"]


def test_a_reply_with_in_reply_to_lands_on_the_same_ticket(gateway: Gateway) -> None:
    gateway.ingest(make_email(message_id="<first@acme-clinic.example>"))
    gateway.drain()
    gateway.ingest(
        make_email(
            subject="Re: Printer offline",
            body="Still offline after restart.",
            message_id="<second@acme-clinic.example>",
            In_Reply_To="<first@acme-clinic.example>",
        )
    )
    gateway.drain()
    tickets = gateway.tickets()
    assert len(tickets) == 1
    assert tickets[0].message_count == 2
    assert outcomes(gateway) == ["ticket", "follow-up"]


def test_a_reply_to_a_message_with_an_overlong_message_id_still_threads(gateway: Gateway) -> None:
    """An id over RFC 5322's 998 bytes (here non-ASCII, 1,200 bytes in UTF-8) is stored and
    compared as one digest wherever it appears: storing it cut made every reply to it a new
    ticket."""
    long_id = ("ü" * 600 + "@acme-clinic.example").encode()
    head = b"From: dana@acme-clinic.example\r\nTo: support@example.com\r\n"
    gateway.ingest(
        head + b"Subject: Printer offline\r\nMessage-ID: <" + long_id + b">\r\n\r\nDown\r\n"
    )
    gateway.drain()
    gateway.ingest(
        head + b"Subject: Re: Printer offline\r\nMessage-ID: <r@acme-clinic.example>\r\n"
        b"In-Reply-To: <" + long_id + b">\r\n\r\nStill down\r\n"
    )
    gateway.drain()
    (ticket,) = gateway.tickets()
    assert ticket.message_count == 2
    assert outcomes(gateway) == ["ticket", "follow-up"]
    # Stored altered, so said so (non-negotiable 8): the first message carries the digest.
    assert "parse-defects" in ticket.tags
    with gateway.session() as s:
        first = s.scalars(select(Message).order_by(Message.id)).first()
    assert first is not None and first.defects.startswith("message-id-digested(sha256:")


def test_a_reply_to_our_acknowledgement_threads_by_its_message_id(gateway: Gateway) -> None:
    gateway.ingest(make_email())
    gateway.drain()
    ack = gateway.outbox()[0]
    gateway.ingest(
        make_email(
            subject="Re: thanks",
            body="More detail.",
            message_id="<r@x>",
            In_Reply_To=f"<{ack.header_message_id}>",
        )
    )
    gateway.drain()
    assert len(gateway.tickets()) == 1


def test_a_stranger_using_another_accounts_ticket_token_gets_a_new_ticket(gateway: Gateway) -> None:
    gateway.ingest(make_email(sender="dana@acme-clinic.example"))
    gateway.drain()
    ref = gateway.tickets()[0].reference
    gateway.ingest(
        make_email(
            subject=f"Re: [#{ref}] add me",
            body="Let me in.",
            sender="mallory@evil.example",
            message_id="<evil@x>",
        )
    )
    gateway.drain()
    tickets = gateway.tickets()
    assert len(tickets) == 2
    assert tickets[1].account_id == "unknown"
    assert outcomes(gateway) == ["ticket", "ticket"]


def test_a_colleague_from_the_same_account_may_use_the_ticket_token(gateway: Gateway) -> None:
    gateway.ingest(make_email(sender="dana@acme-clinic.example"))
    gateway.drain()
    ref = gateway.tickets()[0].reference
    gateway.ingest(
        make_email(
            subject=f"Re: [#{ref}]",
            body="Same problem here.",
            sender="frontdesk@acme-clinic.example",
            message_id="<fd@x>",
        )
    )
    gateway.drain()
    assert len(gateway.tickets()) == 1
    assert outcomes(gateway) == ["ticket", "follow-up"]


def test_a_reply_to_a_closed_ticket_reopens_it(gateway: Gateway) -> None:
    from gateway.storage.admin import set_status

    gateway.ingest(make_email(message_id="<c1@x>"))
    gateway.drain()
    ref = gateway.tickets()[0].reference
    with gateway.session() as s:
        assert set_status(s, ref, "closed", actor="test", reason="fixed") is None
    gateway.ingest(make_email(body="It broke again.", message_id="<c2@x>", In_Reply_To="<c1@x>"))
    gateway.drain()
    (ticket,) = gateway.tickets()
    assert ticket.status == "reopened"


def test_new_tickets_get_one_acknowledgement_and_follow_ups_none(
    gateway: Gateway, pin_clock: Callable[[str], datetime]
) -> None:
    pin_clock(BUSINESS_HOURS)
    gateway.ingest(make_email(message_id="<a1@x>"))
    gateway.ingest(make_email(body="more", message_id="<a2@x>", In_Reply_To="<a1@x>"))
    gateway.drain()
    rows = gateway.outbox()
    assert [(r.kind, r.status) for r in rows] == [("acknowledgement", "pending")]
    ref = gateway.tickets()[0].reference
    assert f"[#{ref}]" in rows[0].subject
    assert rows[0].header_message_id.endswith("@support.example.com")


AUTOMATED = {
    "auto-reply": {"Auto_Submitted": "auto-replied"},
    "precedence": {"Precedence": "bulk"},
    "x-autoreply": {"X_Autoreply": "yes"},
    "list": {"List_Id": "<support.lists.example>"},
    "spam": {"X_Spam_Flag": "YES"},
}


@pytest.mark.parametrize("kind", sorted(AUTOMATED))
def test_automated_mail_is_recorded_but_never_acknowledged(gateway: Gateway, kind: str) -> None:
    gateway.ingest(make_email(message_id=f"<{kind}@x>", **AUTOMATED[kind]))
    gateway.drain()
    assert outcomes(gateway) == ["discard"]
    assert gateway.tickets() == []
    assert gateway.outbox() == []


def test_bounces_from_the_null_sender_are_never_answered(gateway: Gateway) -> None:
    gateway.ingest(
        make_email(sender="MAILER-DAEMON@mx.example", subject="Undeliverable"), mail_from=""
    )
    gateway.drain()
    assert outcomes(gateway) == ["discard"]
    assert gateway.outbox() == []


def test_our_own_mail_coming_back_is_discarded(gateway: Gateway) -> None:
    gateway.ingest(make_email(message_id="<abc@support.example.com>", sender="x@y.example"))
    gateway.drain()
    assert outcomes(gateway) == ["discard"]


def test_a_thousand_auto_replies_from_one_address_produce_no_outgoing_mail(
    gateway: Gateway,
) -> None:
    for i in range(1000):
        gateway.ingest(
            make_email(
                subject="Out of office",
                body=f"I am away ({i}).",
                sender="away@customer.example",
                message_id=f"<ooo{i}@x>",
                Auto_Submitted="auto-replied",
            )
        )
    gateway.drain()
    assert len(gateway.intakes()) == 1000
    assert set(outcomes(gateway)) == {"discard"}
    assert gateway.outbox() == []


def test_acknowledgements_to_one_recipient_are_rate_limited(gateway: Gateway) -> None:
    for i in range(8):
        gateway.ingest(make_email(body=f"Separate problem number {i}", message_id=f"<rl{i}@x>"))
    gateway.drain()
    statuses = [r.status for r in gateway.outbox()]
    assert statuses.count("pending") == 5  # per_recipient_limit in the sample config
    assert statuses.count("suppressed") == 3


@pytest.fixture
def poisoned() -> Iterator[Callable[[], None]]:
    """A stage that raises for one particular message, as a bug in a stage would.

    Yields the "fix": calling it restores the real stage, as deploying a fix would.
    """
    original = classify_stage.to_input

    def explode(message):  # type: ignore[no-untyped-def]
        if "POISON" in message.subject:
            raise RuntimeError("boom in the classifier adapter")
        return original(message)

    def fix() -> None:
        classify_stage.to_input = original

    classify_stage.to_input = explode
    yield fix
    fix()


def assert_only_the_poison_quarantined(gateway: Gateway, stage: str, error: str) -> None:
    """The three fine messages became tickets; the poison one alone was quarantined, after
    three attempts, at `stage`, with `error`; nothing is left in the spool."""
    assert len(gateway.tickets()) == 3
    (record,) = gateway.spool.quarantined()
    assert record.attempts == 3
    assert record.stage == stage
    assert error in record.error
    assert gateway.spool.depth() == 0


def test_a_poison_message_is_quarantined_after_three_tries_and_the_rest_flow(
    gateway: Gateway, poisoned: Callable[[], None]
) -> None:
    gateway.ingest(make_email(subject="POISON", message_id="<p@x>"))
    for i in range(3):
        gateway.ingest(make_email(body=f"fine message {i}", message_id=f"<ok{i}@x>"))
    gateway.drain()
    assert_only_the_poison_quarantined(gateway, "classify", "boom in the classifier adapter")


def test_a_quarantined_message_replayed_after_the_fix_becomes_a_ticket(
    gateway: Gateway, poisoned: Callable[[], None]
) -> None:
    gateway.ingest(make_email(subject="POISON", message_id="<p2@x>"))
    gateway.drain()
    (record,) = gateway.spool.quarantined()
    poisoned()  # the fix is deployed
    assert gateway.spool.replay(record.id)
    gateway.drain()
    assert len(gateway.tickets()) == 1
    assert gateway.spool.quarantine_count() == 0


def test_the_same_spool_entry_processed_twice_is_a_no_op(gateway: Gateway) -> None:
    """A crash after commit but before the spool entry is removed re-runs it harmlessly."""
    gateway.ingest(make_email())
    entry = gateway.spool.claim()
    assert entry is not None
    raw = gateway.spool.read_raw(entry)
    from gateway.pipeline import process

    first = process(
        raw,
        entry.envelope,
        entry.id,
        gateway.box.current,
        gateway.worker.sessions,
        gateway.worker.blobs,
    )
    again = process(
        raw,
        entry.envelope,
        entry.id,
        gateway.box.current,
        gateway.worker.sessions,
        gateway.worker.blobs,
    )
    assert (first.outcome, again.outcome) == ("ticket", "already-processed")
    assert len(gateway.tickets()) == 1


def test_a_batch_that_fails_as_a_whole_runs_again_message_by_message(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20 item 7: one poison message never fails its batch. Here the poison fails the
    batch itself (its blob cannot be stored, before any transaction): the batch falls back to
    one message at a time, the others become tickets, and only the poison one counts attempts
    until it is quarantined."""
    blobs = gateway.worker.blobs
    original = blobs.put_many

    def refuse_poison(items, spooled=None):  # type: ignore[no-untyped-def]
        if any(b"POISON" in content for content, _ in items):
            raise OSError("the blob disk refuses this one")
        return original(items, spooled)

    monkeypatch.setattr(blobs, "put_many", refuse_poison)
    gateway.ingest(make_email(subject="POISON", message_id="<pb@x>"))
    for i in range(3):
        gateway.ingest(make_email(body=f"fine message {i}", message_id=f"<okb{i}@x>"))
    gateway.drain()
    assert_only_the_poison_quarantined(gateway, "batch", "the blob disk refuses this one")


def test_a_batch_is_classified_with_one_call_and_the_same_verdicts(gateway: Gateway) -> None:
    """The pipeline asks the engine once per batch (issue 20 outcome 1); the verdicts are the
    ones it gives message by message, and text the gateway wrote itself is never classified."""
    from dataclasses import replace

    from gateway.stages.parse import parse

    engine = gateway.box.current.engine
    assert engine is not None
    messages = []
    for i, body in enumerate(["the server is down, production outage", "a small question"]):
        gateway.ingest(make_email(body=body, message_id=f"<cb{i}@x>"))
    for entry in iter(gateway.spool.claim, None):
        raw = gateway.spool.read_raw(entry)
        messages.append(parse(raw, entry.envelope, entry.id, 10_000_000))
    messages.append(replace(messages[0], gateway_text="voicemail transcription pending"))
    calls: list[int] = []

    class Counting:
        def classify(self, inp):  # type: ignore[no-untyped-def]
            raise AssertionError("one by one")

        def classify_many(self, inputs):  # type: ignore[no-untyped-def]
            calls.append(len(inputs))
            return engine.classify_many(inputs)

    verdicts = classify_stage.classify_batch(messages, Counting(), "normal")
    assert calls == [2]
    one_by_one = [
        classify_stage.classify(m, None, engine, "normal")  # type: ignore[arg-type]
        for m in messages
    ]
    assert verdicts == one_by_one
    assert verdicts[2] == classify_stage.default_verdict("normal")


def test_large_messages_are_not_held_in_memory_together(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch stops growing once its messages hold BATCH_BYTES (issue 20 item 5: ten 34 MB
    mails arriving at once must not all be in the worker's memory at once), while small mail
    still batches by `workers.batch_size`."""
    from gateway.service import worker as worker_module
    from gateway.stages import classify as classify_stage

    monkeypatch.setattr(worker_module, "BATCH_BYTES", 64 * 1024)
    big = "x" * 100 + "\n"
    for i in range(3):
        gateway.ingest(make_email(body=big * 700, message_id=f"<big{i}@x>"))  # ~70 KB each
    for i in range(4):
        gateway.ingest(make_email(body=f"small {i}", message_id=f"<small{i}@x>"))
    batches: list[int] = []
    real = classify_stage.classify_batch

    def counting(inputs, engine, default):  # type: ignore[no-untyped-def]
        batches.append(len(inputs))
        return real(inputs, engine, default)

    monkeypatch.setattr("gateway.pipeline.classify_batch", counting)
    assert gateway.drain() == 7
    assert batches == [1, 1, 1, 4]
    assert len(gateway.tickets()) == 7


def test_a_message_failing_halfway_through_persist_leaves_no_row_and_its_batch_intact(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch is first written without savepoints (issue 20 outcome 1). A message that fails
    after persist wrote its ticket, message and intake, and left its decisions and journal row
    for the end of the batch, rolls the batch back; written again with a savepoint each, the
    others keep every row and the poison one leaves none."""
    from sqlalchemy import func, select

    from gateway.stages import persist
    from gateway.storage.forwarding_tables import ForwardChange
    from gateway.storage.models import DecisionRecord, Message

    original = persist._queue_reply

    def explode(session, conn, reply, message, *rest):  # type: ignore[no-untyped-def]
        if "POISON" in message.subject:
            raise RuntimeError("boom while queueing the acknowledgement")
        return original(session, conn, reply, message, *rest)

    monkeypatch.setattr(persist, "_queue_reply", explode)
    gateway.ingest(make_email(body="fine message 0", message_id="<okp0@x>"))
    gateway.ingest(make_email(subject="POISON", message_id="<pp@x>"))
    for i in range(1, 3):
        gateway.ingest(make_email(body=f"fine message {i}", message_id=f"<okp{i}@x>"))
    gateway.drain()
    assert_only_the_poison_quarantined(
        gateway, "persist", "boom while queueing the acknowledgement"
    )
    tickets = gateway.tickets()
    assert [t.reference for t in tickets] == [f"T-{t.id:06d}" for t in tickets]
    with gateway.session() as s:
        assert s.scalar(select(func.count()).select_from(Message)) == 3
        journalled = set(s.scalars(select(ForwardChange.ticket_id)))
        decided = set(s.scalars(select(DecisionRecord.ticket_id)))
    assert journalled == decided == {t.id for t in tickets}
    assert [o.status for o in gateway.outbox()] == ["pending"] * 3


def test_a_reply_drained_in_the_same_batch_as_its_original_joins_its_ticket(
    gateway: Gateway,
) -> None:
    """A batch writes its new tickets, messages and intakes behind, at its next statement
    (issue 20 outcome 1): the reply's thread look-up is such a statement, so it sees the ticket
    its original made a moment before, uncommitted, in the same transaction."""
    gateway.ingest(make_email(message_id="<orig@acme-clinic.example>"))
    gateway.ingest(make_email(body="A different printer entirely.", message_id="<other@x>"))
    gateway.ingest(
        make_email(
            subject="Re: Printer offline",
            body="Still offline after restart.",
            message_id="<reply@acme-clinic.example>",
            In_Reply_To="<orig@acme-clinic.example>",
        )
    )
    assert gateway.drain() == 3
    tickets = gateway.tickets()
    assert [t.message_count for t in tickets] == [2, 1]
    assert outcomes(gateway) == ["ticket", "ticket", "follow-up"]
    assert [i.ticket_id for i in gateway.intakes()] == [tickets[0].id, tickets[1].id, tickets[0].id]


def test_a_batch_of_replies_looks_up_their_threads_with_one_query(gateway: Gateway) -> None:
    """Issue 20's set-based persistence: the Message-IDs a batch's replies name are read once
    for the batch, not once a reply, and every reply still joins the ticket it answers."""
    from sqlalchemy import event

    gateway.ingest(make_email(message_id="<root1@acme-clinic.example>"))
    gateway.ingest(make_email(body="Another printer.", message_id="<root2@acme-clinic.example>"))
    assert gateway.drain() == 2
    for i in range(6):
        root = f"<root{1 + i % 2}@acme-clinic.example>"
        gateway.ingest(
            make_email(
                subject="Re: Printer offline",
                body=f"Still offline, try {i}.",
                message_id=f"<reply{i}@acme-clinic.example>",
                In_Reply_To=root,
            )
        )
    looked_up: list[str] = []

    def note(_conn, _cursor, statement, *_rest):  # type: ignore[no-untyped-def]
        if "header_message_id IN" in " ".join(statement.split()) and "FROM messages" in statement:
            looked_up.append(statement)

    engine = gateway.worker.engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        assert gateway.drain() == 6  # one batch
    finally:
        event.remove(engine, "before_cursor_execute", note)
    assert len(looked_up) == 1
    first, second = gateway.tickets()
    assert (first.message_count, second.message_count) == (4, 4)
    assert outcomes(gateway) == ["ticket", "ticket", *["follow-up"] * 6]


def test_a_batchs_message_id_index_answers_as_each_messages_own_look_up(gateway: Gateway) -> None:
    """Read once for every Message-ID of a batch, the index gives each message's list the
    ticket a look-up of that list alone gives: the newest stored message naming one of them,
    else our own sent mail named first; the other messages' ids change nothing."""
    import itertools

    from gateway.storage.queries import SessionThreadLookup, index_message_ids

    ids = [f"<m{i}@acme-clinic.example>" for i in range(4)]
    gateway.ingest(make_email(message_id=ids[0]))
    gateway.ingest(make_email(body="Scanner.", message_id=ids[1]))
    gateway.drain()
    # A second message with ids[0] (another ticket's, a forwarded copy), then a reply naming
    # ids[1] and itself ids[2]: newer messages for the same and for other ids.
    gateway.ingest(make_email(body="Forwarded copy.", message_id=ids[0], X_Copy="1"))
    gateway.ingest(
        make_email(subject="Re: Scanner", message_id=ids[2], In_Reply_To=ids[1])
    )
    gateway.drain()
    assert outcomes(gateway) == ["ticket", "ticket", "ticket", "follow-up"]
    tickets = gateway.tickets()
    sent = [o.header_message_id for o in gateway.outbox() if o.header_message_id]
    with gateway.session() as session:
        # As stored and as `reply_ids` gives them: without the angle brackets.
        every = [*(i.strip("<>") for i in ids), *sent[:2], "unknown@x"]
        index = index_message_ids(session, [every])
        plain = SessionThreadLookup(session)
        indexed = SessionThreadLookup(session, index)
        asked = [
            combo for n in (1, 2, 3) for combo in itertools.permutations(every, n)
        ]
        for combo in asked:
            want = plain.ticket_for_message_ids(combo)
            got = indexed.ticket_for_message_ids(combo)
            assert (got and got.id) == (want and want.id), combo
        newest = plain.ticket_for_message_ids((every[0],))
        assert newest is not None and newest.id == tickets[-1].id, "the forwarded copy's"
        first_sent = plain.ticket_for_message_ids((sent[1], sent[0]))
        second_sent = plain.ticket_for_message_ids((sent[0], sent[1]))
        assert first_sent and second_sent and first_sent.id != second_sent.id


def test_a_redelivery_the_batch_look_up_missed_is_still_one_ticket_and_a_duplicate(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A twin (another worker or instance) commits a message's intake after its batch looked
    for one: the claim, written behind, meets the unique constraint at the end of the batch,
    and the batch is written again, one savepoint a message, where the message looks again and
    is recorded a duplicate while the rest of the batch become tickets."""
    from gateway.stages import persist

    raw = make_email(message_id="<twin@acme-clinic.example>")
    gateway.ingest(raw)
    gateway.drain()
    blind = persist.Seen({}, {}, frozenset())
    monkeypatch.setattr(persist, "look_up", lambda _session, _messages: blind)
    gateway.ingest(make_email(body="first fresh message", message_id="<fresh1@x>"))
    gateway.ingest(raw)
    gateway.ingest(make_email(body="second fresh message", message_id="<fresh2@x>"))
    assert gateway.drain() == 3
    assert outcomes(gateway) == ["ticket", "ticket", "duplicate", "ticket"]
    tickets = gateway.tickets()
    assert len(tickets) == 3
    assert gateway.intakes()[2].ticket_id == tickets[0].id
    assert [t.reference for t in tickets] == [f"T-{t.id:06d}" for t in tickets]


def test_a_row_another_statement_adds_mid_batch_never_takes_an_id_given_behind(
    gateway: Gateway,
) -> None:
    """Rows written behind carry ids the batch gave them: from the sequences on PostgreSQL,
    counted on from the largest id on SQLite. A statement that is not the batch's own (the ORM,
    the emergency wing) may add a row to the same table: it first writes what is pending, and
    SQLite's count is read again after it, so the next row behind never reuses its id."""
    from sqlalchemy import insert

    from gateway.stages.persist import BatchWrites, Seen

    gateway.ingest(make_email(message_id="<template@x>"))
    assert gateway.drain() == 1
    messages = Message.__table__
    with gateway.worker.sessions.begin() as session:
        conn = session.connection()
        template = dict(conn.execute(select(messages)).mappings().one())
        del template["id"]
        batch = BatchWrites(
            Seen({}, {}, frozenset()), True, {}, conn.dialect.name == "sqlite", messages=2
        )
        batch.watch(conn)
        try:
            first = batch.insert(conn, "messages", dict(template))
            other = conn.execute(insert(messages).returning(messages.c.id), template).scalar_one()
            second = batch.insert(conn, "messages", dict(template))
            batch.write(conn)
        finally:
            batch.unwatch()
        ids = sorted(conn.execute(select(messages.c.id)).scalars())
        session.rollback()
    assert len({first, other, second}) == 3
    assert {first, other, second} <= set(ids) and len(ids) == 4


def test_discarded_mail_leaves_no_gap_in_the_ticket_numbers(gateway: Gateway) -> None:
    """A ticket's number is its reference, read by agents and customers: on PostgreSQL the
    write-behind reserves message and intake ids for a whole batch, but a ticket's id only as
    the ticket is made, so the spam between two tickets costs no number."""
    gateway.ingest(make_email(body="The first printer is down.", message_id="<t1@x>"))
    for i in range(5):
        gateway.ingest(make_email(message_id=f"<spam{i}@x>", X_Spam_Flag="YES"))
    assert gateway.drain() == 6  # one batch
    gateway.ingest(make_email(body="The second printer is down.", message_id="<t2@x>"))
    assert gateway.drain() == 1  # the next
    assert outcomes(gateway) == ["ticket", *["discard"] * 5, "ticket"]
    first, second = gateway.tickets()
    assert second.id == first.id + 1
    assert second.reference == f"T-{first.id + 1:06d}"
