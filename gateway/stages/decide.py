"""Stage 6: the policy decision — what happens to this message, at which severity, in which queue.

Owns the plug-in interface `decide(message, customer, verdict, thread, automated, now, policy)
-> Decision`. Outcomes are typed verbs (DESIGN "The one path"): `Accept` (ticket or follow-up),
`Reject` (reply, no ticket), `Hold` (ticket held for review/acknowledgement), `Discard` (recorded,
unanswered). `Defer` is not decided here: it is what the worker does when storage is down.
Pure: never touches storage or the network. The policy issue grows this module; the spine's
version applies the configured defaults and the automated-mail rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from classifiers.types import Verdict
from gateway.config.schema import AutomatedSection
from gateway.message import Automated, Customer, ParsedMessage, Thread


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
    """A message to send the customer through the outbox gate."""

    template: str  # name under templates/, e.g. "acknowledgement"
    reason: str


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


@dataclass(frozen=True)
class Policy:
    """What `decide` needs from the config, as one value swapped on reload."""

    default_queue: str
    automated: AutomatedSection


def decide(
    message: ParsedMessage,
    customer: Customer,
    verdict: Verdict,
    thread: Thread,
    automated: Automated,
    now: datetime,
    policy: Policy,
) -> Decision:
    del now  # SLA clocks and after-hours rules arrive with the policy issue
    reasons = [
        Reason("identify", customer.matched_by, _who(customer)),
        Reason("thread", thread.kind, thread.reason),
        Reason("classify", verdict.severity, verdict.explain()),
    ]
    replies: list[Reply] = []
    outcome: Outcome
    if automated.is_automated:
        reasons.append(Reason("automated", automated.kind, automated.reason))
        if automated.kind == "spam" and policy.automated.spam == "ticket":
            outcome = Accept("upstream spam verdict, ticketed without acknowledgement by config")
        else:
            outcome = Discard(f"automated mail ({automated.kind}): {automated.reason}")
    else:
        outcome = Accept(thread.reason)
        if thread.kind in ("new", "new-linked"):
            replies.append(Reply("acknowledgement", "a new ticket is acknowledged once"))
    return Decision(
        outcome=outcome,
        severity=verdict.severity,
        jump_queue=verdict.jump_queue and not automated.is_automated,
        queue=policy.default_queue,
        holds=(),
        billing_intents=(),
        replies=tuple(replies),
        reasons=tuple(reasons),
    )


def _who(customer: Customer) -> str:
    if not customer.known:
        return f"unknown sender, plan {customer.plan}"
    return f"account {customer.account_id} by {customer.matched_by}, plan {customer.plan}"
