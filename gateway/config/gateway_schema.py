"""gateway.toml's shape: listeners, storage, spool, limits, workers, outbound mail, webhooks,
the API, IMAP mailboxes and retention, as typed, frozen settings with their defaults.

Owns the shape of gateway.toml alone. It is apart from `gateway.config.schema` (the other files)
so that `gateway ingest`, one process per message under an MTA's pipe transport (issue 20
outcome 3), builds only these dataclasses at import: each costs about a millisecond to compile.
Never reads files or environment variables (see `gateway_file`), never decides business rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from gateway.config.validate import check, port, positive

MiB = 1024 * 1024


@dataclass(frozen=True)
class GatewaySection:
    # Where the spool, attachments, models, status file and (by default) the SQLite file live.
    # A relative path is relative to the config directory (not to where a command runs).
    # `$STATE_DIRECTORY` (set by systemd's StateDirectory=) overrides it.
    state_dir: str = ".state"
    # Names this instance in logs, claims and Message-IDs; unique per instance sharing a database.
    instance: str = "gw1"
    # Our own mail domain: outgoing Message-IDs end in it, so mail that carries it is ours (loops).
    mail_domain: str = "support.example.com"


@dataclass(frozen=True)
class StorageSection:
    # SQLAlchemy URL. Empty means SQLite at <state_dir>/gateway.db. For PostgreSQL use
    # postgresql+psycopg://user@host/db and give the password through $GATEWAY_DATABASE_PASSWORD
    # or the credential `database-password`, never here.
    url: str = ""


@dataclass(frozen=True)
class SpoolSection:
    # Processing attempts before a message is quarantined with its reason.
    max_attempts: int = field(default=3, metadata=check(positive))
    # Above this many MiB waiting in the spool, intake answers "try again later" (SMTP 452).
    high_water_mib: int = field(default=4096, metadata=check(positive))
    # Free space the spool's filesystem must keep; below it intake answers 452.
    min_free_mib: int = field(default=64, metadata=check(positive))
    # fsync file and directory before acknowledging. Only turn off for throwaway trials.
    fsync: bool = True


@dataclass(frozen=True)
class LimitsSection:
    # Largest message accepted (SMTP 552 above it). 40 MiB fits a 25 MiB attachment after base64.
    max_message_bytes: int = field(default=40 * MiB, metadata=check(positive))
    # Attachments above this are recorded (name, type, size, hash) but their content not kept.
    max_attachment_bytes: int = field(default=30 * MiB, metadata=check(positive))
    # A message whose processing takes longer than this counts as a failed attempt.
    per_message_seconds: float = field(default=30.0, metadata=check(positive))


@dataclass(frozen=True)
class WorkersSection:
    # Worker processes claiming spool entries (CPU work runs there, apart from the listeners).
    processes: int = field(default=1, metadata=check(lambda v: None if v >= 0 else "must be >= 0"))
    # Seconds between spool scans when idle.
    poll_seconds: float = field(default=0.05, metadata=check(positive))
    # Messages per database transaction (one durable commit, one blob sync per batch; a batch
    # also stops at 8 MiB of mail). 64 rather than 32: persist's statements per batch and the
    # syncs are shared by twice as many (bench/stage_budgets.py --batch-size: persist about
    # 1,100 -> 900 µs a message); a ticket waits at most one batch, about 0.2 s, longer.
    batch_size: int = field(default=64, metadata=check(positive))
    # Added to each worker process's niceness at its start (0-19; takes effect when workers
    # restart). Acceptance is the promise a sender waits on, the drain is not: with the worker
    # at +10 on a 2-core machine, SMTP accepts/s at 20 sessions rose by a fifth (SQLite) to a
    # quarter (PostgreSQL) and the end-to-end rate held (bench/smtp_intake.py,
    # docs/benchmarks.md). 0 keeps them equal.
    nice: int = field(default=0, metadata=check(lambda v: None if 0 <= v <= 19
                                                else "must be between 0 and 19"))
    # A worker silent for longer than this (no heartbeat: stuck in one batch) counts as wedged:
    # the daemon stops its systemd watchdog pings and systemd restarts the service.
    stuck_seconds: float = field(default=600.0, metadata=check(positive))


@dataclass(frozen=True)
class SmtpSection:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = field(default=2525, metadata=check(port))
    # Speak LMTP (RFC 2033) instead of SMTP, for running behind Postfix/Exim.
    lmtp: bool = False
    # Recipients we accept; everything else gets 550 5.1.1 (never an open relay).
    recipients: tuple[str, ...] = ()
    # Whole domains we accept mail for.
    domains: tuple[str, ...] = ()
    max_sessions: int = field(default=200, metadata=check(positive))
    # Idle timeout for a session, seconds.
    timeout_seconds: int = field(default=300, metadata=check(positive))


@dataclass(frozen=True)
class OutboundSection:
    # Send outgoing mail at all (acknowledgements etc. stay queued in the outbox when false).
    enabled: bool = True
    relay_host: str = "127.0.0.1"
    relay_port: int = field(default=25, metadata=check(port))
    starttls: bool = False
    # Relay login user; the password comes from $GATEWAY_RELAY_PASSWORD or credential
    # `relay-password`.
    username: str = ""
    # The address our replies come from; a caller whose plan has no phone support is told to
    # write to it (channels/call_script.py).
    from_address: str = "support@support.example.com"
    from_name: str = "Support"
    # At most this many automatic messages to one recipient per window.
    per_recipient_limit: int = field(default=5, metadata=check(positive))
    per_recipient_window_minutes: int = field(default=60, metadata=check(positive))
    # Delivery retries back off exponentially up to this many seconds; give up after max_attempts.
    max_backoff_seconds: int = field(default=3600, metadata=check(positive))
    max_attempts: int = field(default=20, metadata=check(positive))


@dataclass(frozen=True)
class ThreadingSection:
    # A reply to a closed ticket within this many days reopens it; later it opens a linked one.
    reopen_window_days: int = field(default=14, metadata=check(positive))


@dataclass(frozen=True)
class AutomatedSection:
    # Mail an upstream filter flagged as spam (X-Spam-Flag: YES / X-Spam-Status: Yes):
    # "discard" records it without a ticket; "ticket" makes a ticket (never acknowledged).
    spam: Literal["discard", "ticket"] = "discard"
    # Only believe spam headers when a trusted filter in front of us sets them.
    trust_spam_headers: bool = True


# ---- [[api.tokens]] in gateway.toml: who may use the agents' HTTP API (gateway/api/auth.py) ---

API_SCOPES = ("read", "write", "admin")


def _token_name(v: str) -> str | None:
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}", v):
        return None
    return "must be 1-64 letters, digits, '_', '.', '@' or '-' (it names the actor in the audit)"


def _sha256_hex(v: str) -> str | None:
    if re.fullmatch(r"[0-9a-f]{64}", v):
        return None
    return (
        "must be the 64 lower-case hex digits of the token's SHA-256 "
        "(`gateway api token create NAME` prints it); never the token itself"
    )


def _scopes(v: tuple[str, ...]) -> str | None:
    if not v:
        return f"must name at least one of {', '.join(API_SCOPES)}"
    unknown = [s for s in v if s not in API_SCOPES]
    if unknown:
        known = ", ".join(API_SCOPES)
        return f"unknown scope(s) {', '.join(map(repr, unknown))}; scopes are {known}"
    return None


@dataclass(frozen=True)
class ApiToken:
    # Names the holder: the audit log records actions as api:<name>. Unique.
    name: str = field(metadata=check(_token_name))
    # SHA-256 (hex) of the token. Tokens are hashed at rest: the token itself is shown once by
    # `gateway api token create` and never stored.
    sha256: str = field(metadata=check(_sha256_hex))
    # Any of read, write, admin; admin implies write, write implies read.
    scopes: tuple[str, ...] = field(default=("read",), metadata=check(_scopes))


@dataclass(frozen=True)
class HttpSection:
    # The [api] listener: /healthz, /readyz, /metrics, the agents' API (/api/v1), /queue.
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata=check(port))
    # [[api.tokens]] tables: the tokens the agents' API (/api/v1) accepts (see ApiToken). None
    # configured: every /api/v1 request answers 401.
    tokens: tuple[ApiToken, ...] = ()
    # /metrics needs a token with the read scope (true) or is open to anyone who can reach the
    # [api] address (false: the usual Prometheus scrape on a private network).
    metrics_require_token: bool = False


# ---- [webhooks] in gateway.toml: the Twilio SMS and voice webhooks (channels/twilio.py) -------


def _base_url(v: str) -> str | None:
    if not v or re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", v):
        return None
    return "must be an http(s) URL without query or fragment, e.g. https://gw.example.com"


def _digits_range(v: int) -> str | None:
    return None if 1 <= v <= 14400 else "must be from 1 to 14400 seconds (Twilio's limit)"


#: Logged (critical) whenever the daemon starts or reloads into insecure_skip_signature = true.
INSECURE_WEBHOOKS_WARNING = (
    "INSECURE: [webhooks] insecure_skip_signature = true — Twilio webhooks accept "
    "UNSIGNED requests from anyone. Only for local trials; never in production."
)


@dataclass(frozen=True)
class WebhooksSection:
    # Serve the Twilio webhooks (POST /twilio/sms, /twilio/voice, ...) in the daemon.
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata=check(port))
    # The base URL Twilio calls (as configured in the Twilio console, behind any proxy), e.g.
    # https://gw.example.com. Every request's X-Twilio-Signature is checked against this base +
    # the path: a wrong value makes every webhook answer 403.
    public_url: str = field(default="", metadata=check(_base_url))
    # Accept unsigned requests. ONLY for local trials without Twilio; logged loudly at start.
    insecure_skip_signature: bool = False
    # An SMS from a contact with an open ticket on SMS active within this many hours joins
    # that ticket (unless it starts with NEW).
    sms_thread_window_hours: float = field(default=24.0, metadata=check(positive))
    # Immediate SMS answer (TwiML) to every accepted SMS; empty sends none. The ticket
    # reference follows through the outbox.
    sms_receipt: str = "Thank you, we received your message."
    # What a caller hears first.
    greeting: str = "Thank you for calling support."
    # Longest voicemail, seconds (Twilio transcribes only recordings of 2 to 120 seconds).
    record_max_seconds: int = field(default=120, metadata=check(_digits_range))
    # A voicemail whose transcription has not arrived after this long is marked "transcription
    # unavailable" (the ticket keeps the recording link).
    transcription_wait_minutes: float = field(default=15.0, metadata=check(positive))
    # Outbound SMS (ticket references, replies) through Twilio's REST API. The auth token comes
    # from $GATEWAY_TWILIO_AUTH_TOKEN or the credential `twilio-auth-token`, never from here.
    account_sid: str = ""
    # Our Twilio number (E.164) outbound SMS are sent from.
    from_number: str = ""
    # Twilio REST API base URL; empty is https://api.twilio.com (tests point it elsewhere).
    rest_base_url: str = field(default="", metadata=check(_base_url))


# ---- [[imap]] in gateway.toml: mailboxes the IMAP channel polls (channels/imap.py) ----------


def _mailbox_name(v: str) -> str | None:
    if re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", v):
        return None
    return "must be lowercase letters, digits, '-' or '_' (it names status, cursor and password)"


@dataclass(frozen=True)
class ImapMailbox:
    # Names the mailbox in logs, `gateway status` (imap:<name>) and its cursor. The password
    # comes from $GATEWAY_IMAP_PASSWORD_<NAME> (upper case, '-' as '_') or the credential
    # `imap-<name>`, never from this file.
    name: str = field(metadata=check(_mailbox_name))
    host: str
    username: str
    port: int = field(default=993, metadata=check(port))
    # "implicit": TLS from the first byte (port 993). "starttls": upgrade on port 143; it MUST
    # succeed, we never log in in plaintext when the server does not offer it. "plain": no TLS,
    # only to localhost/127.0.0.1/::1 and only with allow_plaintext = true.
    tls: Literal["implicit", "starttls", "plain"] = "implicit"
    allow_plaintext: bool = False
    # PEM file of CA certificates to trust instead of the system store (a private server's CA).
    ca_file: str = ""
    # Folder we take mail from.
    folder: str = "INBOX"
    # After the message is in the spool: "move" it to processed_folder (created if missing), or
    # "flag" it \Seen and leave it where it is.
    after_intake: Literal["move", "flag"] = "move"
    processed_folder: str = "Processed"
    # Where a message goes that cannot be fetched max_attempts times, or is over
    # limits.max_message_bytes, so it never blocks the mailbox (created if missing).
    quarantine_folder: str = "Quarantine"
    max_attempts: int = field(default=3, metadata=check(positive))
    # UIDs per FETCH: bounds memory whatever the backlog.
    batch_size: int = field(default=50, metadata=check(positive))
    # Seconds between checks when the server has no IDLE (or idle = false).
    poll_seconds: float = field(default=60.0, metadata=check(positive))
    # Use IMAP IDLE (RFC 2177) when the server offers it: new mail arrives within a second.
    idle: bool = True
    # The addresses this mailbox serves (the spooled envelope's recipients).
    recipients: tuple[str, ...] = ()


# ---- [retention] in gateway.toml: `gateway purge` (gateway/privacy/retention.py) ---


def _retention_days(v: int) -> str | None:
    return None if v >= 0 else "must be 0 or more days (0 turns this limit off)"


@dataclass(frozen=True)
class RetentionSection:
    # `gateway purge` (without --older-than) removes the message bodies, attachments and raw
    # messages of tickets resolved or closed more than this many days ago, and of messages that
    # never became a ticket (rejected, discarded) received that long ago. The ticket, its
    # metadata, SLA and billing rows and the dedup keys stay (a replay is still a duplicate).
    closed_ticket_days: int = field(default=365, metadata=check(positive))
    # Raw messages (the bytes as received, which repeat every attachment) of ANY message older
    # than this many days are dropped by `gateway purge` even while its ticket is open; the text
    # and attachments stay until closed_ticket_days. 0: raw kept as long as the body.
    raw_message_days: int = field(default=0, metadata=check(_retention_days))


@dataclass(frozen=True)
class GatewayConfig:
    gateway: GatewaySection = GatewaySection()
    storage: StorageSection = StorageSection()
    spool: SpoolSection = SpoolSection()
    limits: LimitsSection = LimitsSection()
    workers: WorkersSection = WorkersSection()
    smtp: SmtpSection = SmtpSection()
    outbound: OutboundSection = OutboundSection()
    threading: ThreadingSection = ThreadingSection()
    automated: AutomatedSection = AutomatedSection()
    webhooks: WebhooksSection = WebhooksSection()
    api: HttpSection = HttpSection(port=8081)
    # [[imap]] tables, one per mailbox (see ImapMailbox).
    imap: tuple[ImapMailbox, ...] = ()
    # Retention of message bodies and raw messages (`gateway purge`).
    retention: RetentionSection = RetentionSection()
