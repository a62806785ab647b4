"""`gateway explain`: the whole decision for one message, for a person, creating nothing.

Owns nothing of its own: it runs the very stage functions the worker runs (parse, identify,
automated, thread — read-only — classify, decide) and prints what each decided, so an admin can
test a config change before reloading. Never writes to the database, the spool or the outbox.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from classifiers.types import Verdict
from gateway.emergency.rules import authenticate, for_classifier
from gateway.intake.spool import Envelope
from gateway.message import Automated, Customer, ParsedMessage, Thread
from gateway.service.runtime import Runtime
from gateway.stages.automated import check_automated
from gateway.stages.classify import classify
from gateway.stages.decide import Decision, decide
from gateway.stages.identify import identify
from gateway.stages.parse import parse
from gateway.stages.thread import thread
from gateway.storage.queries import SessionThreadLookup, already_ingested

# The channels `gateway classify` and `gateway explain` accept, and the spool channel each is
# read as. `voice` is kept as an alias of `voicemail` (explain's old spelling, issue 17 item 3).
CLI_CHANNELS: dict[str, str] = {
    "email": "smtp",
    "sms": "twilio-sms",
    "voicemail": "twilio-voice",
    "voice": "twilio-voice",
}


def as_spooled(raw: bytes, channel: str) -> bytes:
    """The bytes the parse stage reads for a message file given to classify or explain.

    An email is read as it is. For an SMS or a voicemail the file is either the spooled JSON
    form (`{"event": ..., "params": {...}}`, as `channels/twilio.py` writes it) or plain text,
    which becomes that form: an SMS `Body`, or a completed voicemail transcription. (Plain text
    used to be wrapped as an email and then lost by the Twilio parser: issue 17 item 3.)
    """
    if not channel.startswith("twilio"):
        return raw
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        data = None
    if isinstance(data, dict) and "event" in data:
        return raw
    text = raw.decode("utf-8", errors="replace")
    if channel == "twilio-sms":
        event = {"event": "sms", "params": {"Body": text, "MessageSid": "SMexplain"}}
    else:
        event = {
            "event": "transcription",
            "params": {
                "TranscriptionText": text,
                "TranscriptionStatus": "completed",
                "CallSid": "CAexplain",
            },
        }
    return json.dumps(event).encode()


@dataclass(frozen=True)
class Explanation:
    message: ParsedMessage
    customer: Customer
    automated: Automated
    thread: Thread
    verdict: Verdict
    decision: Decision
    # Set when the message is already in: what persist would record it as (issue 17 item 8).
    duplicate: str | None = None

    def lines(self) -> list[str]:
        m, c, d = self.message, self.customer, self.decision
        out = [
            f"message:      {m.subject!r} from {m.sender or '-'} via {m.channel}",
            f"customer:     {c.account_id} ({c.matched_by}), plan {c.plan}"
            + (f", contact {c.contact_email}" if c.contact_email else ""),
            f"automated:    {self.automated.kind}: {self.automated.reason}",
            f"thread:       {self.thread.kind}: {self.thread.reason}",
            f"classifier:   {self.verdict.explain()}",
            # What the classifier read (issue 16): the text after per-channel normalisation,
            # the steps that changed it, and the severity dimensions read from it.
            f"normalised:   {_one_line(self.verdict.normalised_text)!r} "
            f"({','.join(self.verdict.normalisation) or 'unchanged'})",
            f"dimensions:   {self.verdict.dimensions or '-'}",
            f"outcome:      {self._outcome()}",
            f"severity:     {d.severity}   jump_queue: {'yes' if d.jump_queue else 'no'}",
            f"queue:        {d.queue}"
            + (f"   (rule {d.route.rule})" if d.route and d.route.rule else "   (default)"),
        ]
        if d.route is not None and (d.route.tags or d.route.assignee or d.route.notify):
            out.append(
                f"route:        tags={','.join(d.route.tags) or '-'} "
                f"assignee={d.route.assignee or '-'} notify={','.join(d.route.notify) or '-'}"
            )
        if d.sla is not None:
            out.append(
                f"sla:          calendar {d.sla.calendar}; first response "
                f"{_due(d.sla.first_response_minutes, d.first_response_due)}; resolution "
                f"{_due(d.sla.resolution_minutes, d.resolution_due)}"
            )
        step = d.emergency_step
        if step is not None:
            out.append(f"emergency:    {step.outcome}: {step.reason}")
            if step.quote is not None:
                out.append(f"quote:        {step.quote.text()}, terms {step.quote.terms_version}")
        for reply in d.replies:
            out.append(f"reply:        {reply.template} to {reply.to or m.sender}: {reply.reason}")
        out.append("reasons:")
        out.extend(f"  {r.stage:11} {r.code:14} {r.text}" for r in d.reasons)
        return out


    def _outcome(self) -> str:
        d = self.decision
        if self.duplicate is not None:
            return (
                f"Duplicate: already ingested; it would be recorded as {self.duplicate}, "
                f"nothing new (had it been new: {type(d.outcome).__name__})"
            )
        return f"{type(d.outcome).__name__}: {d.outcome.reason}"


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _due(minutes: int | None, when: datetime | None) -> str:
    if minutes is None or when is None:
        return "none"
    return f"{minutes} min, due {when.isoformat().replace('+00:00', 'Z')}"


def explain(
    runtime: Runtime,
    raw: bytes,
    *,
    channel: str,
    at: datetime,
    sender: str | None = None,
    sessions: sessionmaker[Session] | None = None,
) -> Explanation:
    settings = runtime.settings
    duplicate: str | None = None
    envelope = Envelope(channel=channel, received_at=at, mail_from=sender)
    message = parse(raw, envelope, "explain", settings.gateway.limits.max_attachment_bytes)
    if sender:
        message = dataclasses.replace(message, sender=sender.lower())
    # As the pipeline does: the sender's authentication of mail asking for emergency support.
    message = authenticate(message, raw, settings.emergency, runtime.dkim_resolver)
    customer = identify(message, runtime.directory)
    automated = check_automated(
        message,
        own_domain=settings.gateway.gateway.mail_domain,
        trust_spam_headers=settings.gateway.automated.trust_spam_headers,
    )
    if sessions is not None:
        with sessions() as session:
            threaded = thread(
                message,
                customer,
                SessionThreadLookup(session),
                at,
                runtime.reopen_window,
                incident_window=runtime.incident_window,
            )
            duplicate = already_ingested(session, message.dedup_key)
            session.rollback()
    else:
        threaded = Thread("new", None, "no database: threading not checked")
    verdict = classify(
        for_classifier(message, settings.emergency),
        customer,
        runtime.engine,
        settings.severity.default,
    )
    decision = decide(message, customer, verdict, threaded, automated, at, runtime.policy)
    return Explanation(message, customer, automated, threaded, verdict, decision, duplicate)
