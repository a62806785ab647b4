"""Emergency support: who may ask for it, how the charge is acknowledged, and what it costs.

Owns the one rule of emergency support (issue 7), `evaluate`: a message asks for it only by an
explicit signal (`find_signal`: mail to an emergency address, a subject marker, the SMS keyword,
or keypress 1 on a call), and then, in this order,
  1. the account's plan offers emergency support (on this channel),
  2. the contact is `emergency_authorised`,
  3. the sender is authenticated (email: `ParsedMessage.sender_auth`; SMS and calls: the number
     as Twilio reports it on a signed webhook),
  4. the charge is acknowledged (email: a configured phrase; SMS: YES to our prompt, so never
     in the first text; a call: the keypress itself).
Failing 1 or 2 makes the request "unavailable" (one polite reply, the ticket goes on at its
classified severity); failing 3 or 4 holds the request (not the ticket, which keeps its place
and SLA clock) until the contact confirms. Also owns
whether a message confirms a held request (`confirmation`: only a reply to our prompt, from its
recipient, with the word), the price quoted (`quote`, with the after-hours flag of
`gateway.emergency.after_hours`), the agent-review flag when the classifier disagrees
(`review_flag`), and for which mail the sender's authentication is computed (`authenticate`).
decide asks it once, through `emergency_step`, for the whole answer as one frozen
`EmergencyDecision`: the step, the reasons to record, the level, the hold and its deadline, the
SLA calendar and the one reply.

Pure: never touches storage or a clock, never writes the ledger (gateway/emergency/ledger.py does)
and never holds a ticket (persist does, as decide says). Its only I/O is DKIM's DNS lookup, through
the resolver the caller injects into `authenticate`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from gateway.config.schema import EmergencyFile, Plan
from gateway.emergency.after_hours import after_hours, describe_hours
from gateway.emergency.sender_auth import DnsTxtResolver, authenticate_sender
from gateway.message import Customer, ParsedMessage, Thread
from gateway.policy.calendars import Calendar
from gateway.policy.plans import Sla, channel_kind

# What an emergency request awaiting the customer's acknowledgement is (the intake's reason;
# the hold reason of tickets held before issue 17, when a pending request still held its ticket).
HOLD_REASON = "awaiting acknowledgement"
# Tag of an accepted emergency the classifier rated far below the top: an agent looks at it.
REVIEW_TAG = "emergency-review"
SMS_CONFIRMATION = "YES"

Outcome = Literal["unavailable", "held", "accepted", "confirmed", "linked", "still-held", "already"]


@dataclass(frozen=True)
class Signal:
    """How the message asked for emergency support, in plain words."""

    kind: Literal["address", "subject-marker", "sms-keyword", "keypress"]
    text: str


@dataclass(frozen=True)
class Quote:
    """The price stated to the customer before the charge: what an incident is billed at."""

    currency: str
    price_minor: int
    surcharge_minor: int  # the plan's after-hours surcharge; applies only when after_hours
    after_hours: bool
    after_hours_reason: str
    after_hours_rule: str  # the rule in words, for the confirmation request
    terms_version: str

    @property
    def applied_surcharge_minor(self) -> int:
        return self.surcharge_minor if self.after_hours else 0

    @property
    def total_minor(self) -> int:
        return self.price_minor + self.applied_surcharge_minor

    def text(self) -> str:
        base = money(self.price_minor, self.currency)
        if not self.applied_surcharge_minor:
            return base
        surcharge = money(self.applied_surcharge_minor, self.currency)
        return f"{base} + {surcharge} after-hours surcharge = {self.total()}"

    def total(self) -> str:
        return money(self.total_minor, self.currency)


@dataclass(frozen=True)
class Evidence:
    """What a charge rests on (DESIGN promise 5): which message, what it said, when, from whom."""

    channel: str  # email | sms | voice
    reference: str  # Message-ID, MessageSid or CallSid
    text: str  # the exact acknowledgement text, or the digit pressed
    at: datetime
    sender: str
    authentication: str
    contact: str


@dataclass(frozen=True)
class EmergencyStep:
    """What emergency support made of one message, with the reason in plain words.

    outcome: "unavailable" (plan or authorisation says no), "held" (awaiting acknowledgement),
    "accepted" (an acknowledged emergency at once), "confirmed" (a reply releasing a held one),
    "linked" (part of an account's open emergency), "still-held" (a message on a held ticket
    that does not confirm it), "already" (the ticket is already an acknowledged emergency)."""

    outcome: Outcome
    code: str
    reason: str
    signal: Signal | None = None
    quote: Quote | None = None
    # The request's evidence when held; the acknowledgement's when accepted or confirmed.
    evidence: Evidence | None = None
    authenticated: bool = False
    authentication: str = ""
    # Why an accepted emergency goes to an agent for review ("" when it does not).
    review: str = ""
    # For "unavailable": how to get help anyway, for the customer.
    help: str = ""
    classified: str = ""

    @property
    def acknowledged(self) -> bool:
        return self.outcome in ("accepted", "confirmed")


# ---- money --------------------------------------------------------------------------------------


def response_sla(sla: Sla, config: EmergencyFile) -> Sla:
    """The SLA of a confirmed (paid) emergency: the level's targets, but its clock runs on
    `response_calendar` and its first response is due within `first_response_minutes` of it.

    The after-hours surcharge buys an after-hours response: on the urgent level's business
    hours an emergency confirmed on a Sunday would not be due before Monday (issue 17, item 2).
    """
    return dataclasses.replace(
        sla,
        calendar=config.response_calendar,
        first_response_minutes=config.first_response_minutes,
    )


def parse_money(text: str) -> int:
    """A plans.toml amount ("250.00", "" for none) in minor units (cents)."""
    return int(Decimal(text or "0") * 100)


def money(minor: int, currency: str) -> str:
    sign = "-" if minor < 0 else ""
    minor = abs(minor)
    return f"{sign}{currency} {minor // 100}.{minor % 100:02d}"


def quote(
    plan: Plan, config: EmergencyFile, calendars: Mapping[str, Calendar], at: datetime
) -> Quote:
    """The price of one incident on `plan` asked for at `at`, after hours or not."""
    surcharge = parse_money(plan.after_hours_surcharge)
    calendar = calendars.get(config.after_hours_calendar) if config.after_hours_calendar else None
    if calendar is None:
        flag, why = False, "no after-hours calendar is configured"
        rule = "no after-hours surcharge"
    else:
        found = after_hours(at, calendar, config.after_hours_calendar)
        flag, why = found.after_hours, found.reason
        rule = (
            f"{money(surcharge, plan.currency)} surcharge outside business hours "
            f"({describe_hours(calendar)}, {calendar.zone.key}) and on holidays"
            if surcharge
            else "no after-hours surcharge"
        )
    return Quote(
        currency=plan.currency,
        price_minor=parse_money(plan.emergency_price),
        surcharge_minor=surcharge,
        after_hours=flag,
        after_hours_reason=why,
        after_hours_rule=rule,
        terms_version=config.terms_version,
    )


# ---- the signal, authentication and the acknowledgement ------------------------------------------


def find_signal(message: ParsedMessage, config: EmergencyFile) -> Signal | None:
    """The explicit way this message asks for emergency support, or None. Nothing else counts:
    an "URGENT" in the text is the classifier's business, never a request to be billed."""
    kind = channel_kind(message.channel)
    if kind == "email":
        wanted = {a.lower() for a in config.addresses}
        for recipient in message.recipients:
            if recipient.lower() in wanted:
                return Signal("address", f"mail to the emergency address {recipient.lower()}")
        subject = message.subject.lower()
        for marker in config.subject_markers:
            if marker and marker.lower() in subject:
                return Signal("subject-marker", f"the subject marker {marker}")
    elif kind == "sms":
        words = message.text.split(None, 1)
        first = words[0].strip(".,:;!").upper() if words else ""
        if first and first == config.sms_keyword.upper():
            return Signal("sms-keyword", f"the SMS keyword {config.sms_keyword}")
    elif (
        kind == "voice"
        and message.header("x-twilio-event") == "gather"
        and (message.header("x-twilio-digits") or "") == "1"
    ):
        call = message.header("x-twilio-callsid") or "?"
        return Signal("keypress", f"keypress 1 on call {call}")
    return None


