"""Stage 6: the policy decision — what happens to this message, at which severity, in which queue.

Owns the plug-in interface `decide(message, customer, verdict, thread, automated, now, policy)
-> Decision`. Outcomes are typed verbs (DESIGN "The one path"): `Accept` (ticket or follow-up),
`Reject` (reply, no ticket), `Hold` (ticket held for review/acknowledgement), `Discard` (recorded,
unanswered). `Defer` is not decided here: it is what the worker does when storage is down.
Pure: never touches storage or the network. In order: machines are discarded; the plan's
channel entitlement (reject or downgrade); the plan's queue-jump right; routing (queue, tags,
severity floor capped at the plan's ceiling, notifications); the SLA targets and due times of the
final severity on the plan; the acknowledgement with the level's action text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from classifiers.types import Verdict
from gateway.calendars import Calendar
from gateway.config.schema import AutomatedSection, SeverityFile
from gateway.message import Automated, Customer, ParsedMessage, Thread
from gateway.policy import (
    DueTimes,
    Plans,
    Sla,
    cap_lift,
    channel_kind,
    check_channel_entitlement,
    due_times,
    sla_for,
)
from gateway.routing import Route, Router, RoutingFacts
from gateway.routing import route as route_message


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


@dataclass(frozen=True)
class Policy:
    """What `decide` needs from the config, as one value swapped on reload."""

    default_queue: str
    automated: AutomatedSection
    plans: Plans
    severity: SeverityFile
    calendars: Mapping[str, Calendar]
    router: Router


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
            (reply,),
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

    route = route_message(policy.router, _facts(message, customer, severity, jump, verdict, now))
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
    due = due_times(sla, policy.calendars, now)
    reasons.append(Reason("sla", severity, _sla_text(sla, due)))

    replies: list[Reply] = []
    if thread.kind in ("new", "new-linked"):
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
        outcome=Accept(thread.reason),
        severity=severity,
        jump_queue=jump,
        queue=route.queue,
        holds=(),
        billing_intents=(),
        replies=tuple(replies),
        reasons=tuple(reasons),
        sla=sla,
        first_response_due=due.first_response,
        resolution_due=due.resolution,
        route=route,
    )


def _facts(
    message: ParsedMessage,
    customer: Customer,
    severity: str,
    jump: bool,
    verdict: Verdict,
    now: datetime,
) -> RoutingFacts:
    return RoutingFacts(
        channel=channel_kind(message.channel),
        account_id=customer.account_id,
        plan=customer.plan,
        sender=message.sender,
        recipients=message.recipients,
        severity=severity,
        jump_queue=jump,
        emergency=False,
        hits=tuple(h.name for h in verdict.hits),
        text=(message.subject + "\n" + message.text[:8192]),
        at=now,
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
