"""Stage 3: is this mail made by a machine? Such mail is recorded but never answered.

Owns loop prevention on the way in (DESIGN "Lessons": loops come from bounces and
notifications). Signals, in the order checked: our own Message-ID domain or loop marker, the
null sender and MAILER-DAEMON (RFC 5321 4.5.5), DSN/MDN reports (RFC 3464/8098), RFC 3834
`Auto-Submitted`, the de-facto `X-Autoreply`/`X-Autorespond`/`Precedence`, mailing-list
headers (RFC 2369/2919), then upstream spam verdicts. Pure: never touches storage.
"""

from __future__ import annotations

import re

from gateway.message import OWN_LOOP_HEADER, Automated, ParsedMessage

_DAEMON = re.compile(r"^(mailer-daemon|postmaster|no-?reply|do-?not-?reply|bounces?)([+\-@]|$)")
_AUTO_SUBJECT = re.compile(
    r"^(auto(matic)?[ -]?reply|out of (the )?office|undeliverable|delivery status notification"
    r"|returned mail|mail delivery (failed|failure)|abwesenheitsnotiz|automatische antwort)",
    re.I,
)


def check_automated(
    message: ParsedMessage, *, own_domain: str, trust_spam_headers: bool
) -> Automated:
    # Mail we sent ourselves coming back (a forwarding loop, an autoresponder quoting us).
    if message.header(OWN_LOOP_HEADER) is not None:
        return Automated("own-mail", f"carries our {OWN_LOOP_HEADER} header")
    if message.message_id and message.message_id.endswith("@" + own_domain.lower()):
        return Automated("own-mail", f"Message-ID is in our domain {own_domain}")
    if message.channel in ("smtp", "lmtp", "pipe", "imap"):
        if message.envelope_from == "":
            return Automated("null-sender", "null envelope sender <> (a bounce or report)")
        if not message.sender:
            return Automated("null-sender", "no sender address")
    local = message.sender.split("@", 1)[0]
    if _DAEMON.match(local):
        return Automated("bounce", f"sender {message.sender} is a mailer daemon or no-reply")
    ctype = (message.header("content-type") or "").lower()
    if "multipart/report" in ctype:
        return Automated("bounce", "delivery or disposition report (multipart/report)")
    auto = (message.header("auto-submitted") or "").strip().lower()
    if auto and not auto.startswith("no"):
        return Automated("auto-reply", f"Auto-Submitted: {auto} (RFC 3834)")
    for name in ("x-autoreply", "x-autorespond", "x-auto-response-suppress"):
        value = message.header(name)
        if value is not None and (name != "x-auto-response-suppress" or "all" in value.lower()):
            return Automated("auto-reply", f"{name} header present")
    precedence = (message.header("precedence") or "").strip().lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return Automated(
            "list" if precedence == "list" else "auto-reply", f"Precedence: {precedence}"
        )
    for name in ("list-id", "list-unsubscribe", "list-post"):
        if message.header(name) is not None:
            return Automated("list", f"mailing-list header {name}")
    if _AUTO_SUBJECT.match(message.subject):
        return Automated("auto-reply", "subject of an automatic reply or bounce")
    if trust_spam_headers:
        flag = (message.header("x-spam-flag") or "").strip().lower()
        status = (message.header("x-spam-status") or "").strip().lower()
        if flag == "yes" or status.startswith("yes"):
            return Automated("spam", "flagged as spam by the upstream filter")
    return Automated("human", "no sign of automation")
