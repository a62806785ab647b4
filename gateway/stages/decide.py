"""Stage 6: the policy decision — what happens to this message, at which severity, in which queue.

Owns the plug-in interface `decide(message, customer, verdict, thread, automated, now, policy) ->
Decision`. Outcomes are typed verbs (DESIGN "The one path"): `Accept` (ticket or follow-up),
`Reject` (reply, no ticket), `Hold` (the message's emergency request awaits the contact's
acknowledgement: the ticket goes on at its own place, marked "emergency pending"), `Discard`
(recorded, unanswered). `Defer` is not decided here: it is what the worker does when storage is
down. Pure: never touches storage or the network. `decide` reads as its steps: the earlier stages'
findings; machines are discarded (`_automated`); emergency support is asked once, for the whole of
its answer (`gateway/emergency/rules.py: emergency_step`) — a reply confirming a held request is
released first of all (`_released`, so an SMS YES answering our prompt is not START); SMS
keywords; the plan's channel entitlement, reject (`_unentitled`) or downgrade, and its queue-jump
right (`_entitlement`); what emergency support said, an acknowledged emergency at the top level
(`_emergency_level`); routing, its severity floor capped at the plan's ceiling (`_routing`); the
SLA targets and due times of the final severity (`_sla`); the acknowledgement
with the level's action text, or instead emergency support's one message, and the staff
notifications (`_replies`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from classifiers.types import Verdict
from gateway.config.gateway_schema import AutomatedSection
from gateway.config.schema import EmergencyFile, Plan, SeverityFile
from gateway.emergency.rules import (
    EmergencyDecision,
    EmergencyReply,
    EmergencyStep,
    emergency_step,
)
from gateway.message import Automated, Customer, ParsedMessage, Thread
from gateway.policy.calendars import Calendar
from gateway.policy.plans import (
    DueTimes,
    Entitlement,
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
    # Routing, SLA and notifications apply to the ticket: a new one, or a follow-up that raises
    # its severity (persist applies them; `_applies`, issue 18 item 1). Off unless decided: a
    # decision that forgets it never re-routes a follow-up. (An acknowledged emergency is routed
    # by gateway/emergency/holds.py whatever this says.)
    applies_routing: bool = False


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
    reasons = _identified(message, customer, thread, verdict)
    if automated.is_automated:
        return _automated(automated, verdict, policy, reasons)
    plan = policy.plans.get(customer.plan)
    entitlement = check_channel_entitlement(customer, message.channel, policy.plans)
    emergency = emergency_step(
        message,
        customer,
        plan,
        entitlement.entitled,
        verdict.severity,
        thread,
        policy.emergency,
        policy.calendars,
        policy.severity.levels,
        now,
    )
    if emergency.confirmed:
        return _released(message, customer, verdict, thread, now, policy, reasons, emergency)
    keyword = sms_keyword(message.text) if message.channel == "twilio-sms" else None
    if keyword is not None:
        return _sms_keyword_decision(keyword, message, verdict, policy, reasons)
    reasons.append(Reason("entitlement", entitlement.action, entitlement.reason))
    if not entitlement.entitled and entitlement.action == "reject":
        return _unentitled(message, verdict, entitlement, policy, reasons)
    level = _entitlement(verdict, plan, entitlement, policy.severity, reasons)
    level = _emergency_level(level, emergency, plan, policy.severity.levels, reasons)
    route, level = _routing(message, customer, verdict, now, policy, level, emergency, reasons)
    sla, due = _sla(customer, policy, level.severity, emergency, now, reasons)
    applies = _applies(thread, level.severity, emergency, route, policy.severity.levels, reasons)
    return Decision(
        outcome=Hold(emergency.hold_reason) if emergency.held else Accept(thread.reason),
        severity=level.severity,
        jump_queue=level.jump,
        queue=route.queue,
        holds=("awaiting-acknowledgement",) if emergency.held else (),
        billing_intents=("incident",) if emergency.billed else (),
        replies=_replies(emergency, sla, thread, route, applies),
        reasons=tuple(reasons),
        sla=sla,
        first_response_due=due.first_response,
        resolution_due=due.resolution,
        route=route,
        emergency=emergency.top_level,
        emergency_step=emergency.step,
        hold_deadline=emergency.hold_deadline,
        applies_routing=applies,
    )


@dataclass(frozen=True)
class _Level:
    """Where a message stands as decide goes: its severity, its queue jump, the plan's cap."""

    severity: str
    jump: bool
    ceiling: str