def authenticate(
    message: ParsedMessage, raw: bytes, config: EmergencyFile, resolver: DnsTxtResolver | None
) -> ParsedMessage:
    """`message` with its sender's authentication when it is mail asking for emergency support
    (only then: a DKIM check may cost a DNS lookup). `resolver` backs our own DKIM check; it is
    used only with `dkim_check = true`."""
    if channel_kind(message.channel) != "email" or find_signal(message, config) is None:
        return message
    verdict = authenticate_sender(
        raw,
        message.sender,
        trusted_authserv_ids=config.trusted_authserv_ids,
        dkim_resolver=resolver if config.dkim_check else None,
    )
    return dataclasses.replace(message, sender_auth=verdict)


def for_classifier(message: ParsedMessage, config: EmergencyFile) -> ParsedMessage:
    """`message` as the classifier should read it: without our own protocol words (subject
    markers, the SMS keyword, the acknowledgement phrases). The classifier judges the problem;
    asking for emergency support is this module's business, so "[EMERGENCY]" must neither lift
    the severity nor hide a disagreement (`review_flag`)."""
    subject, text = message.subject, message.text
    for marker in config.subject_markers:
        if marker:
            subject = re.sub(re.escape(marker), " ", subject, flags=re.I)
    for phrase in config.acknowledgement_phrases:
        words = phrase.split()
        if words:
            text = re.sub(r"\s+".join(map(re.escape, words)), " ", text, flags=re.I)
    if channel_kind(message.channel) == "sms" and find_signal(message, config) is not None:
        text = text.split(None, 1)[1] if len(text.split(None, 1)) > 1 else ""
        subject = text.strip().splitlines()[0] if text.strip() else ""
    if (subject, text) == (message.subject, message.text):
        return message
    return dataclasses.replace(message, subject=" ".join(subject.split()), text=text)


