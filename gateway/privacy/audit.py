"""The audit log: every agent and admin action, appended in the caller's transaction.

Owns the one way an action is recorded (`record_action`) and read back (`audit_entries`). The
row is written in the same transaction as the change it describes, so an action and its audit
entry commit together or not at all. Never updates or deletes a row; never records secrets
(API tokens are named by their configured name, never by value).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.storage.agent_tables import AuditEntry


@dataclass(frozen=True)
class Actor:
    """Who acts: `name` as configured (API token name, or the CLI's user), and through what."""

    name: str
    via: str = "cli"  # cli | api

    @property
    def label(self) -> str:
        return f"{self.via}:{self.name}"


def record_action(
    session: Session,
    actor: Actor,
    action: str,
    target: str,
    *,
    at: datetime,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    reason: str = "",
) -> AuditEntry:
    """Append one audit entry to the caller's transaction (the caller commits)."""
    entry = AuditEntry(
        at=at,
        actor=actor.label,
        action=action,
        target=target,
        before=dict(before or {}),
        after=dict(after or {}),
        reason=reason,
        via=actor.via,
    )
    session.add(entry)
    return entry


def audit_entries(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    target: str | None = None,
    limit: int = 1000,
) -> Sequence[AuditEntry]:
    """Entries oldest first, optionally within [since, until) and for one target."""
    query = select(AuditEntry).order_by(AuditEntry.id)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if until is not None:
        query = query.where(AuditEntry.at < until)
    if target is not None:
        query = query.where(AuditEntry.target == target)
    return session.execute(query.limit(limit)).scalars().all()


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": entry.at.isoformat(),
        "actor": entry.actor,
        "via": entry.via,
        "action": entry.action,
        "target": entry.target,
        "before": entry.before,
        "after": entry.after,
        "reason": entry.reason,
    }