def _identified(
    message: ParsedMessage, customer: Customer, thread: Thread, verdict: Verdict
) -> list[Reason]:
    """The earlier stages' findings, recorded first."""
    classified = verdict.explain()
    if message.gateway_text:
        classified = (
            f"not classified: {message.gateway_text}, not the sender's words; the default "
            f"level {verdict.severity}"
        )
    return [
        Reason("identify", customer.matched_by, _who(customer)),
        Reason("thread", thread.kind, thread.reason),
        Reason("classify", verdict.severity, classified),
    ]


def _applies(
    thread: Thread,
    severity: str,
    emergency: EmergencyDecision,
    route: Route,
    levels: tuple[str, ...],
    reasons: list[Reason],
) -> bool:
    """Do this message's routing, SLA and notifications apply to its ticket? To a new ticket,
    always. To a follow-up, when it raises the ticket's severity (or makes it an acknowledged
    emergency): they are decided again and applied, never silently lost (issue 18 item 1). A
    follow-up that does not raise it changes none of them, and the trail says so: only an agent
    lowers a ticket, with a reason."""
    ticket = thread.ticket
    if thread.kind in ("new", "new-linked") or ticket is None:
        return True
    if emergency.billed or severity_rank(levels, severity) < severity_rank(levels, ticket.severity):
        reasons.append(
            Reason(
                "route",
                "raised",
                f"this message raises {ticket.reference} from {ticket.severity} to {severity}: "
                f"routing {route.rule or 'default'} (queue {route.queue}), the SLA above and "
                "its notifications apply to the ticket; a due time only ever moves earlier",
            )
        )
        return True
    reasons.append(
        Reason(
            "route",
            "kept",
            f"{ticket.reference} keeps its severity {ticket.severity}, queue "
            f"{ticket.queue or '?'} (routing {ticket.routing_rule or 'default'}) and its SLA: "
            f"this message ({severity}) does not raise it, so the route and SLA above are not "
            "applied",
        )
    )
    return False


def _automated(
    automated: Automated, verdict: Verdict, policy: Policy, reasons: list[Reason]
) -> Decision:
    """Machines are discarded (or ticketed unanswered, for upstream spam when configured)."""
    reasons.append(Reason("automated", automated.kind, automated.reason))
    outcome: Outcome
    if automated.kind == "spam" and policy.automated.spam == "ticket":
        outcome = Accept("upstream spam verdict, ticketed without acknowledgement by config")
    else:
        outcome = Discard(f"automated mail ({automated.kind}): {automated.reason}")
    return Decision(
        outcome, verdict.severity, False, policy.default_queue, (), (), (), tuple(reasons)
    )


def _unentitled(
    message: ParsedMessage,
    verdict: Verdict,
    entitlement: Entitlement,
    policy: Policy,
    reasons: list[Reason],
) -> Decision:
    """The plan does not include this channel and says reject: one polite reply, no ticket."""
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
        verdict.severity,
        False,
        policy.default_queue,
        (),
        (),
        # A caller already heard the plan's channels on the call; a text would repeat it.
        () if channel_kind(message.channel) == "voice" else (reply,),
        tuple(reasons),
    )


def _entitlement(
    verdict: Verdict,
    plan: Plan,
    entitlement: Entitlement,
    severity_file: SeverityFile,
    reasons: list[Reason],
) -> _Level:
    """The plan's channel entitlement (a downgrade caps the severity) and queue-jump right."""
    levels = severity_file.levels
    level = _Level(verdict.severity, verdict.jump_queue, plan.ceiling)
    if not entitlement.entitled:
        # Downgrade: "a normal ticket with a note" — and no routing floor lifts it again.
        ceiling = severity_file.default
        severity = level.severity
        if severity_rank(levels, severity) < severity_rank(levels, ceiling):
            severity = ceiling
        level = _Level(severity, False, ceiling)
    if level.jump and not plan.jump_queue:
        reasons.append(Reason("plan", "no-jump", f"plan {plan.name} does not jump the queue"))
        level = replace(level, jump=False)
    return level


def _emergency_level(
    level: _Level,
    emergency: EmergencyDecision,
    plan: Plan,
    levels: tuple[str, ...],
    reasons: list[Reason],
) -> _Level:
    """What emergency support said is recorded; an acknowledged emergency (or part of one) goes
    to the top level with the queue jump the plan allows."""
    reasons.extend(Reason(n.stage, n.code, n.text) for n in emergency.notes)
    if not emergency.top_level:
        return level
    return replace(level, severity=levels[0] if levels else level.severity, jump=plan.jump_queue)