def _authentication(message: ParsedMessage) -> tuple[bool, str]:
    kind = channel_kind(message.channel)
    if kind in ("sms", "voice"):
        return True, f"phone number {message.sender} as reported by Twilio (signed webhook)"
    auth = message.sender_auth
    if auth is None:
        return False, "sender authentication was not checked"
    if auth.authenticated:
        return True, f"authenticated by {auth.method}: {auth.detail}"
    return False, f"not authenticated: {auth.detail}"


def _normalised(text: str) -> str:
    return " ".join(text.split()).lower()


def find_acknowledgement(message: ParsedMessage, config: EmergencyFile) -> str | None:
    """The acknowledgement phrase as written in the mail (case and spacing ignored), or None."""
    haystack = _normalised(message.subject + "\n" + message.text)
    for phrase in config.acknowledgement_phrases:
        if phrase.strip() and _normalised(phrase) in haystack:
            return phrase
    return None


# Where a reply's own words end and the quoted original begins (common clients' markers).
_QUOTE_START = re.compile(
    r"^\s*(On\b.*\bwrote:\s*$|-{2,}\s*Original Message\s*-{2,}|From:\s|_{8,}\s*$)", re.I
)


def reply_text(text: str) -> str:
    """The reply's own words: quoted lines ("> ...") and the quoted original are left out, so
    the instruction in our own message ("reply with CONFIRM") never confirms anything."""
    own: list[str] = []
    for line in text.splitlines():
        if _QUOTE_START.match(line):
            break
        if not line.lstrip().startswith(">"):
            own.append(line)
    return "\n".join(own)


# ---- the rule ------------------------------------------------------------------------------------

