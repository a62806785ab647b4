"""Forwarding's dead letters in the agents' API: list them, and send one again (admin only).

Owns two operations, both under the `admin` scope:
* `GET  /forwarding/dead-letters` — webhook deliveries given up after `max_attempts`, oldest
  first, paginated (`limit`, `offset`), optionally for one `webhook`;
* `POST /forwarding/dead-letters/{delivery_id}/retry` — due again at once with a fresh count of
  attempts; recorded in the audit log (who, which delivery, its state before) in the same
  transaction. 404 for no such delivery, 409 for one that is not a dead letter.
Never shows a delivery's body (it carries customer text) and never sends anything itself: the
sender in worker 0 picks the delivery up (gateway/outbound/forwarding_sender.py).

Mounting (gateway/api/app.py)::

    from gateway.api import forwarding_routes
    app.include_router(forwarding_routes.router, prefix="/api/v1")
    app.state.sessions = sessions          # sessionmaker[Session], read by `get_sessions`
    # (or: app.dependency_overrides[forwarding_routes.get_sessions] = lambda: sessions)
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from gateway import clock as business_clock
from gateway.api.auth import ApiError, Principal, require
from gateway.api.errors import documented_errors
from gateway.outbound import forwarding_sender
from gateway.outbound.forwarding_sender import DeliveryView
from gateway.privacy.audit import Actor, record_action

router = APIRouter(prefix="/forwarding", tags=["forwarding"])


def get_sessions(request: Request) -> sessionmaker[Session]:
    """The app's database sessions (`app.state.sessions`); overridable as a dependency."""
    sessions: sessionmaker[Session] | None = getattr(request.app.state, "sessions", None)
    if sessions is None:  # a wiring bug of the app, not the caller's fault: a 500, logged
        raise RuntimeError("app.state.sessions is not set (see gateway/api/forwarding_routes.py)")
    return sessions


class Delivery(BaseModel):
    """One webhook delivery of one ticket change (its body is never shown)."""

    id: int
    webhook: str = Field(description="The [[webhook]] name in forwarding.toml.")
    reference: str = Field(examples=["T-000123"])
    event: str = Field(description="created or updated.")
    idempotency_key: str = Field(
        description="Sent as Idempotency-Key on every attempt: <webhook>:<reference>:<change>."
    )
    status: str = Field(description="pending, sending, delivered or dead.")
    attempts: int
    last_status: int | None = Field(description="The receiver's HTTP status; null: no answer.")
    last_error: str
    created_at: datetime
    last_attempt_at: datetime | None
    next_attempt_at: datetime

    @classmethod
    def of(cls, view: DeliveryView) -> Delivery:
        return cls(
            id=view.id,
            webhook=view.webhook,
            reference=view.reference,
            event=view.event,
            idempotency_key=view.idempotency_key,
            status=view.status,
            attempts=view.attempts,
            last_status=view.last_status,
            last_error=view.last_error,
            created_at=view.created_at,
            last_attempt_at=view.last_attempt_at,
            next_attempt_at=view.next_attempt_at,
        )


class DeadLetterPage(BaseModel):
    items: list[Delivery]
    total: int = Field(description="Dead letters matching the filter, on every page.")
    limit: int
    offset: int


Sessions = Annotated[sessionmaker[Session], Depends(get_sessions)]
Admin = Annotated[Principal, Depends(require("admin"))]


@router.get(
    "/dead-letters",
    response_model=DeadLetterPage,
    summary="Webhook deliveries given up after max_attempts",
    responses=documented_errors(401, 403, 422),
)
def list_dead_letters(
    _principal: Admin,
    sessions: Sessions,
    webhook: Annotated[str | None, Query(max_length=64, description="Only this webhook.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> DeadLetterPage:
    with sessions() as session:
        views, total = forwarding_sender.dead_letters(
            session, webhook=webhook, limit=limit, offset=offset
        )
    return DeadLetterPage(
        items=[Delivery.of(v) for v in views], total=total, limit=limit, offset=offset
    )


@router.post(
    "/dead-letters/{delivery_id}/retry",
    response_model=Delivery,
    summary="Send a dead letter again (audited)",
    responses=documented_errors(401, 403, 404, 409, 422),
)
def retry_dead_letter(
    principal: Admin,
    sessions: Sessions,
    delivery_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
) -> Delivery:
    now = business_clock.now()
    with sessions.begin() as session:
        before = forwarding_sender.get_delivery(session, delivery_id)
        if before is None:
            raise ApiError(404, "not_found", f"no delivery {delivery_id}")
        after = forwarding_sender.retry_dead_letter(session, delivery_id, now)
        if after is None:
            raise ApiError(
                409, "conflict", f"delivery {delivery_id} is {before.status}, not a dead letter"
            )
        record_action(
            session,
            Actor(principal.name, "api"),
            "forwarding.retry",
            before.idempotency_key,
            at=now,
            before={
                "status": before.status,
                "attempts": before.attempts,
                "last_error": before.last_error[:500],
            },
            after={"status": after.status, "attempts": after.attempts},
        )
    return Delivery.of(after)
