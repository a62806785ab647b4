"""The values that travel down the pipeline, one stage's output feeding the next.

Owns the shape of a parsed message and of each stage's result. Pure data: never does I/O.
Everything is a frozen dataclass so a stage cannot change what an earlier stage decided.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal

# The header on every mail we send, so our own mail coming back is recognised (stages/automated
# reads it, outbound/mail_sender writes it).
OWN_LOOP_HEADER: Final = "x-intake-gateway"
# A voicemail ticket's text until Twilio's transcription arrives, or when there will be none
# (stages/parse_twilio and persist write it, outbound/twilio_sender replaces it).
TRANSCRIPTION_PENDING: Final = "Transcription: pending"
TRANSCRIPTION_UNAVAILABLE: Final = "Transcription: unavailable"
# The whole pending line of a recording's text; settling it replaces the line whole, so the
# note never says "received" and "when Twilio sends it" at once (issue 18 item 7).
TRANSCRIPTION_PENDING_LINE: Final = (
    TRANSCRIPTION_PENDING + " (added to this ticket when Twilio sends it)."
)


def transcription_received(at: datetime) -> str:
    """The line that replaces the pending one once the transcript is on the ticket: where to find
    it, by the time `gateway show` lists it under (never a database id, which is no place in
    the ticket)."""
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at  # stored times are UTC
    when = at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return f"Transcription: received {when}, as its own message on this ticket."


def settle_transcription(text: str, line: str) -> str:
    """`text` with its pending transcription line, whatever its wording, replaced by `line`."""
    return "\n".join(
        line if old.startswith(TRANSCRIPTION_PENDING) else old for old in text.split("\n")
    )


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int
    sha256: str
    # None when the part is over the per-attachment cap: recorded, content not kept.
    content: bytes | None = field(repr=False, default=None)


# Every kind of parse defect that loses or alters content (issue 19), with what it means for the
# agent reading the ticket. The one list: the parse stage emits only these kinds, the ticket JSON
# and `gateway show` list them, the queue page marks the ticket, and /metrics counts them as
# gateway_parse_defects_total{kind}. The raw message is always kept whole beside them.
PARSE_DEFECT_KINDS: Final[dict[str, str]] = {
    "charset-detected": "the declared charset did not fit the text; decoded as a detected one",
    "text-undecodable": "bytes no charset could decode are shown as U+FFFD",
    "header-charset-guessed": "a header's bytes did not fit their charset; read as UTF-8 or "
    "windows-1252",
    "headers-repaired": "a damaged first header line was dropped or unfolded",
    "base64-repaired": "base64 with stray characters or bad padding was decoded leniently",
    "transfer-encoding-unknown": "an unknown Content-Transfer-Encoding: the part is kept as sent",
    "part-undecodable": "a part could not be decoded and is kept as its raw bytes",
    "structure-repaired": "broken MIME boundaries: the parts were recovered by guessing",
    "boundary-in-text": "MIME boundary lines found inside a text part were removed",
    "content-type-invalid": "a junk Content-Type was replaced by application/octet-stream",
    "attachment-not-kept": "an attachment over the size cap is listed but its content not kept",
    "text-truncated": "the text is longer than the gateway keeps; the rest is in the raw message",
    "too-many-parts": "more MIME parts than the gateway walks; the rest is in the raw message",
    "walk-failed": "the MIME structure could not be walked; text recovered by mail-parser only",
    "message-id-digested": "a Message-ID over 998 bytes is kept and matched as its SHA-256 digest",
    "subject-truncated": "the subject is over 998 characters; the rest is in the raw message",
}
# How a ticket with such a defect is tagged, so the queue page can mark it without a join.
PARSE_DEFECT_TAG: Final = "parse-defects"


@dataclass(frozen=True)
class ParseDefect:
    """One place where the parse lost or altered content, and where (an attachment's name, the
    charsets involved). `kind` is one of PARSE_DEFECT_KINDS."""

    kind: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.kind not in PARSE_DEFECT_KINDS:
            raise ValueError(f"unknown parse defect kind {self.kind!r}")

    def encoded(self) -> str:
        """`kind` or `kind(detail)`, as the messages.defects column stores it (comma-joined)."""
        detail = re.sub(r"[,()\s]+", " ", self.detail).strip()[:120]
        return f"{self.kind}({detail})" if detail else self.kind


_ENCODED_DEFECT = re.compile(r"^([a-z0-9-]+)(?:\((.*)\))?$")


def decode_parse_defects(column: str) -> tuple[ParseDefect, ...]:
    """The parse defects in a messages.defects value; the parser's other notes (the stdlib's
    harmless defect names) are left out."""
    out: list[ParseDefect] = []
    for item in column.split(","):
        m = _ENCODED_DEFECT.match(item.strip())
        if m and m.group(1) in PARSE_DEFECT_KINDS:
            out.append(ParseDefect(m.group(1), m.group(2) or ""))
    return tuple(out)


@dataclass(frozen=True)
class SenderAuth:
    """Whether the sender is authenticated, how, and why in plain words (decided by
    gateway/emergency/sender_auth.py).

    `method` names what authenticated the sender; it is "none" exactly when `authenticated` is
    False (failed checks are described in `detail`)."""

    authenticated: bool
    method: str  # "authentication-results" | "dkim" | "none"
    detail: str

    def __post_init__(self) -> None:
        if self.authenticated == (self.method == "none"):
            raise ValueError(
                f"method {self.method!r} contradicts authenticated={self.authenticated}"
            )


@dataclass(frozen=True)
class ParsedMessage:
    spool_id: str
    channel: str
    received_at: datetime
    envelope_from: str | None
    recipients: tuple[str, ...]
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    sender: str  # lower-cased address, or E.164 phone for SMS/voice
    sender_name: str
    subject: str
    date: datetime | None
    text: str
    headers: tuple[tuple[str, str], ...]  # lower-cased names, decoded values, in order
    attachments: tuple[Attachment, ...]
    raw_sha256: str
    raw_size: int
    dedup_key: str
    defects: tuple[str, ...] = ()  # the parser's notes (stdlib defect names), harmless or not
    # What the parse lost or altered (issue 19): listed on the ticket, counted, logged.
    parse_defects: tuple[ParseDefect, ...] = ()
    # Is the From address authenticated (gateway/emergency/sender_auth.py)? Computed from the raw
    # bytes
    # only for mail asking for emergency support (gateway/emergency/rules.py: authenticate); None
    # when not computed.
    sender_auth: SenderAuth | None = None
    # What the gateway wrote itself (a keypress note, a recording's receipt, "transcription
    # pending/unavailable"), not the sender's words: never classified (issue 18 item 2). Set by
    # parse; read by the classify stage.
    gateway_text: str = ""

    def header(self, name: str) -> str | None:
        """The first header of that name (case-insensitive), or None."""
        return self._first_headers.get(name.lower())

    @functools.cached_property
    def _first_headers(self) -> dict[str, str]:
        # Built once: the automated check, emergency rules and routing facts ask a dozen
        # headers of each message (issue 20 outcome 1). `headers` is immutable, so is this.
        return dict(reversed(self.headers))

    def header_all(self, name: str) -> tuple[str, ...]:
        name = name.lower()
        return tuple(v for k, v in self.headers if k == name)


@dataclass(frozen=True)
class Customer:
    account_id: str
    account_name: str
    plan: str
    plan_rank: int  # position in plans.toml, lowest tier 0
    known: bool
    contact_name: str | None
    contact_email: str | None
    emergency_authorised: bool
    language: str
    matched_by: str  # "contact", "domain", "phone" or "unknown"


def contact_of(customer: Customer, message: ParsedMessage) -> str:
    """Who a ticket is with, as its `contact_email` records it: the directory's address for a
    known contact, else the sender (an address, or the number of a phone-only contact)."""
    return customer.contact_email or message.sender or ""


@dataclass(frozen=True)
class Automated:
    """Why a message is machine-made (never acknowledged), or that it is not."""

    kind: Literal["human", "auto-reply", "bounce", "list", "spam", "own-mail", "null-sender"]
    reason: str

    @property
    def is_automated(self) -> bool:
        return self.kind != "human"


@dataclass(frozen=True)
class Prompt:
    """A "confirm the emergency charge" message we sent for a pending emergency request: only a
    reply to it (email: In-Reply-To its Message-ID, from its recipient; SMS: from its number)
    confirms."""

    channel: str  # email | sms
    message_id: str  # our outbox Message-ID (without <>)
    recipient: str  # the contact's address or E.164 number


@dataclass(frozen=True)
class TicketRef:
    id: int
    reference: str
    account_id: str
    status: str
    closed_at: datetime | None
    contact_email: str | None
    # -- emergency support (gateway/emergency/rules.py); only ever added --------------------------
    severity: str = ""
    held: bool = False
    emergency: bool = False
    emergency_acknowledged: bool = False
    # An emergency request awaits the customer's acknowledgement of the charge (the ticket keeps
    # its place meanwhile: issue 17 item 1).
    awaiting_acknowledgement: bool = False
    prompts: tuple[Prompt, ...] = ()
    # -- routing as applied to the ticket (decide compares a follow-up with it, issue 18) ------
    queue: str = ""
    routing_rule: str = ""


@dataclass(frozen=True)
class Thread:
    kind: Literal["new", "follow-up", "reopen", "new-linked"]
    ticket: TicketRef | None
    reason: str
    # "new-linked" to an account's open emergency (an SMS or voicemail within the incident
    # window): part of the same incident, never billed again.
    incident: bool = False