_PLAN_HELP = (
    "Emergency support is offered only to customers on paid support plans that include it. "
    "To add it to your plan, reply to this message or contact your account manager."
)
_AUTHORISED_HELP = (
    "Only the contacts your company has authorised may ask for emergency support: please ask "
    "one of them, or ask your administrator to add you to the authorised contacts."
)


@dataclass(frozen=True)
class Refusal:
    """Why a contact may not ask for emergency support (rules 1 and 2), and how to get help:
    the words of the `emergency-unavailable` reply, and of a live call (channels/call_script.py)."""

    code: Literal["plan", "not-authorised"]
    reason: str
    help: str


def refusal(
    customer: Customer, plan: Plan, entitled: bool, channel: str, who: str
) -> Refusal | None:
    """Rules 1 and 2: may `customer` (named `who` in the reason) ask for emergency support by
    `channel` (email | sms | voice)? None when they may. A live call asks this very function
    when the caller presses 1, so the caller hears what the SMS and the ticket say."""
    if not (plan.emergency and entitled):
        why = (
            f"plan {plan.name} does not include emergency support"
            if not plan.emergency
            else f"plan {plan.name} does not include {channel}, so no emergency by {channel}"
        )
        return Refusal("plan", why, _PLAN_HELP)
    if not customer.emergency_authorised:
        return Refusal(
            "not-authorised",
            f"{who} is not among the authorised contacts of "
            f"{customer.account_name or customer.account_id} who may ask for emergency support",
            _AUTHORISED_HELP,
        )
    return None


def evaluate(
    message: ParsedMessage,
    customer: Customer,
    plan: Plan,
    entitled: bool,
    classified: str,
    thread: Thread,
    config: EmergencyFile,
    calendars: Mapping[str, Calendar],
    levels: tuple[str, ...],
) -> EmergencyStep | None:
    """What emergency support makes of `message` (None: nothing, it does not ask for it)."""
    target = thread.ticket
    if thread.incident and target is not None:
        state = "an acknowledged" if target.emergency_acknowledged else "a held"
        return EmergencyStep(
            "linked",
            "incident-link",
            f"linked to {state} emergency {target.reference} of account {customer.account_id} "
            "opened within the incident window: the same incident, never billed again; the "
            "link alone does not raise this ticket",
            classified=classified,
        )
    signal = find_signal(message, config)
    if signal is None:
        return None
    if target is not None and thread.kind != "new-linked" and target.emergency_acknowledged:
        return EmergencyStep(
            "already",
            "already-emergency",
            f"asked again by {signal.text}, but {target.reference} is already an acknowledged "
            "emergency: the same incident, not billed again",
            signal=signal,
            classified=classified,
        )
    channel = channel_kind(message.channel)
    who = message.sender or "an unknown sender"
    refused = refusal(customer, plan, entitled, channel, who)
    if refused is not None:
        return EmergencyStep(
            "unavailable",
            refused.code,
            refused.reason,
            signal=signal,
            help=refused.help,
            classified=classified,
        )
    authenticated, authentication = _authentication(message)
    acknowledgement = _acknowledgement(message, channel, config)
    evidence = Evidence(
        channel=channel,
        reference=_reference(message),
        text=_acknowledgement_evidence(message, acknowledgement) or _request_text(message),
        at=message.received_at,
        sender=message.sender,
        authentication=authentication,
        contact=_contact(customer),
    )
    price = quote(plan, config, calendars, quoted_at(message))
    review = review_flag(classified, levels, config)
    # A held ticket asked again gets no second confirmation request (exactly one per hold).
    held: Outcome = (
        "still-held" if target is not None and target.awaiting_acknowledgement else "held"
    )
    step = EmergencyStep(
        held,
        "",
        "",
        signal=signal,
        quote=price,
        evidence=evidence,
        authenticated=authenticated,
        authentication=authentication,
        review=review,
        classified=classified,
    )
    if not authenticated:
        ack = (
            f"; its acknowledgement ({acknowledgement!r}) alone is not enough"
            if acknowledgement
            else ""
        )
        return dataclasses.replace(
            step,
            code="unauthenticated",
            reason=f"asked by {signal.text}; the sender is {authentication}{ack}: the request "
            f"is pending until a reply from the contact's own mailbox "
            f"({customer.contact_email or who}) confirms the charge; the ticket keeps its place "
            "meanwhile",
        )
    if acknowledgement is None:
        how = {
            "email": f"a reply with the word {config.confirmation_word}",
            "sms": f"a text {SMS_CONFIRMATION}",
        }.get(channel, "a confirmation")
        return dataclasses.replace(
            step,
            code="no-acknowledgement",
            reason=f"asked by {signal.text} ({authentication}) without acknowledging the charge: "
            f"the request is pending until the contact confirms with {how}; the ticket keeps "
            "its place meanwhile",
        )
    return dataclasses.replace(
        step,
        outcome="accepted",
        code="acknowledged",
        reason=f"asked by {signal.text} and acknowledged ({acknowledgement!r}) by {who}, an "
        f"authorised contact, {authentication}; quoted {price.text()}, terms "
        f"{config.terms_version}",
    )