def _routing(
    message: ParsedMessage,
    customer: Customer,
    verdict: Verdict,
    now: datetime,
    policy: Policy,
    level: _Level,
    emergency: EmergencyDecision,
    reasons: list[Reason],
) -> tuple[Route, _Level]:
    """The routing rule: queue, tags, notifications, and a severity floor capped at the
    ceiling."""
    levels = policy.severity.levels
    severity, ceiling = level.severity, level.ceiling
    facts = _facts(message, customer, severity, level.jump, verdict, now, emergency.top_level)
    route = route_message(policy.router, facts)
    reasons.append(Reason("route", route.rule or "default", route.reason))
    lifted = cap_lift(levels, severity, route.severity_floor, ceiling)
    if lifted != severity:
        text = f"severity floor {route.severity_floor} lifts {severity} to {lifted}"
        reasons.append(Reason("route", "floor", f"{text} (ceiling {ceiling or 'none'})"))
        return route, replace(level, severity=lifted)
    floor = route.severity_floor
    if floor and severity_rank(levels, floor) < severity_rank(levels, severity):
        text = f"severity floor {route.severity_floor} not applied above the ceiling {ceiling}"
        reasons.append(Reason("route", "ceiling", text))
    return route, level


def _sla(
    customer: Customer,
    policy: Policy,
    severity: str,
    emergency: EmergencyDecision,
    now: datetime,
    reasons: list[Reason],
) -> tuple[Sla, DueTimes]:
    """The SLA targets and due times of the final severity on the plan."""
    # An emergency request awaiting confirmation stops no clock: the pending confirmation is
    # a state of the request, and the ticket runs on its own severity meanwhile (issue 17).
    sla = emergency.sla(sla_for(policy.severity, policy.plans, severity, customer.plan))
    due = due_times(sla, policy.calendars, now)
    reasons.append(Reason("sla", severity, _sla_text(sla, due)))
    return sla, due


def _replies(
    emergency: EmergencyDecision, sla: Sla, thread: Thread, route: Route, applies: bool
) -> tuple[Reply, ...]:
    """Emergency support's one message, else a new ticket's acknowledgement; staff
    notifications of the routing rule for a new ticket, or for a follow-up that raised it."""
    replies: list[Reply] = []
    answer = _reply(emergency.reply, sla)
    if answer is not None:
        replies.append(answer)  # instead of the acknowledgement: one message, with the reference
    if thread.kind in ("new", "new-linked") and answer is None:
        replies.append(
            Reply(
                "acknowledgement",
                "a new ticket is acknowledged once",
                values=(("action", sla.action),),
            )
        )
    if applies:
        replies.extend(_notify(route))
    return tuple(replies)


def _reply(reply: EmergencyReply | None, sla: Sla) -> Reply | None:
    if reply is None:
        return None
    action = (("action", sla.action),) if reply.with_action else ()
    return Reply(reply.template, reply.reason, to=reply.to, values=(*reply.values, *action))


def _notify(route: Route) -> list[Reply]:
    return [
        Reply("notify", f"routing rule {route.rule} notifies {a}", to=a, internal=True)
        for a in route.notify
    ]


def _released(
    message: ParsedMessage,
    customer: Customer,
    verdict: Verdict,
    thread: Thread,
    now: datetime,
    policy: Policy,
    reasons: list[Reason],
    emergency: EmergencyDecision,
) -> Decision:
    """A reply that confirms a held request: the ticket is released as an acknowledged
    emergency at the top level, routed as one, its SLA clock starting now."""
    levels = policy.severity.levels
    severity = levels[0] if levels else verdict.severity
    plan = policy.plans.get(customer.plan)
    reasons.extend(Reason(n.stage, n.code, n.text) for n in emergency.notes)
    route = route_message(
        policy.router, _facts(message, customer, severity, plan.jump_queue, verdict, now, True)
    )
    reasons.append(Reason("route", route.rule or "default", route.reason))
    sla = emergency.sla(sla_for(policy.severity, policy.plans, severity, customer.plan))
    due = due_times(sla, policy.calendars, now)
    reasons.append(Reason("sla", severity, _sla_text(sla, due) + ", from the release"))
    answer = _reply(emergency.reply, sla)
    return Decision(
        outcome=Accept(thread.reason),
        severity=severity,
        jump_queue=plan.jump_queue,
        queue=route.queue,
        holds=(),
        billing_intents=("incident",),
        replies=(*((answer,) if answer else ()), *_notify(route)),
        reasons=tuple(reasons),
        sla=sla,
        first_response_due=due.first_response,
        resolution_due=due.resolution,
        route=route,
        emergency=True,
        emergency_step=emergency.step,
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


def severity_rank(levels: tuple[str, ...], level: str) -> int:
    """A level's rank, most severe 0; a level no longer configured ranks below them all (the
    rank stored on a ticket, and what a follow-up is compared by)."""
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
