"""The admin's config files as typed, frozen settings.

Owns the *shape* of every file in the config directory and its defaults. Each dataclass maps one
TOML table; the field comments are the reference an admin reads (`docs/config.md` mirrors them).
Never reads files or environment variables (see `loader`), never decides business rules.
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
    # Messages per database transaction (one durable commit, one blob sync per batch).
    batch_size: int = field(default=32, metadata=check(positive))
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


# ---- customers.toml -------------------------------------------------------------------------


@dataclass(frozen=True)
class Contact:
    name: str = ""
    email: str = ""
    phone: str = ""
    # May ask for (billable) emergency support on the account's behalf.
    emergency_authorised: bool = False


@dataclass(frozen=True)
class Account:
    id: str
    name: str = ""
    plan: str = "none"
    # Anyone mailing from these domains belongs to the account (contacts match first).
    domains: tuple[str, ...] = ()
    # Language of customer-facing texts (templates/<name>.<language>.txt).
    language: str = "en"
    contacts: tuple[Contact, ...] = ()


@dataclass(frozen=True)
class CustomersFile:
    account: tuple[Account, ...] = ()


# ---- plans.toml -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlaTarget:
    """Targets in minutes on a calendar; unset keys fall back to the level's own targets."""

    first_response_minutes: int | None = field(default=None, metadata=check(positive))
    resolution_minutes: int | None = field(default=None, metadata=check(positive))
    # Name of a calendar in calendars.toml the clock runs on.
    calendar: str | None = None


@dataclass(frozen=True)
class Plan:
    name: str
    # Channels this plan may use: email, sms, voice, ...
    channels: tuple[str, ...] = ("email",)
    # Emergency (billable) support is available on this plan.
    emergency: bool = False
    # What an unentitled channel gets: one polite rejection, or a normal ticket with a note.
    unentitled: Literal["reject", "downgrade"] = "reject"
    # The most severe level a *lift* may give this plan's tickets: a routing rule's severity
    # floor never raises a ticket above it. Empty: no ceiling.
    ceiling: str = ""
    # Whether this plan's tickets may jump the queue at all.
    jump_queue: bool = True
    # Per-level SLA overrides, e.g. [plan.sla.urgent] first_response_minutes = 30.
    sla: dict[str, SlaTarget] = field(default_factory=dict)
    # -- emergency billing (gateway/emergency/ledger.py); required when emergency = true
    # -------------- Price of one emergency incident, a quoted decimal in `currency`: "250.00".
    emergency_price: str = field(default="", metadata=check(lambda v: _money(v)))
    # Added to the price when the emergency is asked for after hours (emergency.toml's
    # after_hours_calendar); "" or "0" for none. A prepaid bundle unit covers the price, not this.
    after_hours_surcharge: str = field(default="", metadata=check(lambda v: _money(v)))
    # ISO 4217 code of both amounts, e.g. "USD".
    currency: str = field(default="USD", metadata=check(lambda v: _currency(v)))


@dataclass(frozen=True)
class PlansFile:
    # Ordered from lowest to highest tier: comparisons are by position, never by name.
    plan: tuple[Plan, ...] = ()


# ---- emergency.toml: emergency (billable) support (gateway/emergency/rules.py) ---


def _money(v: str) -> str | None:
    if v == "" or re.fullmatch(r"\d{1,9}(\.\d{1,2})?", v):
        return None
    return 'must be an amount as a quoted decimal with at most 2 decimals, e.g. "250.00"'


def _currency(v: str) -> str | None:
    return None if re.fullmatch(r"[A-Z]{3}", v) else 'must be an ISO 4217 code such as "USD"'