def confirmation(
    message: ParsedMessage, thread: Thread, config: EmergencyFile
) -> EmergencyStep | None:
    """Does this message confirm the held request of the ticket it threads to? Only a reply to
    our prompt does: by email, from the address it was sent to, naming our prompt's Message-ID
    in In-Reply-To/References (which only its recipient has seen: proof of the mailbox) and
    containing the confirmation word in its own text; by SMS, YES from the prompted number.
    None when the ticket awaits nothing, or an SMS answers no prompt of ours."""
    ticket = thread.ticket
    if ticket is None or thread.kind not in ("follow-up", "reopen"):
        return None
    if not ticket.awaiting_acknowledgement:
        return None
    channel = channel_kind(message.channel)
    on = f"the emergency request of {ticket.reference} stays pending"
    if channel == "sms":
        if not any(p.channel == "sms" and p.recipient == message.sender for p in ticket.prompts):
            return None
        word = message.text.strip().strip(".!").upper()
        if word != SMS_CONFIRMATION:
            return EmergencyStep(
                "still-held", "not-confirmed", f"a text that is not {SMS_CONFIRMATION}: {on}"
            )
        return _confirmed(
            message,
            channel,
            message.text.strip(),
            f"phone number {message.sender} as reported by Twilio, the number our "
            "confirmation request was texted to",
            ticket.reference,
        )
    if channel != "email":
        return None
    ids = {i.lower() for i in (*message.in_reply_to, *message.references)}
    prompts = [p for p in ticket.prompts if p.channel == "email" and p.message_id.lower() in ids]
    if not prompts:
        return EmergencyStep(
            "still-held",
            "not-confirmed",
            f"from {message.sender or 'an unknown sender'}, not a reply to our confirmation "
            f"request (only that reply, from the contact's mailbox, confirms): {on}",
        )
    prompt = next((p for p in prompts if p.recipient == message.sender), None)
    if prompt is None:
        return EmergencyStep(
            "still-held",
            "not-confirmed",
            f"a reply to our confirmation request, but from {message.sender}, not from "
            f"{prompts[0].recipient} it was sent to: {on}",
        )
    own = reply_text(message.text)
    match = re.search(rf"(?<!\w){re.escape(config.confirmation_word)}(?!\w)", own, re.I)
    if match is None:
        return EmergencyStep(
            "still-held",
            "not-confirmed",
            f"a reply from {message.sender} without the word {config.confirmation_word} in its "
            f"own text: {on}",
        )
    line = next(ln.strip() for ln in own.splitlines() if match.group(0) in ln)
    proof = (
        f"a reply from {message.sender} to our confirmation request <{prompt.message_id}>, "
        "which only that mailbox received (proof of control of it)"
    )
    if message.sender_auth is not None:
        proof += f"; {_authentication(message)[1]}"
    return _confirmed(message, channel, line, proof, ticket.reference)


