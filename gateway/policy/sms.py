"""SMS rules of the road: the keywords carriers honour, and whom we may text at all.

Owns Twilio's default STOP/START/HELP keywords (`sms_keyword`: the whole message, any case) and
`sms_gate`, the SMS twin of the outbox gate (never answer machines, only E.164 numbers, never a
number that texted STOP). Pure: whether a number opted out is read by the caller
(`gateway.storage.queries.opted_out`) and passed in. Used by the Twilio channel, decide,
persist, the API's replies and emergency holds.
"""

from __future__ import annotations

import re

from gateway.message import Automated

# Twilio's default opt-out, opt-in and help keywords (the whole message, any case).
SMS_STOP = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"}
)
SMS_START = frozenset({"START", "YES", "UNSTOP", "OPTIN"})
SMS_HELP = frozenset({"HELP", "INFO"})


def sms_keyword(text: str) -> str | None:
    """STOP, START or HELP when an SMS is exactly one of their keywords, else None."""
    word = text.strip().strip(".!").upper()
    if word in SMS_STOP:
        return "STOP"
    if word in SMS_START:
        return "START"
    if word in SMS_HELP:
        return "HELP"
    return None


E164 = re.compile(r"\+[1-9]\d{6,14}")


def sms_gate(phone: str, automated: Automated, is_opted_out: bool) -> str | None:
    """Why we must not text `phone`, or None if we may (the SMS twin of `outbox.gate`)."""
    if automated.is_automated:
        return f"sender is automated ({automated.kind}): never answer machines"
    if not E164.fullmatch(phone):
        return "no E.164 number to text"
    if is_opted_out:
        return f"{phone} opted out of SMS (STOP)"
    return None