def _not_blank(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


def _minutes(v: int) -> str | None:
    return None if 1 <= v <= 10080 else "must be from 1 to 10080 minutes (a week)"


@dataclass(frozen=True)
class EmergencyFile:
    # Mail to one of these addresses asks for emergency support (gateway.toml's [smtp]
    # recipients must accept it too). Case-insensitive.
    addresses: tuple[str, ...] = ()
    # A subject containing one of these (case-insensitive) asks for emergency support.
    subject_markers: tuple[str, ...] = ("[EMERGENCY]",)
    # An SMS whose first word is this (case-insensitive) asks for emergency support.
    sms_keyword: str = field(default="EMERGENCY", metadata=check(_not_blank))
    # Email acknowledgement: a message containing one of these (case and spacing ignored) has
    # acknowledged the charge — what the "Email Support" button's template puts in the mail.
    acknowledgement_phrases: tuple[str, ...] = ()
    # The word a reply to our "confirm the charge" email must contain (outside quoted text).
    # SMS confirmations are always YES; a call's keypress 1 is its own acknowledgement.
    confirmation_word: str = field(default="CONFIRM", metadata=check(_not_blank))
    # The version of the emergency terms a customer acknowledges; recorded with every incident.
    terms_version: str = field(default="1", metadata=check(_not_blank))
    # A held request without confirmation for this long is released at its classified
    # severity, with a note, and never billed.
    hold_timeout_minutes: int = field(default=240, metadata=check(_minutes))
    # An SMS or voicemail from a contact of an account with an open emergency opened this many
    # hours ago or less is linked to it: the same incident, never billed again.
    incident_window_hours: float = field(default=24.0, metadata=check(positive))
    # authserv-ids of the receiving MTAs whose Authentication-Results header we trust (their
    # DMARC/DKIM/SPF verdict authenticates the sender). Empty: trust none.
    trusted_authserv_ids: tuple[str, ...] = ()
    # Also verify DKIM signatures ourselves (DNS lookups from the worker) when no trusted
    # Authentication-Results says pass. Only for messages that ask for emergency support.
    dkim_check: bool = True
    # The calendar (calendars.toml) whose closed hours are "after hours": nights, weekends and
    # its holidays. Empty: no after-hours surcharge.
    after_hours_calendar: str = ""
    # The calendar (calendars.toml) a confirmed (paid) emergency's SLA clock runs on: its first
    # response and resolution targets count minutes of this calendar, not the level's
    # business hours. "24/7" (built in, unless calendars.toml defines that name) is always open.
    # check-config rejects one that is not open whenever after_hours_calendar is closed, when a
    # plan sells emergency support: the after-hours surcharge buys an after-hours response.
    response_calendar: str = field(default="24/7", metadata=check(_not_blank))
    # First-response target of a confirmed emergency, in minutes of response_calendar.
    first_response_minutes: int = field(default=60, metadata=check(_minutes))
    # When the classifier put an accepted emergency at this level or a less severe one, the
    # emergency stands (the customer asked and accepted the charge) but the ticket is tagged
    # `emergency-review` for an agent. Empty: never flagged.
    review_at_or_below: str = ""
    # Seconds between worker 0's looks for held requests whose time is up.
    check_interval_seconds: float = field(default=60.0, metadata=check(positive))


# ---- severity.toml ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelDef:
    # First response and resolution targets, in minutes of the level's calendar.
    first_response_minutes: int | None = field(default=None, metadata=check(positive))
    resolution_minutes: int | None = field(default=None, metadata=check(positive))
    # The calendar the clock runs on (calendars.toml): business hours, or a 24/7 one.
    calendar: str = "business"
    # What customers are told to do at this level (shown in the acknowledgement).
    action: str = ""


# -- [escalation] in severity.toml (gateway/policy/escalation.py, escalation_scheduler.py) --


def _percent(v: int) -> str | None:
    return None if 0 <= v <= 99 else "must be from 0 to 99 (0 turns near-target warnings off)"


def _not_negative(v: float) -> str | None:
    return None if v >= 0 else "must be 0 or more (0 turns linger escalations off)"


def _address(v: str) -> str | None:
    return None if re.fullmatch(r"[^@\s]+@[^@\s]+", v) else "must be an email address"


@dataclass(frozen=True)
class EscalationStep:
    # Who is told when a ticket reaches this step ([[escalation.steps]], in order: the first
    # escalation of a ticket goes to the first step, the next one to the second, and so on; once
    # past the last step, every further escalation goes to the last step's address).
    notify: str = field(metadata=check(_address))
    # A label for the step in notifications and `gateway escalate` ("team lead").
    name: str = ""


@dataclass(frozen=True)
class EscalationSection:
    # Escalate as "near" once this percentage of a target's business minutes has elapsed
    # (and as "breach" at 100 %). 0 turns near-target warnings off.
    near_percent: int = field(default=80, metadata=check(_percent))
    # Escalate as "linger" after this many business hours without activity on an open ticket
    # (time waiting on the customer does not count). 0 turns linger escalations off.
    linger_hours: float = field(default=24.0, metadata=check(_not_negative))
    # Seconds between scheduler runs in the daemon (worker 0).
    interval_seconds: float = field(default=60.0, metadata=check(positive))
    # [[escalation.steps]] in order. No steps: nobody to tell, escalation is off.
    steps: tuple[EscalationStep, ...] = ()


@dataclass(frozen=True)
class SeverityFile:
    # The ordered scale, most severe first.
    levels: tuple[str, ...] = ("urgent", "high", "normal", "low")
    # The level a ticket gets when nothing says otherwise.
    default: str = "normal"
    # Per level: SLA targets, calendar, customer action text. [level.urgent] ...
    level: dict[str, LevelDef] = field(default_factory=dict)
    # Classifier thresholds; the classifier validates this table itself.
    classifier: dict[str, object] = field(default_factory=dict)
    # When and whom to escalate to as targets near, breach or a ticket lingers. [escalation]
    escalation: EscalationSection = EscalationSection()


# ---- routing.toml -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteMatch:
    """[rule.match]: every condition given must hold (AND); a list holds when any value does (OR).

    A key left out matches anything; a rule without [rule.match] matches every ticket. Names
    (plans, levels, calendars) are checked against the other files by `gateway.policy.routing`."""

    # Channel kinds as plans.toml names them: "email", "sms", "voice" (not "smtp" or "imap").
    channel: tuple[str, ...] | None = None
    # Account ids from customers.toml; "unknown" is every sender no account claims.
    account: tuple[str, ...] | None = None
    # Exact plans ...
    plan: tuple[str, ...] | None = None
    # ... or this plan and every higher tier, by plans.toml's order ("growth and up").
    plan_at_least: str | None = None
    # Sender addresses, or phone numbers for SMS and voice; case-insensitive.
    sender: tuple[str, ...] | None = None
    # The sender's mail domain or any subdomain of it ("example.com" holds for a.example.com).
    sender_domain: tuple[str, ...] | None = None
    # Any of the message's recipient addresses (which of our addresses it was sent to).
    recipient: tuple[str, ...] | None = None
    # Exact levels ...
    severity: tuple[str, ...] | None = None
    # ... or this level and every more severe one, by severity.toml's order.
    severity_at_least: str | None = None
    # The ticket jumps the queue (after the plan's jump_queue right is applied).
    jump_queue: bool | None = None
    # The ticket is an emergency (billable) request.
    emergency: bool | None = None
    # Names of classifier rules that fired (rules.d), e.g. ["KW_DOWN"].
    hits: tuple[str, ...] | None = None
    # Case-insensitive substrings of subject + body.
    keywords: tuple[str, ...] | None = None
    # A regular expression (Python syntax) searched case-insensitively in subject + body.
    pattern: str | None = None
    # A calendar from calendars.toml: holds while the ticket's instant is inside its hours ...
    during: str | None = None
    # ... or outside them (nights, weekends, holidays).
    outside: str | None = None


@dataclass(frozen=True)
class RouteRule:
    """One [[rule]]: conditions and what a match does. See config/routing.toml."""

    # UPPER_SNAKE, unique: recorded on the ticket and shown in explanations.
    name: str
    # The queue a match sends the ticket to. Empty: this rule leaves the queue alone (a rule
    # that only tags, notifies or lifts severity).
    queue: str = ""
    # Tags added to the ticket.
    tags: tuple[str, ...] = ()
    # Lift the severity to at least this level; decide caps the lift at the plan's ceiling.
    severity_floor: str | None = None
    # A hint for who should pick the ticket up (a person or rota name; not validated).
    assignee: str = ""
    # Addresses told about the ticket through the outbox (template "notify").
    notify: tuple[str, ...] = ()
    # false: the first matching rule ends routing. true: apply this rule and keep evaluating
    # later rules (tags and notify add up; a later match's queue or assignee replaces this
    # one's; the most severe floor wins). `continue` is a Python keyword, hence the name.
    continue_matching: bool = False
    match: RouteMatch = RouteMatch()


@dataclass(frozen=True)
class RoutingFile:
    # Queue a ticket lands in when no rule matches.
    default_queue: str = "support"
    # [[rule]] tables, evaluated in file order (see RouteRule).
    rule: tuple[RouteRule, ...] = ()


# ---- calendars.toml ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CalendarDef:
    # One business-hours calendar for SLA clocks, checked by
    # `gateway.policy.calendars.check_calendars`.
    # IANA timezone name ("America/New_York", "Europe/Berlin", "UTC"); hours are local wall-clock
    # time there, so 08:00-18:00 stays 08:00-18:00 on both DST change days.
    timezone: str = "UTC"
    # Open at every instant of every day, holidays included (a 24/7 line). Leave out hours,
    # holidays and holiday_country when true.
    always: bool = False
    # Weekly hours: keys mon, tue, wed, thu, fri, sat, sun or a range such as "mon-fri"; values
    # are lists of "HH:MM-HH:MM" intervals (several per day allowed; "24:00" ends the day; an
    # interval cannot cross midnight). A weekday not listed is closed all day.
    hours: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Local dates closed all day: TOML dates (2026-12-25) or strings ("2026-12-25").
    holidays: tuple[object, ...] = ()
    # Also close on this country's public holidays (ISO code such as "US"), computed by the
    # optional `holidays` package, which must then be installed (pip install holidays).
    holiday_country: str = ""
    # A subdivision of holiday_country for regional holidays ("NY", "BY").
    holiday_subdivision: str = ""


@dataclass(frozen=True)
class CalendarsFile:
    # [calendar.<name>] tables; SLA targets name the calendar their clock runs on.
    calendar: dict[str, CalendarDef] = field(default_factory=dict)


# ---- forwarding.toml: outbound webhooks into existing help desks (gateway/outbound/forwarding.py)


def _webhook_name(v: str) -> str | None:
    if re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", v):
        return None
    return "must be lowercase letters, digits, '-' or '_' (it names deliveries, metrics, secret)"


def _webhook_url(v: str) -> str | None:
    # No user:password@ part: a URL ends up in logs and API answers; the secret signs instead.
    if re.fullmatch(r"https?://[^\s/?#@]+(/[^\s#]*)?", v):
        return None
    return "must be an http(s) URL without credentials or fragment, e.g. https://desk.example.com/in"


def _attempts(v: int) -> str | None:
    return None if 1 <= v <= 100 else "must be from 1 to 100"


def _timeout(v: float) -> str | None:
    return None if 0 < v <= 120 else "must be more than 0 and at most 120 seconds"


@dataclass(frozen=True)
class ForwardWebhook:
    # Names the webhook in deliveries, idempotency keys (<name>:<reference>:<change>), metrics
    # and its secret: $GATEWAY_FORWARD_SECRET_<NAME> (upper case, '-' as '_') or the credential
    # `forward-secret-<name>`, never this file. Nothing is ever sent unsigned.
    name: str = field(metadata=check(_webhook_name))
    # Where each delivery is POSTed. https://, or http:// only to this host (or allow_http).
    url: str = field(metadata=check(_webhook_url))
    # Queues (as routing.toml names them) whose tickets are forwarded; empty: every queue.
    queues: tuple[str, ...] = ()
    # Which changes: "created" (a new ticket) and "updated" (any later change to it).
    events: tuple[Literal["created", "updated"], ...] = ("created", "updated")
    # Attempts before a delivery becomes a dead letter (API /forwarding/dead-letters, metrics).
    max_attempts: int = field(default=12, metadata=check(_attempts))
    # Seconds to wait for the receiver (connect and answer); longer is a failed attempt.
    timeout_seconds: float = field(default=10.0, metadata=check(_timeout))
    # Delay before the first retry; it doubles with every attempt (jittered) up to the maximum.
    backoff_seconds: float = field(default=30.0, metadata=check(positive))
    max_backoff_seconds: float = field(default=3600.0, metadata=check(positive))
    # Allow http:// to other hosts: ticket data then crosses the network unencrypted.
    allow_http: bool = False


@dataclass(frozen=True)
class ForwardingFile:
    # Seconds worker 0 waits between looks for new ticket changes and due deliveries.
    poll_seconds: float = field(default=1.0, metadata=check(positive))
    # [[webhook]] tables, one per receiving help desk (see ForwardWebhook).
    webhook: tuple[ForwardWebhook, ...] = ()
