"""The outbox gate: every automated message a customer receives is drafted and checked here.

Owns (DESIGN "Lessons": loops) the rules for whom we may write to — never to automated, bounce or
spam senders, never to our own addresses, never without an address — the rendering of
`templates/` with a language per account, and the stable Message-ID each outbox row carries so a
resend is recognisable. Pure: the per-recipient rate limit needs history, so `persist` applies it
with `rate_limited`; delivery lives in `outbox_sender`.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.config.loader import Templates
from gateway.message import Automated, Customer, ParsedMessage


@dataclass(frozen=True)
class Draft:
    kind: str
    recipient: str
    subject: str
    body: str
    header_message_id: str
    in_reply_to: str | None


@dataclass(frozen=True)
class Suppressed:
    kind: str
    recipient: str
    reason: str


def new_message_id(domain: str) -> str:
    """A Message-ID in our domain: replies thread by it, and loops are recognised by it."""
    return f"{secrets.token_hex(12)}@{domain}"


def gate(
    recipient: str,
    automated: Automated,
    own_addresses: tuple[str, ...],
    own_domains: tuple[str, ...],
) -> str | None:
    """Why we must not write to `recipient`, or None if we may."""
    if automated.is_automated:
        return f"sender is automated ({automated.kind}): never answer machines"
    if not recipient or "@" not in recipient:
        return "no reply address"
    addr = recipient.lower()
    if addr in own_addresses or addr.rsplit("@", 1)[1] in own_domains:
        return "recipient is one of our own addresses"
    local = addr.split("@", 1)[0]
    if local in ("mailer-daemon", "postmaster") or local.startswith(("noreply", "no-reply")):
        return "recipient is a daemon or no-reply address"
    return None


def render(
    templates: Templates,
    name: str,
    customer: Customer,
    message: ParsedMessage,
    reference: str,
    company: str,
    domain: str,
    extra: dict[str, str] | None = None,
    recipient: str | None = None,
) -> Draft | None:
    """Fill template `name` in the account's language. None if the template does not exist."""
    text = templates.get(name, customer.language)
    if text is None:
        return None
    values = {
        **(extra or {}),
        "reference": reference,
        "subject": message.subject or "(no subject)",
        "name": customer.contact_name or message.sender_name or "there",
        "company": company,
        "account": customer.account_name or customer.account_id,
        "plan": customer.plan,
    }
    # safe_substitute: an admin's typo in a template must never lose the customer's reply.
    filled = string.Template(text).safe_substitute(values)
    head, _, body = filled.partition("\n")
    subject = head.removeprefix("Subject:").strip()
    return Draft(
        kind=name,
        recipient=recipient or message.sender,
        subject=" ".join(subject.split())[:250],
        body=body.lstrip("\n"),
        header_message_id=new_message_id(domain),
        in_reply_to=message.message_id,
    )


def window_start(now: datetime, minutes: int) -> datetime:
    return now - timedelta(minutes=minutes)
