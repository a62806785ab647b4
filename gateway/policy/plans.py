"""The support contract as pure functions: plan order, channel entitlement, SLA targets and
due times, the ceiling on lifts. One place for each of these rules.

Owns: "growth and up" comparisons by plan *order* (never by name); which channels a plan
includes and what an unentitled channel gets; which SLA target applies to a level on a plan
(the plan's override, else the level's); due times on the target's calendar. Never touches
storage or the network: a channel deciding during a live call may call
`check_channel_entitlement` directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal

from gateway.config.schema import LevelDef, Plan, PlansFile, SeverityFile
from gateway.message import Customer
from gateway.policy.calendars import Calendar, add_business_minutes

CHANNEL_KIND = {
    "smtp": "email",
    "lmtp": "email",
    "pipe": "email",
    "imap": "email",
    "twilio-sms": "sms",
    "twilio-voice": "voice",
}


def channel_kind(channel: str) -> str:
    """The contract's name for a transport: smtp, lmtp, pipe and imap are all `email`."""
    return CHANNEL_KIND.get(channel, channel)


@dataclass(frozen=True)
class Plans:
    """The ordered tiers, lowest first, with lookups by name."""

    ordered: tuple[Plan, ...]

    @classmethod
    def build(cls, plans: PlansFile) -> Plans:
        return cls(plans.plan or (Plan(name="none"),))

    def get(self, name: str) -> Plan:
        for plan in self.ordered:
            if plan.name == name:
                return plan
        return self.ordered[0]  # an unknown plan name is treated as the lowest tier

    def rank(self, name: str) -> int:
        for i, plan in enumerate(self.ordered):
            if plan.name == name:
                return i
        return 0

    def at_least(self, name: str, minimum: str) -> bool:
        return self.rank(name) >= self.rank(minimum)


@dataclass(frozen=True)
class Entitlement:
    entitled: bool
    action: Literal["accept", "reject", "downgrade"]
    channel: str
    included: tuple[str, ...]
    reason: str


def check_channel_entitlement(customer: Customer, channel: str, plans: Plans) -> Entitlement:
    """May this customer's plan use this channel, and if not, what happens."""
    plan = plans.get(customer.plan)
    kind = channel_kind(channel)
    if kind in plan.channels:
        return Entitlement(True, "accept", kind, plan.channels, f"plan {plan.name} includes {kind}")
    return Entitlement(
        False,
        plan.unentitled,
        kind,
        plan.channels,
        f"plan {plan.name} does not include {kind} (it includes {', '.join(plan.channels)}); "
        f"{'rejected' if plan.unentitled == 'reject' else 'downgraded to a normal ticket'}",
    )


@dataclass(frozen=True)
class Sla:
    level: str
    calendar: str
    first_response_minutes: int | None
    resolution_minutes: int | None
    action: str


def sla_for(severity: SeverityFile, plans: Plans, level: str, plan_name: str) -> Sla:
    base = severity.level.get(level, LevelDef())
    override = plans.get(plan_name).sla.get(level)
    first = base.first_response_minutes
    resolution = base.resolution_minutes
    calendar = base.calendar
    if override is not None:
        first = override.first_response_minutes or first
        resolution = override.resolution_minutes or resolution
        calendar = override.calendar or calendar
    return Sla(level, calendar, first, resolution, base.action)


@dataclass(frozen=True)
class DueTimes:
    first_response: datetime | None
    resolution: datetime | None


def earlier_due(kept: datetime | None, decided: datetime | None) -> datetime | None:
    """A ticket's due time once a later message decides one again (a raise, an acknowledged
    emergency): due times only ever move earlier, so a clock already running short, or already
    breached, is never reset by it. A stored time without a zone is UTC (SQLite)."""
    if kept is not None and kept.tzinfo is None:
        kept = kept.replace(tzinfo=UTC)
    if kept is None or decided is None:
        return decided if kept is None else kept
    return min(kept, decided)


def due_times(sla: Sla, calendars: Mapping[str, Calendar], start: datetime) -> DueTimes:
    calendar = calendars.get(sla.calendar)
    if calendar is None:
        return DueTimes(None, None)
    return _due_times(calendar, start, sla.first_response_minutes, sla.resolution_minutes)


# Pure, so remembered: a worker's batch is decided at one instant, and its messages share a few
# SLAs, while walking a calendar's open spans cost about half of decide (issue 20 outcome 1).
# Keyed on the calendar's value (a frozen dataclass), so a reloaded calendar is a new key.
@lru_cache(maxsize=1024)
def _due_times(
    calendar: Calendar, start: datetime, first_response: int | None, resolution: int | None
) -> DueTimes:
    return DueTimes(
        add_business_minutes(calendar, start, first_response) if first_response else None,
        add_business_minutes(calendar, start, resolution) if resolution else None,
    )


def cap_lift(levels: tuple[str, ...], current: str, floor: str | None, ceiling: str) -> str:
    """Raise `current` to `floor`, but a lift never goes above the plan's `ceiling`.

    A severity the classifier found in the content is kept even above the ceiling: the
    ceiling bounds what rules and sender-side signals may add, not what the message says.
    """
    if not floor or floor not in levels:
        return current
    rank = {lvl: i for i, lvl in enumerate(levels)}
    target = floor
    if ceiling and ceiling in rank and rank[target] < rank[ceiling]:
        target = ceiling
    return target if rank[target] < rank.get(current, len(levels)) else current