def _confirmed(
    message: ParsedMessage, channel: str, text: str, authentication: str, reference: str
) -> EmergencyStep:
    evidence = Evidence(
        channel=channel,
        reference=_reference(message),
        text=text[:2000],
        at=message.received_at,
        sender=message.sender,
        authentication=authentication,
        contact=message.sender,
    )
    return EmergencyStep(
        "confirmed",
        "confirmed",
        f"{message.sender} confirmed the emergency charge with {text[:200]!r} ({authentication}): "
        f"{reference} becomes an acknowledged emergency",
        evidence=evidence,
        authenticated=True,
        authentication=authentication,
    )


# ---- the step decide asks for -------------------------------------------------------------------


@dataclass(frozen=True)
class Note:
    """One reason for decide to record, as (stage, code, text) — decide's `Reason` in words."""

    stage: str
    code: str
    text: str


@dataclass(frozen=True)
class EmergencyReply:
    """The one message an emergency request gets instead of the acknowledgement.

    `to`: None for the sender; `with_action`: decide adds the SLA's action text (known only once
    the final severity is), as the acknowledgement it replaces would have said it."""

    template: str
    reason: str
    to: str | None = None
    values: tuple[tuple[str, str], ...] = ()
    with_action: bool = False


@dataclass(frozen=True)
class EmergencyDecision:
    """Everything emergency support decides about one message, in one value (`emergency_step`).

    decide reads it as it is: `confirmed` releases a held ticket before anything else;
    `notes` are recorded after the plan's queue-jump right; `top_level` puts the message at the
    top level with the plan's queue jump; `sla` moves a paid emergency onto the response
    calendar; `held` makes the outcome a hold with `hold_reason` until `hold_deadline`;
    `reply` replaces the acknowledgement; `billed` asks persist for an incident."""

    step: EmergencyStep | None
    notes: tuple[Note, ...] = ()
    top_level: bool = False
    held: bool = False
    hold_reason: str = ""
    hold_deadline: datetime | None = None
    reply: EmergencyReply | None = None
    # Set for an acknowledged emergency: its first response runs on this calendar (issue 17).
    response_calendar: str = ""
    response_minutes: int | None = None

    @property
    def confirmed(self) -> bool:
        return self.step is not None and self.step.outcome == "confirmed"

    @property
    def billed(self) -> bool:
        return self.step is not None and self.step.acknowledged

    def sla(self, sla: Sla) -> Sla:
        """`sla` as this message runs on it: a paid emergency's on the response calendar."""
        if not self.response_calendar:
            return sla
        return dataclasses.replace(
            sla, calendar=self.response_calendar, first_response_minutes=self.response_minutes
        )


def emergency_step(
    message: ParsedMessage,
    customer: Customer,
    plan: Plan,
    entitled: bool,
    classified: str,
    thread: Thread,
    config: EmergencyFile,
    calendars: Mapping[str, Calendar],
    levels: tuple[str, ...],
    now: datetime,
) -> EmergencyDecision:
    """What emergency support makes of `message`, for decide, in one call.

    A reply confirming a held request comes first of all (an SMS YES answering our prompt is a
    confirmation, not Twilio's opt-in keyword START); otherwise the rule (`evaluate`), or, for a
    message on a held ticket that does not confirm it, that it stays held."""
    confirm = confirmation(message, thread, config)
    if confirm is not None and confirm.outcome == "confirmed":
        return EmergencyDecision(
            confirm,
            notes=(Note("emergency", confirm.code, confirm.reason),),
            top_level=True,
            reply=EmergencyReply("emergency-accepted", "a confirmed emergency is confirmed once"),
            response_calendar=config.response_calendar,
            response_minutes=config.first_response_minutes,
        )
    notes = list(_keypress_notes(message, customer, entitled, plan.emergency))
    step = evaluate(
        message, customer, plan, entitled, classified, thread, config, calendars, levels
    )
    if step is None:
        step = confirm  # a message on a held ticket that does not confirm it: say so
    if step is None:
        return EmergencyDecision(None, tuple(notes))
    notes.append(Note("emergency", step.code, step.reason))
    accepted = step.outcome == "accepted"
    if step.review and accepted:
        notes.append(Note("emergency", "review", step.review))
    # An acknowledged emergency: the top level, and the queue jump the plan allows; the queue
    # puts acknowledged emergencies first of all. Linking alone never raises a ticket (issue 18
    # item 3): a linked ticket stays at the severity its own words get.
    held = step.outcome == "held"
    return EmergencyDecision(
        step,
        tuple(notes),
        top_level=accepted,
        held=held,
        hold_reason=f"{HOLD_REASON}: {step.reason}" if held else "",
        hold_deadline=now + timedelta(minutes=config.hold_timeout_minutes) if held else None,
        reply=_reply(step, customer, config),
        response_calendar=config.response_calendar if accepted else "",
        response_minutes=config.first_response_minutes if accepted else None,
    )


