"""Forwarding's I/O: journalled ticket changes become deliveries, and deliveries are POSTed.

Owns fan-out (journal rows -> one delivery per matching webhook, under the unique idempotency
key, in one transaction with deleting the journal rows), claiming (a lease; `FOR UPDATE SKIP
LOCKED` on PostgreSQL so two instances never send one delivery at once; the deliveries of one
ticket to one webhook go out in order), the signed POST (httpx; redirects are not followed: a
signed ticket is never re-sent to a host nobody configured), the outcome (2xx: delivered and
the stored body dropped; anything else: retried with backoff; after `max_attempts`: a dead
letter) and the admin's view and retry of dead letters. See gateway/outbound/forwarding.py for
why this is at least once for every change. Runs in worker 0's forwarding thread
(gateway/service/worker.py).

Must never: hold a database transaction open across a network call, send a delivery without
its signature, or log a secret or a body (bodies carry customer text).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import delete, exists, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased, sessionmaker

from gateway import clock as business_clock
from gateway.config.loader import secret
from gateway.config.schema import ForwardingFile, ForwardWebhook
from gateway.outbound import forwarding
from gateway.storage.forwarding_tables import CREATED, UPDATED, ForwardChange, ForwardDelivery
from gateway.storage.models import Ticket
from gateway.storage.queries import as_utc
from gateway.ticket_json import ticket_json

log = logging.getLogger(__name__)

PENDING, SENDING, DELIVERED, DEAD = "pending", "sending", "delivered", "dead"
STATUSES = (PENDING, SENDING, DELIVERED, DEAD)
# Journal rows taken per fan-out transaction, deliveries per claim.
FAN_OUT_LIMIT = 200
CLAIM_LIMIT = 10
# A claim's lease covers every POST of the batch at its timeout, plus this margin; a sender
# that dies mid-batch leaves its deliveries to be sent again once the lease has run out.
LEASE_MARGIN = timedelta(seconds=60)

Clock = Callable[[], datetime]



@dataclass(frozen=True)
class Attempt:
    """What one POST came to: delivered, or why not (status None: no HTTP answer at all)."""

    ok: bool
    status: int | None
    error: str


@dataclass(frozen=True)
class DeliveryView:
    """A delivery as the API shows it (never its body)."""

    id: int
    webhook: str
    reference: str
    event: str
    idempotency_key: str
    status: str
    attempts: int
    last_status: int | None
    last_error: str
    created_at: datetime
    last_attempt_at: datetime | None
    next_attempt_at: datetime


# ---- fan-out ------------------------------------------------------------------------------


def fan_out(
    sessions: sessionmaker[Session],
    webhooks: Sequence[ForwardWebhook],
    now: datetime,
    limit: int = FAN_OUT_LIMIT,
) -> int:
    """Turn up to `limit` journal rows into deliveries; return how many rows were consumed.

    The changes of one ticket taken together become one delivery per webhook (its body is the
    ticket as it is now, so two quick changes need not be sent twice); the key names the last
    change. With no webhook configured the rows are simply consumed."""
    with sessions.begin() as session:
        changes = list(
            session.execute(
                select(ForwardChange)
                .order_by(ForwardChange.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).scalars()
        )
        if not changes:
            return 0
        if not webhooks:  # nobody to tell: consumed without reading a ticket (issue 20)
            session.execute(
                delete(ForwardChange).where(ForwardChange.id.in_([c.id for c in changes])))
            return len(changes)
        by_ticket: dict[int, list[ForwardChange]] = {}
        for change in changes:
            by_ticket.setdefault(change.ticket_id, []).append(change)
        rows: list[dict[str, Any]] = []
        for ticket_id, group in by_ticket.items():
            ticket = session.get(Ticket, ticket_id)
            if ticket is None:
                continue
            event = CREATED if any(c.event == CREATED for c in group) else UPDATED
            hooks = [h for h in webhooks if forwarding.wants(h, ticket.queue, event)]
            if not hooks:
                continue
            last = group[-1]
            reference = ticket.reference or f"id-{ticket.id}"
            snapshot = ticket_json(session, ticket, detail=True)
            for hook in hooks:
                key = forwarding.idempotency_key(hook.name, reference, last.id)
                rows.append(
                    {
                        "webhook": hook.name,
                        "ticket_id": ticket.id,
                        "reference": reference,
                        "event": event,
                        "idempotency_key": key,
                        "change_id": last.id,
                        "body": forwarding.body(
                            event=event,
                            key=key,
                            webhook=hook.name,
                            change_id=last.id,
                            occurred_at=as_utc(last.at) or now,
                            ticket=snapshot,
                        ),
                        "status": PENDING,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "last_error": "",
                        "created_at": now,
                    }
                )
        if rows:
            _insert_new(session, rows)
        session.execute(delete(ForwardChange).where(ForwardChange.id.in_([c.id for c in changes])))
        return len(changes)


def _insert_new(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert deliveries, skipping any whose idempotency key exists: the unique key, not luck,
    is what keeps a change from being delivered as two deliveries."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(ForwardDelivery).on_conflict_do_nothing(
            index_elements=["idempotency_key"]
        )
    elif dialect == "sqlite":
        stmt = sqlite.insert(ForwardDelivery).on_conflict_do_nothing(
            index_elements=["idempotency_key"]
        )
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        stmt = insert(ForwardDelivery)
    session.execute(stmt, rows)


# ---- claim and deliver ----------------------------------------------------------------------


def claim(
    sessions: sessionmaker[Session],
    webhooks: Iterable[str],
    instance: str,
    now: datetime,
    lease: timedelta,
    limit: int = CLAIM_LIMIT,
) -> list[int]:
    """Mark up to `limit` due deliveries of the configured webhooks `sending` for `lease`."""
    names = list(webhooks)
    with sessions.begin() as session:
        # Deliveries whose lease ran out were being sent by a process that died: due again.
        session.execute(
            update(ForwardDelivery)
            .where(ForwardDelivery.status == SENDING, ForwardDelivery.claimed_until < now)
            .values(status=PENDING, claimed_by=None, claimed_until=None)
        )
        if not names:
            return []
        earlier = aliased(ForwardDelivery)
        outstanding = (
            exists()
            .where(
                earlier.webhook == ForwardDelivery.webhook,
                earlier.ticket_id == ForwardDelivery.ticket_id,
                earlier.status.in_((PENDING, SENDING)),
                earlier.id < ForwardDelivery.id,
            )
            .correlate(ForwardDelivery)
        )
        ids = list(
            session.execute(
                select(ForwardDelivery.id)
                .where(
                    ForwardDelivery.status == PENDING,
                    ForwardDelivery.next_attempt_at <= now,
                    ForwardDelivery.webhook.in_(names),
                    ~outstanding,
                )
                .order_by(ForwardDelivery.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).scalars()
        )
        if ids:
            session.execute(
                update(ForwardDelivery)
                .where(ForwardDelivery.id.in_(ids))
                .values(status=SENDING, claimed_by=instance, claimed_until=now + lease)
            )
        return ids


def post(client: httpx.Client, hook: ForwardWebhook, row: ForwardDelivery) -> Attempt:
    """One signed POST of `row` to `hook`. Never raises for anything the network does."""
    names = forwarding.secret_name(hook.name)
    key = secret(names.credential, names.env)
    if not key:
        return Attempt(False, None, f"no signing secret (${names.env}): not sent unsigned")
    payload = row.body.encode("utf-8")
    sent_headers = forwarding.headers(
        secret=key,
        timestamp=int(business_clock.wall_seconds()),
        payload=payload,
        event=row.event,
        key=row.idempotency_key,
        attempt=row.attempts + 1,
    )
    try:
        with client.stream(
            "POST", hook.url, content=payload, headers=sent_headers, timeout=hook.timeout_seconds
        ) as response:
            if 200 <= response.status_code < 300:
                return Attempt(True, response.status_code, "")
            # A little of the answer helps the admin; never read an unbounded body.
            text = b""
            for chunk in response.iter_bytes():
                text = chunk[:300]
                break
            return Attempt(
                False,
                response.status_code,
                f"HTTP {response.status_code}: {text.decode('utf-8', 'replace')}".strip(),
            )
    except httpx.TimeoutException as exc:
        return Attempt(False, None, f"timed out after {hook.timeout_seconds:g}s ({exc!r})")
    except httpx.HTTPError as exc:
        return Attempt(False, None, f"{type(exc).__name__}: {exc}")


def _record(
    sessions: sessionmaker[Session],
    row: ForwardDelivery,
    hook: ForwardWebhook,
    attempt: Attempt,
    instance: str,
    now: datetime,
) -> None:
    attempts = row.attempts + 1
    with sessions.begin() as session:
        if attempt.ok:
            # Delivered: the receiver has the body, so we drop our copy of the customer's text.
            session.execute(
                update(ForwardDelivery)
                .where(ForwardDelivery.id == row.id, ForwardDelivery.status != DELIVERED)
                .values(
                    status=DELIVERED,
                    attempts=attempts,
                    body="",
                    delivered_at=now,
                    last_attempt_at=now,
                    last_status=attempt.status,
                    last_error="",
                    claimed_by=None,
                    claimed_until=None,
                )
            )
            return
        dead = attempts >= hook.max_attempts
        delay = forwarding.backoff_seconds(attempts, hook)
        session.execute(
            update(ForwardDelivery)
            .where(
                ForwardDelivery.id == row.id,
                ForwardDelivery.status == SENDING,
                ForwardDelivery.claimed_by == instance,
            )
            .values(
                status=DEAD if dead else PENDING,
                attempts=attempts,
                next_attempt_at=now + timedelta(seconds=delay),
                last_attempt_at=now,
                last_status=attempt.status,
                last_error=attempt.error[:2000],
                claimed_by=None,
                claimed_until=None,
            )
        )
    if dead:
        log.error(
            "forwarding %s: %s is a dead letter after %d attempts: %s",
            hook.name,
            row.idempotency_key,
            attempts,
            attempt.error[:300],
        )
    else:
        log.warning(
            "forwarding %s: attempt %d of %s failed (%s); next in %.1fs",
            hook.name,
            attempts,
            row.idempotency_key,
            attempt.error[:300],
            delay,
        )


def deliver_due(
    sessions: sessionmaker[Session],
    webhooks: Sequence[ForwardWebhook],
    instance: str,
    clock: Clock = business_clock.now,
) -> int:
    """Claim what is due and POST it; return how many attempts were made. `clock` decides what
    is due and when the next attempt is (tests freeze it); signatures use the real time."""
    hooks = {h.name: h for h in webhooks}
    if not hooks:
        return 0
    lease = LEASE_MARGIN + timedelta(
        seconds=CLAIM_LIMIT * max(h.timeout_seconds for h in hooks.values())
    )
    ids = claim(sessions, hooks, instance, clock(), lease)
    if not ids:
        return 0
    with sessions() as session:
        rows = list(
            session.execute(
                select(ForwardDelivery)
                .where(ForwardDelivery.id.in_(ids))
                .order_by(ForwardDelivery.id)
            ).scalars()
        )
    # trust_env: an operator's HTTPS_PROXY / NO_PROXY apply, as for any well-behaved client.
    with httpx.Client(follow_redirects=False) as client:
        for row in rows:
            hook = hooks[row.webhook]
            attempt = post(client, hook, row)
            _record(sessions, row, hook, attempt, instance, clock())
    return len(rows)


def warn_missing_secrets(config: ForwardingFile) -> list[str]:
    """Log, as errors, each webhook whose signing secret is nowhere (worker 0: at start and
    after every reload), so an admin learns of it before its dead letters pile up."""
    try:
        lines = forwarding.missing_secrets(
            config, lambda n: secret(n.credential, n.env) is not None
        )
    except OSError as exc:  # an unreadable credential file: say so, never stop the thread
        lines = [f"forwarding: cannot read a webhook secret: {exc}"]
    for line in lines:
        log.error("%s", line)
    return lines


def run_once(
    sessions: sessionmaker[Session],
    config: ForwardingFile,
    instance: str,
    clock: Clock = business_clock.now,
) -> int:
    """One pass of worker 0's forwarding thread: fan out, then deliver. Returns the work done
    (journal rows consumed + attempts made); 0 means idle. Never raises: a database outage or
    a bug is logged and the next pass tries again."""
    done = 0
    try:
        done += fan_out(sessions, config.webhook, clock())
    except Exception as exc:
        log.warning("forwarding fan-out: %s: %s", type(exc).__name__, exc)
    try:
        done += deliver_due(sessions, config.webhook, instance, clock)
    except Exception as exc:
        log.warning("forwarding sender: %s: %s", type(exc).__name__, exc)
    return done


# ---- reads, the admin's retry, erasure (API, metrics, retention) -----------------------------


def _view(row: ForwardDelivery) -> DeliveryView:
    return DeliveryView(
        id=row.id,
        webhook=row.webhook,
        reference=row.reference,
        event=row.event,
        idempotency_key=row.idempotency_key,
        status=row.status,
        attempts=row.attempts,
        last_status=row.last_status,
        last_error=row.last_error,
        created_at=as_utc(row.created_at) or row.created_at,
        last_attempt_at=as_utc(row.last_attempt_at),
        next_attempt_at=as_utc(row.next_attempt_at) or row.next_attempt_at,
    )


def dead_letters(
    session: Session, *, webhook: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[DeliveryView], int]:
    """Dead letters, oldest first, and how many there are in all."""
    where = [ForwardDelivery.status == DEAD]
    if webhook:
        where.append(ForwardDelivery.webhook == webhook)
    total = session.execute(
        select(func.count()).select_from(ForwardDelivery).where(*where)
    ).scalar_one()
    rows = session.execute(
        select(ForwardDelivery)
        .where(*where)
        .order_by(ForwardDelivery.id)
        .limit(limit)
        .offset(offset)
    ).scalars()
    return [_view(r) for r in rows], int(total)


def get_delivery(session: Session, delivery_id: int) -> DeliveryView | None:
    row = session.get(ForwardDelivery, delivery_id)
    return _view(row) if row is not None else None


def retry_dead_letter(session: Session, delivery_id: int, now: datetime) -> DeliveryView | None:
    """Make a dead letter due again with a fresh count of attempts, in the caller's transaction
    (which also records who asked, in the audit log). None if it is not a dead letter."""
    result = session.execute(
        update(ForwardDelivery)
        .where(ForwardDelivery.id == delivery_id, ForwardDelivery.status == DEAD)
        .values(status=PENDING, attempts=0, next_attempt_at=now)
    )
    if getattr(result, "rowcount", 0) != 1:
        return None
    session.expire_all()
    return get_delivery(session, delivery_id)


def delivery_counts(session: Session) -> list[tuple[str, str, int]]:
    """(webhook, status, number of deliveries) for metrics."""
    rows = session.execute(
        select(ForwardDelivery.webhook, ForwardDelivery.status, func.count()).group_by(
            ForwardDelivery.webhook, ForwardDelivery.status
        )
    )
    return [(str(w), str(s), int(n)) for w, s, n in rows]


def pending_changes(session: Session) -> int:
    """Journal rows not yet fanned out (grows only while worker 0 is not running)."""
    return int(session.execute(select(func.count()).select_from(ForwardChange)).scalar_one())


def erase_undelivered(session: Session, ticket_ids: Collection[int]) -> int:
    """For erasure (`gateway erase`): delete the deliveries of these tickets not yet delivered
    (pending, sending, dead), whose bodies hold the person's data, in the caller's transaction.
    Delivered ones keep no body already. The erasure's own change to each ticket is journalled
    like any other, so its help desk still receives the erased ticket. Returns rows deleted."""
    if not ticket_ids:
        return 0
    result = session.execute(
        delete(ForwardDelivery).where(
            ForwardDelivery.ticket_id.in_(list(ticket_ids)),
            ForwardDelivery.status != DELIVERED,
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
