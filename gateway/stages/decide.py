"""Stage 6: the policy decision — what happens to this message, at which severity, in which queue.

Owns the plug-in interface `decide(message, customer, verdict, thread, automated, now, policy)
-> Decision`. Outcomes are typed verbs (DESIGN "The one path"): `Accept` (ticket or follow-up),
`Reject` (reply, no ticket), `Hold` (ticket held for review/acknowledgement), `Discard` (recorded,
unanswered). `Defer` is not decided here: it is what the worker does when storage is down.
Pure: never touches storage or the network. In order: machines are discarded; the plan's
channel entitlement (reject or downgrade); the plan's queue-jump right; routing (queue, tags,
severity floor capped at the plan's ceiling, notifications); the SLA targets and due times of the
final severity on the plan; the acknowledgement with the level's action text. Emergency support
(gateway/emergency/rules.py) is applied between the queue-jump right and routing: a reply
confirming a
held request is recognised first of all (so an SMS YES answering our prompt is not START); an
unavailable request gets one polite reply instead of the acknowledgement; a held one is a `Hold`
with no SLA clock yet and one "confirm the charge" request; an acknowledged one is an emergency
at the top level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from classifiers.types import Verdict
from gateway.config.schema import AutomatedSection, EmergencyFile, SeverityFile
from gateway.emergency import rules as emergency_rules
from gateway.emergency.rules import EmergencyStep
from gateway.message import Automated, Customer, ParsedMessage, Thread
from gateway.policy.calendars import Calendar
from gateway.policy.plans import (
    DueTimes,
    Plans,
    Sla,
    cap_lift,
    channel_kind,
    check_channel_entitlement,
    due_times,
    sla_for,
)
from gateway.policy.routing import Route, Router, RoutingFacts
from gateway.policy.routing import route as route_message
from gateway.policy.sms import sms_keyword


@dataclass(frozen=True)
class Accept:
    reason: str


@dataclass(frozen=True)
class Reject:
    reason: str


@dataclass(frozen=True)
class Hold:
    reason: str


@dataclass(frozen=True)
class Discard:
    reason: str


@dataclass(frozen=True)
class Defer:
    reason: str
    retry_seconds: float


Outcome = Accept | Reject | Hold | Discard


@dataclass(frozen=True)
class Reply:
    """A message to send through the outbox gate: to the sender, or to staff (`internal`)."""

    template: str  # name under templates/, e.g. "acknowledgement"
    reason: str
    # None: the sender. Internal notifications (routing's notify) name their address.
    to: str | None = None
    internal: bool = False
    # Extra template values, e.g. (("included", "email"),).
    values: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Reason:
    """One recorded decision: which stage decided what, and why (DESIGN promise 4)."""

    stage: str
    code: str
    text: str


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    severity: str
    jump_queue: bool
    queue: str
    holds: tuple[str, ...]
    billing_intents: tuple[str, ...]
    replies: tuple[Reply, ...]
    reasons: tuple[Reason, ...]
    # Fields below are only ever added (the ticket JSON and the API read them).
    emergency: bool = False
    sla: Sla | None = None
    first_response_due: datetime | None = None
    resolution_due: datetime | None = None
    route: Route | None = None
    # Twilio SMS keywords: "out" (STOP) or "in" (START) — persist records the opt-out.
    sms_opt: str = ""
    # What emergency support made of the message (gateway/emergency/rules.py); persist opens the
    # hold, the incident or the link it says.
    emergency_step: EmergencyStep | None = None
    # When a held request is released at its classified severity if nobody confirms it.
    hold_deadline: datetime | None = None


@dataclass(frozen=True)
class Policy:
    """What `decide` needs from the config, as one value swapped on reload."""

    default_queue: str
    automated: AutomatedSection
    plans: Plans
    severity: SeverityFile
    calendars: Mapping[str, Calendar]
    router: Router
    emergency: EmergencyFile = field(default_factory=EmergencyFile)


def decide(
    message: ParsedMessage,
    customer: Customer,
    verdict: Verdict,
    thread: Thread,
    automated: Automated,
    now: datetime,
    policy: Policy,
) -> Decision:
    reasons = [
        Reason("identify", customer.matched_by, _who(customer)),
        Reason("thread", thread.kind, thread.reason),
        Reason("classify", verdict.severity, verdict.explain()),
    ]
    levels = policy.severity.levels
    if automated.is_automated:
        reasons.append(Reason("automated", automated.kind, automated.reason))
        outcome: Outcome
        if automated.kind == "spam" and policy.automated.spam == "ticket":
            outcome = Accept("upstream spam verdict, ticketed without acknowledgement by config")
        else:
            outcome = Discard(f"automated mail ({automated.kind}): {automated.reason}")
        return Decision(
            outcome, verdict.severity, False, policy.default_queue, (), (), (), tuple(reasons)
        )

    # A reply confirming a held emergency request comes first: an SMS "YES" answering our
    # prompt is a confirmation, not Twilio's opt-in keyword START.
    confirm = emergency_rules.confirmation(message, thread, policy.emergency)
    if confirm is not None and confirm.outcome == "confirmed":
        return _confirmed(message, customer, verdict, thread, now, policy, reasons, confirm)
    if message.channel == "twilio-sms":
        keyword = sms_keyword(message.text)
        if keyword is not None:
            return _sms_keyword_decision(keyword, message, verdict, policy, reasons)
    plan = policy.plans.get(customer.plan)
    entitlement = check_channel_entitlement(customer, message.channel, policy.plans)
    reasons.append(Reason("entitlement", entitlement.action, entitlement.reason))
    severity = verdict.severity
    jump = verdict.jump_queue
    if not entitlement.entitled and entitlement.action == "reject":
        reply = Reply(
            "unentitled",
            "the plan does not include this channel: one polite reply naming those it does",
            values=(
                ("channel", entitlement.channel),
                ("included", ", ".join(entitlement.included)),
            ),
        )
        return Decision(
            Reject(entitlement.reason),
            severity,
            False,
            policy.default_queue,
            (),
            (),
            # A caller already heard the plan's channels on the call; a text would repeat it.
            () if channel_kind(message.channel) == "voice" else (reply,),
            tuple(reasons),
        )
    ceiling = plan.ceiling
    if not entitlement.entitled:
        # Downgrade: "a normal ticket with a note" — and no routing floor lifts it again.
        ceiling = policy.severity.default
        if _rank(levels, severity) < _rank(levels, ceiling):
            severity = ceiling
        jump = False
    if jump and not plan.jump_queue:
        jump = False
        reasons.append(Reason("plan", "no-jump", f"plan {plan.name} does not jump the queue"))

    if message.header("x-twilio-event") == "gather":
        _keypress(message, customer, entitlement.entitled, plan.emergency, reasons)
    step = emergency_rules.evaluate(
        message,
        customer,
        plan,
        entitlement.entitled,
        verdict.severity,
        thread,
        policy.emergency,
        policy.calendars,
        levels,
    )
    if step is None:
        step = confirm  # a message on a held ticket that does not confirm it: say so
    emergency = False
    if step is not None:
        reasons.append(Reason("emergency", step.code, step.reason))
        linked_to_emergency = (
            step.outcome == "linked"
            and thread.ticket is not None
            and thread.ticket.emergency_acknowledged
        )
        if step.outcome == "accepted" or linked_to_emergency:
            # An acknowledged emergency (or part of one): the top level, and the queue jump the
            # plan allows; the queue puts acknowledged emergencies first of all.
            emergency = True
            severity = levels[0] if levels else severity
            jump = plan.jump_queue
        if step.review and step.outcome == "accepted":
            reasons.append(Reason("emergency", "review", step.review))
    route = route_message(
        policy.router, _facts(message, customer, severity, jump, verdict, now, emergency)
    )
    reasons.append(Reason("route", route.rule or "default", route.reason))
    lifted = cap_lift(levels, severity, route.severity_floor, ceiling)
    if lifted != severity:
        text = f"severity floor {route.severity_floor} lifts {severity} to {lifted}"
        reasons.append(Reason("route", "floor", f"{text} (ceiling {ceiling or 'none'})"))
        severity = lifted
    elif route.severity_floor and _rank(levels, route.severity_floor) < _rank(levels, severity):
        text = f"severity floor {route.severity_floor} not applied above the ceiling {ceiling}"
        reasons.append(Reason("route", "ceiling", text))

    sla = sla_for(policy.severity, policy.plans, severity, customer.plan)
    if step is not None and step.outcome == "accepted":
        sla = emergency_rules.response_sla(sla, policy.emergency)
    due = due_times(sla, policy.calendars, now)
    held = step is not None and step.outcome == "held"
    if held:
        # The SLA clock does not run while the customer has not acknowledged the charge: due
        # times are set when the hold is released (confirmation or timeout).
        due = DueTimes(None, None)
        reasons.append(Reason("sla", severity, _sla_text(sla, due) + " until the hold ends"))
    else:
        reasons.append(Reason("sla", severity, _sla_text(sla, due)))

    replies: list[Reply] = []
    answer = _emergency_reply(step, customer, sla, policy.emergency)
    if answer is not None:
        replies.append(answer)  # instead of the acknowledgement: one message, with the reference
    if thread.kind in ("new", "new-linked"):
        if answer is None:
            replies.append(
                Reply(
                    "acknowledgement",
                    "a new ticket is acknowledged once",
                    values=(("action", sla.action),),
                )
            )
        for address in route.notify:
            replies.append(
                Reply(
                    "notify",
                    f"routing rule {route.rule} notifies {address}",
                    to=address,
                    internal=True,
                )
            )
    return Decision(
        outcome=Hold(f"{emergency_rules.HOLD_REASON}: {step.reason}")
        if held and step is not None
        else Accept(thread.reason),
        severity=severity,
        jump_queue=jump,
        queue=route.queue,
        holds=("awaiting-acknowledgement",) if held else (),
        billing_intents=("incident",) if step is not None and step.acknowledged else (),
        replies=tuple(replies),
        reasons=tuple(reasons),
        sla=sla,
        first_response_due=due.first_response,
        resolution_due=due.resolution,
        route=route,
        emergency=emergency,
        emergency_step=step,
        hold_deadline=now + timedelta(minutes=policy.emergency.hold_timeout_minutes)
        if held
        else None,
    )


def _emergency_reply(
    step: EmergencyStep | None, customer: Customer, sla: Sla, config: EmergencyFile
) -> Reply | None:
    """The one message an emergency request gets: why not, the charge to confirm, or that it
    is accepted (persist adds the incident and how it is billed)."""
    if step is None:
        return None
    if step.outcome == "unavailable":
        return Reply(
            "emergency-unavailable",
            "an emergency that cannot be accepted gets one polite reply saying why",
            values=(("reason", step.reason), ("help", step.help), ("action", sla.action)),
        )
    if step.outcome == "held":
        return Reply(
            "confirm-charge",
            "a held emergency request gets exactly one confirmation request, to the contact",
            # To the contact's own mailbox, never to an address the message merely claims.
            to=customer.contact_email if _by_email(step) else None,
            values=emergency_rules.prompt_values(step, config),
        )
    if step.outcome == "accepted":
        return Reply("emergency-accepted", "an acknowledged emergency is confirmed once")
    return None


def _by_email(step: EmergencyStep) -> bool:
    return step.evidence is not None and step.evidence.channel == "email"


def _confirmed(
    message: ParsedMessage,
    customer: Customer,
    verdict: Verdict,
    thread: Thread,
    now: datetime,
    policy: Policy,
    reasons: list[Reason],
    step: EmergencyStep,
) -> Decision:
    """A reply that confirms a held request: the ticket is released as an acknowledged
    emergency at the top level, routed as one, its SLA clock starting now."""
    levels = policy.severity.levels
    severity = levels[0] if levels else verdict.severity
    plan = policy.plans.get(customer.plan)
    reasons.append(Reason("emergency", step.code, step.reason))
    route = route_message(
        policy.router, _facts(message, customer, severity, plan.jump_queue, verdict, now, True)
    )
    reasons.append(Reason("route", route.rule or "default", route.reason))
    sla = emergency_rules.response_sla(
        sla_for(policy.severity, policy.plans, severity, customer.plan), policy.emergency
    )
    due = due_times(sla, policy.calendars, now)
    reasons.append(Reason("sla", severity, _sla_text(sla, due) + ", from the release"))
    replies = [Reply("emergency-accepted", "a confirmed emergency is confirmed once")]
    replies.extend(
        Reply("notify", f"routing rule {route.rule} notifies {a}", to=a, internal=True)
        for a in route.notify
    )
    return Decision(
        outcome=Accept(thread.reason),
        severity=severity,
        jump_queue=plan.jump_queue,
        queue=route.queue,
        holds=(),
        billing_intents=("incident",),
        replies=tuple(replies),
        reasons=tuple(reasons),
        sla=sla,
        first_response_due=due.first_response,
        resolution_due=due.resolution,
        route=route,
        emergency=True,
        emergency_step=step,
    )


def _facts(
    message: ParsedMessage,
    customer: Customer,
    severity: str,
    jump: bool,
    verdict: Verdict,
    now: datetime,
    emergency: bool = False,
) -> RoutingFacts:
    return RoutingFacts(
        channel=channel_kind(message.channel),
        account_id=customer.account_id,
        plan=customer.plan,
        sender=message.sender,
        recipients=message.recipients,
        severity=severity,
        jump_queue=jump,
        emergency=emergency,
        hits=tuple(h.name for h in verdict.hits),
        text=(message.subject + "\n" + message.text[:8192]),
        at=now,
    )


def _sms_keyword_decision(
    keyword: str, message: ParsedMessage, verdict: Verdict, policy: Policy, reasons: list[Reason]
) -> Decision:
    """STOP/START are recorded (persist keeps the opt-out), never ticketed; Twilio itself
    confirms them to the phone. HELP is answered once with the help text, through the gate."""
    texts = {
        "STOP": f"{message.sender} opted out of SMS: nothing more is sent to it until START",
        "START": f"{message.sender} opted back in to SMS",
        "HELP": f"{message.sender} asked for help: one reply with the help text",
    }
    reasons.append(Reason("policy", f"sms-{keyword.lower()}", texts[keyword]))
    replies = (Reply("help", "the SMS keyword HELP is answered"),) if keyword == "HELP" else ()
    return Decision(
        Discard(texts[keyword]),
        verdict.severity,
        False,
        policy.default_queue,
        (),
        (),
        replies,
        tuple(reasons),
        sms_opt={"STOP": "out", "START": "in"}.get(keyword, ""),
    )


def _keypress(
    message: ParsedMessage,
    customer: Customer,
    entitled: bool,
    plan_emergency: bool,
    reasons: list[Reason],
) -> None:
    """Record the caller's choice with its evidence (what makes it an emergency, or not, is
    gateway/emergency/rules.py's rule)."""
    digit = message.header("x-twilio-digits") or ""
    call = message.header("x-twilio-callsid") or "?"
    at = message.received_at.isoformat().replace("+00:00", "Z")
    evidence = (
        f"caller {message.sender} pressed {digit or 'nothing'} on call {call} at {at}, after "
        "hearing that emergency support is billed per incident at the rate in the agreement"
    )
    authorised = "authorised" if customer.emergency_authorised else "NOT authorised"
    if digit != "1":
        reasons.append(Reason("policy", "normal-keypress", evidence + "; normal priority"))
        return
    if not (entitled and plan_emergency):
        reasons.append(
            Reason("policy", "emergency-unavailable", evidence + "; the plan has no emergency")
        )
        return
    reasons.append(
        Reason(
            "policy",
            "emergency-keypress",
            f"{evidence}; contact {authorised} for emergencies",
        )
    )


def _rank(levels: tuple[str, ...], level: str) -> int:
    return levels.index(level) if level in levels else len(levels)


def _sla_text(sla: Sla, due: DueTimes) -> str:
    def fmt(minutes: int | None, when: datetime | None) -> str:
        if minutes is None or when is None:
            return "none"
        return f"{minutes} min (due {when.isoformat().replace('+00:00', 'Z')})"

    first = fmt(sla.first_response_minutes, due.first_response)
    resolution = fmt(sla.resolution_minutes, due.resolution)
    return f"on calendar {sla.calendar}: first response {first}, resolution {resolution}"


def _who(customer: Customer) -> str:
    if not customer.known:
        return f"unknown sender, plan {customer.plan}"
    return f"account {customer.account_id} by {customer.matched_by}, plan {customer.plan}"