def _reply(step: EmergencyStep, customer: Customer, config: EmergencyFile) -> EmergencyReply | None:
    """The one message an emergency request gets: why not, the charge to confirm, or that it
    is accepted (persist adds the incident and how it is billed)."""
    if step.outcome == "unavailable":
        return EmergencyReply(
            "emergency-unavailable",
            "an emergency that cannot be accepted gets one polite reply saying why",
            values=(("reason", step.reason), ("help", step.help)),
            with_action=True,
        )
    if step.outcome == "held":
        by_email = step.evidence is not None and step.evidence.channel == "email"
        return EmergencyReply(
            "confirm-charge",
            "a held emergency request gets exactly one confirmation request, to the contact",
            # To the contact's own mailbox, never to an address the message merely claims.
            to=customer.contact_email if by_email else None,
            values=prompt_values(step, config),
        )
    if step.outcome == "accepted":
        return EmergencyReply("emergency-accepted", "an acknowledged emergency is confirmed once")
    return None


def _keypress_notes(
    message: ParsedMessage, customer: Customer, entitled: bool, plan_emergency: bool
) -> tuple[Note, ...]:
    """A caller's choice on a call, recorded with its evidence (what makes it an emergency, or
    not, is `evaluate`'s rule)."""
    if not _keypress(message):
        return ()
    digit = message.header("x-twilio-digits") or ""
    call = message.header("x-twilio-callsid") or "?"
    at = message.received_at.isoformat().replace("+00:00", "Z")
    evidence = (
        f"caller {message.sender} pressed {digit or 'nothing'} on call {call} at {at}, "
        f"{_heard(message)}"
    )
    if digit != "1":
        return (Note("policy", "normal-keypress", evidence + "; normal priority"),)
    if not (entitled and plan_emergency):
        return (Note("policy", "emergency-unavailable", evidence + "; the plan has no emergency"),)
    authorised = "authorised" if customer.emergency_authorised else "NOT authorised"
    return (
        Note("policy", "emergency-keypress", f"{evidence}; contact {authorised} for emergencies"),
    )


def review_flag(classified: str, levels: tuple[str, ...], config: EmergencyFile) -> str:
    """Why an emergency goes to an agent for review, or "": the classifier rated it at or below
    `review_at_or_below`. The emergency stands either way (the customer asked and accepted)."""
    threshold = config.review_at_or_below
    if not threshold or threshold not in levels or classified not in levels:
        return ""
    if levels.index(classified) < levels.index(threshold):
        return ""
    return (
        f"the classifier rated the message {classified} (at or below {threshold}): it stays an "
        "emergency because the customer asked and accepted the charge, and is flagged for "
        "agent review"
    )


def _acknowledgement(message: ParsedMessage, channel: str, config: EmergencyFile) -> str | None:
    if channel == "email":
        return find_acknowledgement(message, config)
    if channel == "voice":
        digit = message.header("x-twilio-digits") or ""
        return digit if digit == "1" else None
    return None  # SMS: only YES to our prompt acknowledges


