"""The values that travel down the pipeline, one stage's output feeding the next.

Owns the shape of a parsed message and of each stage's result. Pure data: never does I/O.
Everything is a frozen dataclass so a stage cannot change what an earlier stage decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

# The header on every mail we send, so our own mail coming back is recognised (stages/automated
# reads it, outbound/mail_sender writes it).
OWN_LOOP_HEADER: Final = "x-intake-gateway"
# A voicemail ticket's text until Twilio's transcription arrives, or when there will be none
# (stages/parse_twilio and persist write it, outbound/twilio_sender replaces it).
TRANSCRIPTION_PENDING: Final = "Transcription: pending"
TRANSCRIPTION_UNAVAILABLE: Final = "Transcription: unavailable"


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int
    sha256: str
    # None when the part is over the per-attachment cap: recorded, content not kept.
    content: bytes | None = field(repr=False, default=None)


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
    defects: tuple[str, ...] = ()
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
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

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
    """A "confirm the emergency charge" message we sent for a held ticket: only a reply to it
    (email: In-Reply-To its Message-ID, from its recipient; SMS: from its number) confirms."""

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
    # Held until the customer acknowledges the emergency charge (an open emergency request).
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
