"""Stage 4: does this message continue an existing ticket?

Owns the threading rule (DESIGN "Lessons", Zammad #5064): headers first — In-Reply-To and
References against messages we stored and mail we sent — then a subject token `[#T-000123]`,
but only from a sender bound to that ticket's account (or, for the unknown account, the very
address that opened it). A reply to a closed ticket reopens it within the window, else opens a
new ticket linked to it. An SMS or voicemail that matches nothing, from the contact who asked for
an account's open emergency (requested within the incident window) or naming its ticket, is a new
ticket linked to that emergency (`Thread.incident`: one incident, billed once). Reads through the
narrow `ThreadLookup`; never writes.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Protocol

from gateway.message import Customer, ParsedMessage, Thread, TicketRef, contact_of
from gateway.policy.directory import UNKNOWN_ACCOUNT

TOKEN = re.compile(r"\[#(T-\d{6,})\]")
CLOSED = ("resolved", "closed")
NEW_WORD = re.compile(r"\s*NEW\b", re.I)


class ThreadLookup(Protocol):
    def ticket_for_message_ids(self, message_ids: tuple[str, ...]) -> TicketRef | None: ...

    def ticket_by_reference(self, reference: str) -> TicketRef | None: ...

    def open_sms_ticket_for_phone(self, phone: str, since: datetime) -> TicketRef | None:
        """The most recent open ticket this phone texted into with activity since `since`."""
        ...

    def open_emergency_for_account(self, account_id: str, since: datetime) -> TicketRef | None:
        """The account's most recent open emergency (acknowledged, or held awaiting its
        acknowledgement) requested since `since`."""
        ...


def thread(
    message: ParsedMessage,
    customer: Customer,
    lookup: ThreadLookup,
    now: datetime,
    reopen_window: timedelta,
    sms_window: timedelta = timedelta(hours=24),
    incident_window: timedelta | None = None,
) -> Thread:
    ids = reply_ids(message)
    ticket = lookup.ticket_for_message_ids(ids) if ids else None
    how = "In-Reply-To/References"
    if ticket is None:
        match = TOKEN.search(message.subject)
        if match:
            candidate = lookup.ticket_by_reference(match.group(1))
            if candidate is not None and _may_append(candidate, customer, message):
                ticket = candidate
                how = f"subject token [#{candidate.reference}]"
            elif candidate is not None:
                return Thread(
                    "new",
                    None,
                    f"subject token [#{candidate.reference}] ignored: sender "
                    f"{message.sender} is not bound to that ticket's account",
                )
    if ticket is None and message.channel == "twilio-sms":
        found = _sms_thread(message, lookup, now, sms_window)
        if found.kind == "new" and incident_window is not None:
            return _incident_link(message, customer, lookup, now, incident_window) or found
        return found
    if ticket is None and message.channel == "twilio-voice" and incident_window is not None:
        linked = _incident_link(message, customer, lookup, now, incident_window)
        if linked is not None:
            return linked
    if ticket is None:
        return Thread("new", None, "no thread headers or token matched an existing ticket")
    if ticket.status in CLOSED:
        if ticket.closed_at is not None and now - ticket.closed_at > reopen_window:
            return Thread(
                "new-linked", ticket, f"reply by {how} to {ticket.reference}, closed too long ago"
            )
        return Thread("reopen", ticket, f"reply by {how} reopens {ticket.reference}")
    return Thread("follow-up", ticket, f"follow-up on {ticket.reference} by {how}")


def reply_ids(message: ParsedMessage) -> tuple[str, ...]:
    """The Message-IDs a message answers, in the order they are looked up: In-Reply-To, then
    References from the newest."""
    return tuple(dict.fromkeys(message.in_reply_to + tuple(reversed(message.references))))


def _sms_thread(
    message: ParsedMessage, lookup: ThreadLookup, now: datetime, window: timedelta
) -> Thread:
    """SMS has no headers: a text from the same phone joins its open, recent SMS ticket, unless
    the customer starts it with NEW (how they ask for a separate ticket)."""
    if NEW_WORD.match(message.text):
        return Thread("new", None, "SMS starts with NEW: a new ticket by the customer's choice")
    if not message.sender:
        return Thread("new", None, "SMS without a sender number")
    ticket = lookup.open_sms_ticket_for_phone(message.sender, now - window)
    if ticket is None:
        hours = f"{window.total_seconds() / 3600:g}"
        return Thread("new", None, f"no open SMS ticket from {message.sender} in {hours} h")
    return Thread("follow-up", ticket, f"follow-up on {ticket.reference}: SMS from the same number")


def _incident_link(
    message: ParsedMessage,
    customer: Customer,
    lookup: ThreadLookup,
    now: datetime,
    window: timedelta,
) -> Thread | None:
    """An SMS or voicemail that threads nowhere belongs to an account's open emergency
    (requested within `window`) only when it is the same issue (issue 18 item 3, the rule in
    docs/emergency.md "One incident"): from the very contact who asked for it, or naming that
    emergency's ticket reference in its words. Then it is a new ticket linked to it, never
    billed again. Another contact of the same account with something else to say is its own
    ticket: an incident is one issue, not one account. Only a known contact links."""
    if customer.account_id == UNKNOWN_ACCOUNT or not customer.known:
        return None
    emergency = lookup.open_emergency_for_account(customer.account_id, now - window)
    if emergency is None:
        return None
    hours = f"{window.total_seconds() / 3600:g}"
    contact = contact_of(customer, message).lower()
    if contact and contact == (emergency.contact_email or "").lower():
        why = f"{message.sender} is the contact ({contact}) who asked for"
    elif emergency.reference and _names(message.text, emergency.reference):
        why = f"{message.sender} names {emergency.reference} in its words, so it is about"
    else:
        return None
    return Thread(
        "new-linked",
        emergency,
        f"{why} the emergency {emergency.reference} of {customer.account_id}, open and "
        f"requested within {hours} h: linked to it",
        incident=True,
    )


def _names(text: str, reference: str) -> bool:
    """Does `text` name this ticket reference as a word (T-1000 is not named by T-10000)?"""
    return re.search(rf"(?<![\w-]){re.escape(reference)}(?!\d)", text, re.IGNORECASE) is not None


def _may_append(ticket: TicketRef, customer: Customer, message: ParsedMessage) -> bool:
    if customer.account_id == UNKNOWN_ACCOUNT or ticket.account_id == UNKNOWN_ACCOUNT:
        return bool(message.sender) and message.sender == (ticket.contact_email or "")
    return customer.account_id == ticket.account_id