def _keypress(message: ParsedMessage) -> bool:
    """A call's keypress. The channel first: an email may carry any X-Twilio-* header it likes,
    and must never choose its own price instant or evidence words."""
    return (
        channel_kind(message.channel) == "voice" and message.header("x-twilio-event") == "gather"
    )


def call_prompt(message: ParsedMessage) -> str | None:
    """The exact words of the emergency prompt the caller heard before a keypress, as the call's
    signed gather URL carries them (channels/twilio.py); None for a keypress without them."""
    return (message.header("x-twilio-prompt") or None) if _keypress(message) else None


def quoted_at(message: ParsedMessage) -> datetime:
    """The instant the price was stated: a keypress answers the prompt spoken when the call was
    answered (its after-hours surcharge was decided then), anything else is priced on arrival."""
    spoken = message.header("x-twilio-prompted-at") if _keypress(message) else None
    if spoken:
        try:
            at = datetime.fromisoformat(spoken.replace("Z", "+00:00"))
        except ValueError:
            return message.received_at
        if at.tzinfo is not None:
            return at
    return message.received_at


def _heard(message: ParsedMessage) -> str:
    prompt = call_prompt(message)
    if prompt is None:
        return "after the emergency prompt (its words were not recorded with this keypress)"
    return f'after hearing "{prompt}"'


def _acknowledgement_evidence(message: ParsedMessage, acknowledgement: str | None) -> str | None:
    """The evidence text of an acknowledgement: its exact text, or for a call the digit and the
    exact words spoken before it (what the caller accepted, DESIGN promise 5)."""
    if acknowledgement is None or not _keypress(message):
        return acknowledgement
    return f"pressed {acknowledgement} {_heard(message)}"


def _reference(message: ParsedMessage) -> str:
    for header in ("x-twilio-messagesid", "x-twilio-callsid"):
        value = message.header(header)
        if value:
            return value
    return f"<{message.message_id}>" if message.message_id else f"spool {message.spool_id}"


def _request_text(message: ParsedMessage) -> str:
    return (message.subject + "\n" + message.text).strip()[:2000]


def _contact(customer: Customer) -> str:
    name = customer.contact_name or ""
    address = customer.contact_email or ""
    return f"{name} <{address}>" if name and address else (name or address or customer.account_id)


def hold_time(minutes: int) -> str:
    """Minutes in words for a customer: "4 hours", "90 minutes", "1 hour"."""
    if minutes % 60 == 0:
        hours = minutes // 60
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{minutes} minutes"


def prepaid_note(left: int, price: Quote) -> str:
    """What a request to confirm the charge says of the account's prepaid incidents: a unit
    pays for the incident instead of its price while one is left (the ledger's rule,
    gateway/emergency/ledger.py), never for the after-hours surcharge."""
    if left <= 0:
        return "none left"
    note = f"{left} incident{'s' if left != 1 else ''} left: one would pay this incident's price"
    if price.applied_surcharge_minor:
        surcharge = money(price.applied_surcharge_minor, price.currency)
        return f"{note}; the {surcharge} after-hours surcharge is still charged"
    return f"{note}, so nothing more is charged"


def prompt_values(step: EmergencyStep, config: EmergencyFile) -> tuple[tuple[str, str], ...]:
    """Template values of the "confirm the charge" request."""
    price = step.quote
    assert price is not None
    if step.code == "unauthenticated":
        why = (
            "We ask because we could not verify that your message came from your mailbox: your "
            "reply to this email is what confirms it was you."
        )
    else:
        why = "We ask because your message did not include the acknowledgement of the charge."
    return (
        ("price", money(price.price_minor, price.currency)),
        ("after_hours_rule", price.after_hours_rule),
        ("quoted_total", price.total()),
        ("after_hours_now", "after hours" if price.after_hours else "within business hours"),
        ("terms_version", price.terms_version),
        ("confirmation_word", config.confirmation_word),
        ("hold_time", hold_time(config.hold_timeout_minutes)),
        ("why_confirm", why),
        # What the ledger says replaces this when the request is written (emergency.holds.apply).
        ("prepaid", prepaid_note(0, price)),
    )
