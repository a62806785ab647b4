"""Which SMS joins an open emergency's incident (issue 18 item 3, docs/emergency.md "One
incident"): the very contact who asked for it, whether the directory knows them by an address or
only by a phone number, or a message naming the emergency's ticket as a word. The threading
stage alone, over a lookup that holds one open emergency (the pipeline's own lookup reads the
same facts from the database: tests/billing/test_incident_links.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.message import Customer, ParsedMessage, TicketRef
from gateway.stages.thread import thread

NOW = datetime(2026, 3, 3, 15, 0, tzinfo=UTC)  # a Tuesday afternoon; threading reads no clock
CALLER = "+16175550123"


@dataclass
class OneEmergency:
    """A ThreadLookup holding one account's open emergency and nothing else."""

    emergency: TicketRef

    def ticket_for_message_ids(self, message_ids: tuple[str, ...]) -> TicketRef | None:
        return None

    def ticket_by_reference(self, reference: str) -> TicketRef | None:
        return None

    def open_sms_ticket_for_phone(self, phone: str, since: datetime) -> TicketRef | None:
        return None

    def open_emergency_for_account(self, account_id: str, since: datetime) -> TicketRef | None:
        return self.emergency if account_id == self.emergency.account_id else None


def emergency(contact: str, reference: str = "T-001000") -> TicketRef:
    return TicketRef(
        id=1000,
        reference=reference,
        account_id="acme-clinic",
        status="open",
        closed_at=None,
        contact_email=contact,
        emergency=True,
    )


def contact(email: str | None) -> Customer:
    return Customer(
        account_id="acme-clinic",
        account_name="Acme Clinic",
        plan="growth",
        plan_rank=1,
        known=True,
        contact_name="Front desk",
        contact_email=email,
        emergency_authorised=True,
        language="en",
        matched_by="phone",
    )


def sms(text: str, sender: str = CALLER) -> ParsedMessage:
    return ParsedMessage(
        spool_id="s1",
        channel="twilio-sms",
        received_at=NOW,
        envelope_from=sender,
        recipients=("+15550001111",),
        message_id=None,
        in_reply_to=(),
        references=(),
        sender=sender,
        sender_name="",
        subject=text[:60],
        date=NOW,
        text=text,
        headers=(),
        attachments=(),
        raw_sha256="0" * 64,
        raw_size=len(text),
        dedup_key=f"sms:{text}",
    )


def threaded(message: ParsedMessage, customer: Customer, open_one: TicketRef) -> str | None:
    found = thread(
        message,
        customer,
        OneEmergency(open_one),
        NOW,
        reopen_window=timedelta(days=7),
        incident_window=timedelta(hours=24),
    )
    return found.ticket.reference if found.incident and found.ticket else None


def test_a_phone_only_contact_who_asked_for_the_emergency_joins_it_by_text() -> None:
    # The emergency's ticket records the caller's number as its contact: no address is known.
    assert threaded(sms("it is down again now"), contact(None), emergency(CALLER)) == "T-001000"


def test_a_contact_known_by_address_joins_the_emergency_they_asked_for_by_mail() -> None:
    asked = emergency("frontdesk@acme-clinic.example")
    joined = threaded(sms("still down"), contact("frontdesk@acme-clinic.example"), asked)
    assert joined == "T-001000"


def test_another_contact_joins_only_by_naming_the_ticket_as_a_word() -> None:
    asked = emergency("dana@acme-clinic.example")
    colleague = contact("frontdesk@acme-clinic.example")
    assert threaded(sms("the card reader needs a cable"), colleague, asked) is None
    assert threaded(sms("about t-001000: reception cannot log in"), colleague, asked) == "T-001000"
    # A longer reference that merely starts with this one names another ticket.
    assert threaded(sms("about T-0010001, the printer"), colleague, asked) is None
    assert threaded(sms("see XT-001000"), colleague, asked) is None


def test_another_phone_of_the_same_account_is_its_own_ticket() -> None:
    other = sms("card reader cable", sender="+16175550199")
    assert threaded(other, contact(None), emergency(CALLER)) is None
