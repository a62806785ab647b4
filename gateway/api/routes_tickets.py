"""/api/v1/tickets: the queue, a ticket's story, downloads, and the agents' changes.

Owns the HTTP side of working tickets: which scope each operation needs (`read` to look,
`write` to change), how a change's outcome maps to a status code (AdminError `invalid` -> 422,
`conflict` -> 409), and that every change commits in ONE transaction with its audit entry
(actor = the token's name, via = "api"). The rules themselves live in gateway/storage/admin.py,
gateway/api/replies.py and gateway/api/merging.py; the shapes in gateway/api/schemas.py.
Never sends anything (replies go to the outbox) and never logs a request body.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from gateway.api import integrations
from gateway.api.auth import ApiError, Principal, require
from gateway.api.context import ApiContext, get_context, read_session
from gateway.api.errors import binary_download, documented_errors
from gateway.api.merging import FoldKind, fold
from gateway.api.replies import ReplySettings, default_channel, queue_reply
from gateway.api.schemas import (
    ChangeResult,
    DuplicateRequest,
    FirstResponse,
    IncidentLinkRequest,
    IncidentUnlinkRequest,
    MergeRequest,
    ReplyRequest,
    ReplyResult,
    SeverityChange,
    Status,
    StatusChange,
    TicketDetail,
    TicketPage,
    TicketSummary,
)
from gateway.api.views import (
    MAX_PAGE,
    QueueFilters,
    detail,
    download_headers,
    list_tickets,
    message_out,
    raw_content_type,
    safe_content_type,
    safe_filename,
    summary,
    ticket_or_404,
)
from gateway.config.loader import Settings
from gateway.emergency.links import link_to_incident, unlink_from_incident
from gateway.outbound.twilio_sender import auth_token as twilio_auth_token
from gateway.privacy.audit import Actor
from gateway.storage.admin import AdminError, change_status, correct_severity, mark_first_response
from gateway.storage.models import AttachmentRecord, Message
from gateway.storage.queries import OPEN_STATUSES

router = APIRouter(prefix="/api/v1", tags=["tickets"])

Ref = Annotated[
    str,
    Path(
        description="Ticket reference (T-000123) or its number (123).",
        max_length=32,
        examples=["T-000001"],
    ),
]
Ctx = Annotated[ApiContext, Depends(get_context)]
Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("write"))]
ReadSession = Annotated[Session, Depends(read_session)]


def actor(principal: Principal) -> Actor:
    return Actor(principal.name, "api")


def answer(exc: AdminError) -> ApiError:
    status = 409 if exc.code == "conflict" else 422
    return ApiError(status, "conflict" if status == 409 else "invalid_request", str(exc))


# ---- the queue ------------------------------------------------------------------------------


@router.get(
    "/tickets",
    response_model=TicketPage,
    summary="The queue, in queue order",
    description="Held tickets last; acknowledged emergencies first; then queue jumpers; then "
    "severity; then first-response due time. Filters combine with AND; a repeated filter "
    "(queue=a&queue=b) matches any of its values. Without `status`, open tickets only.",
    responses=documented_errors(401, 403, 422),
)
def get_tickets(
    _: Reader,
    session: ReadSession,
    ctx: Ctx,
    queue: Annotated[list[str] | None, Query(max_length=20)] = None,
    level: Annotated[list[str] | None, Query(max_length=20)] = None,
    plan: Annotated[list[str] | None, Query(max_length=20)] = None,
    status: Annotated[list[Status] | None, Query(max_length=6)] = None,
    jump_queue: bool | None = None,
    emergency: bool | None = None,
    breached: Annotated[
        bool | None, Query(description="Open and past a first-response or resolution due time.")
    ] = None,
    held: bool | None = None,
    updated_since: Annotated[
        datetime | None,
        Query(description="Only tickets changed at or after this instant (with a timezone)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> TicketPage:
    if updated_since is not None and updated_since.utcoffset() is None:
        raise ApiError(422, "invalid_request", "updated_since needs a timezone (e.g. ...Z)")
    filters = QueueFilters(
        queues=tuple(queue or ()),
        levels=tuple(level or ()),
        plans=tuple(plan or ()),
        statuses=tuple(status) if status else OPEN_STATUSES,
        jump_queue=jump_queue,
        emergency=emergency,
        breached=breached,
        held=held,
        # UTC, as stored: SQLite keeps wall-clock text, so an offset would compare wrongly.
        updated_since=updated_since.astimezone(UTC) if updated_since else None,
    )
    return list_tickets(session, filters, ctx.clock(), limit=limit, cursor=cursor)


@router.get(
    "/tickets/{ref}",
    response_model=TicketDetail,
    summary="A ticket with its messages, attachments, explanation, decisions, SLA and billing",
    responses=documented_errors(401, 403, 404),
)
def get_ticket(ref: Ref, _: Reader, session: ReadSession, ctx: Ctx) -> TicketDetail:
    ticket = ticket_or_404(session, ref)
    return detail(session, ticket, ctx.clock(), integrations.ticket_billing)


@router.get(
    "/tickets/{ref}/messages/{message_id}/raw",
    summary="The message exactly as received (email: message/rfc822)",
    response_class=Response,
    responses=binary_download("The raw bytes", 401, 403, 404, 410),
)
def get_raw_message(
    ref: Ref, message_id: Annotated[int, Path(ge=1)], _: Reader, session: ReadSession, ctx: Ctx
) -> Response:
    ticket = ticket_or_404(session, ref)
    message = session.get(Message, message_id)
    if message is None or message.ticket_id != ticket.id:
        raise ApiError(404, "not_found", f"no message {message_id} on {ticket.reference}")
    data = _blob(ctx, message.raw_sha256, "the raw message")
    content_type, ext = raw_content_type(message)
    name = f"{ticket.reference}-message-{message.id}.{ext}"
    return Response(data, media_type=content_type, headers=download_headers(name))


@router.get(
    "/tickets/{ref}/attachments/{attachment_id}",
    summary="An attachment's content, with its declared type and a safe file name",
    response_class=Response,
    responses=binary_download("The attachment's bytes", 401, 403, 404, 410),
)
def get_attachment(
    ref: Ref,
    attachment_id: Annotated[int, Path(ge=1)],
    _: Reader,
    session: ReadSession,
    ctx: Ctx,
) -> Response:
    ticket = ticket_or_404(session, ref)
    found = session.get(AttachmentRecord, attachment_id)
    message = session.get(Message, found.message_id) if found is not None else None
    if found is None or message is None or message.ticket_id != ticket.id:
        raise ApiError(404, "not_found", f"no attachment {attachment_id} on {ticket.reference}")
    if not found.stored:
        raise ApiError(
            404, "not_stored", "the attachment was over the size cap: only its facts were kept"
        )
    data = _blob(ctx, found.sha256, "the attachment")
    name = safe_filename(found.filename, f"attachment-{found.id}")
    return Response(
        data, media_type=safe_content_type(found.content_type), headers=download_headers(name)
    )


def _blob(ctx: ApiContext, sha256: str, what: str) -> bytes:
    try:
        return ctx.blobs.get(sha256)
    except FileNotFoundError:
        raise ApiError(410, "gone", f"{what} is no longer stored (removed by retention)") from None


# ---- changes --------------------------------------------------------------------------------


def _changed(ctx: ApiContext, session: Session, changed: bool, ticket: Any) -> ChangeResult:
    session.flush()
    return ChangeResult(changed=changed, ticket=summary(session, ticket, ctx.clock()))


@router.post(
    "/tickets/{ref}/status",
    response_model=ChangeResult,
    summary="Change the status (waiting pauses the resolution clock; resolved needs a kind)",
    responses=documented_errors(401, 403, 404, 409, 422),
)
def post_status(ref: Ref, body: StatusChange, principal: Writer, ctx: Ctx) -> ChangeResult:
    if body.status == "resolved" and body.resolution is None:
        raise ApiError(
            422,
            "invalid_request",
            "status resolved needs a resolution: solution, workaround, enhancement_request "
            "or escalated_to_development",
        )
    with ctx.write_sessions.begin() as session:
        ticket = ticket_or_404(session, ref, for_update=True)
        try:
            changed = change_status(
                session,
                ticket,
                body.status,
                actor=actor(principal),
                reason=body.reason,
                at=ctx.clock(),
                resolution=body.resolution,
            )
        except AdminError as exc:
            raise answer(exc) from None
        return _changed(ctx, session, changed, ticket)


@router.post(
    "/tickets/{ref}/first-response",
    response_model=ChangeResult,
    summary="Record that the first response was given another way (e.g. by phone)",
    description="Stops the first-response clock. A reply through this API does it itself.",
    responses=documented_errors(401, 403, 404, 422),
)
def post_first_response(ref: Ref, body: FirstResponse, principal: Writer, ctx: Ctx) -> ChangeResult:
    with ctx.write_sessions.begin() as session:
        ticket = ticket_or_404(session, ref, for_update=True)
        changed = mark_first_response(
            session, ticket, actor=actor(principal), at=ctx.clock(), reason=body.reason
        )
        return _changed(ctx, session, changed, ticket)


@router.post(
    "/tickets/{ref}/severity",
    response_model=ChangeResult,
    summary="Correct the severity, with a reason (recorded as a classifier label)",
    description="The correction is a training label: the next `gateway train` learns from it.",
    responses=documented_errors(401, 403, 404, 422),
)
def post_severity(ref: Ref, body: SeverityChange, principal: Writer, ctx: Ctx) -> ChangeResult:
    levels = ctx.settings().severity.levels
    with ctx.write_sessions.begin() as session:
        ticket = ticket_or_404(session, ref, for_update=True)
        try:
            changed = correct_severity(
                session,
                ticket,
                body.level,
                levels,
                actor=actor(principal),
                reason=body.reason,
                at=ctx.clock(),
            )
        except AdminError as exc:
            raise answer(exc) from None
        return _changed(ctx, session, changed, ticket)


class CreditOut(BaseModel):
    credited: bool = Field(description="The folded ticket's emergency incident was credited.")
    note: str = Field(description="What billing did, or why there was nothing to credit.")


class FoldResult(BaseModel):
    ticket: TicketSummary = Field(description="The merged or duplicate ticket (now closed).")
    target: TicketSummary = Field(description="The ticket it was folded into.")
    credit: CreditOut


def _fold(
    ref: str, other: str, kind: FoldKind, reason: str, principal: Principal, ctx: ApiContext
) -> FoldResult:
    levels = ctx.settings().severity.levels
    with ctx.write_sessions.begin() as session:
        source = ticket_or_404(session, ref)
        try:
            target = ticket_or_404(session, other)
        except ApiError:
            raise ApiError(422, "invalid_request", f"no ticket {other!r} to fold into") from None
        try:
            credit = fold(
                session,
                source,
                target,
                kind,
                actor=actor(principal),
                at=ctx.clock(),
                reason=reason,
                levels=levels,
            )
        except AdminError as exc:
            raise answer(exc) from None
        session.flush()
        now = ctx.clock()
        return FoldResult(
            ticket=summary(session, source, now),
            target=summary(session, target, now),
            credit=CreditOut(credited=credit.credited, note=credit.note),
        )


@router.post(
    "/tickets/{ref}/merge",
    response_model=FoldResult,
    summary="Merge this ticket into another (its messages move; billing credits the incident)",
    responses=documented_errors(401, 403, 404, 409, 422),
)
def post_merge(ref: Ref, body: MergeRequest, principal: Writer, ctx: Ctx) -> FoldResult:
    return _fold(ref, body.into, "merged_into", body.reason, principal, ctx)


@router.post(
    "/tickets/{ref}/duplicate",
    response_model=FoldResult,
    summary="Close this ticket as a duplicate of another (billing credits the incident)",
    responses=documented_errors(401, 403, 404, 409, 422),
)
def post_duplicate(ref: Ref, body: DuplicateRequest, principal: Writer, ctx: Ctx) -> FoldResult:
    return _fold(ref, body.of, "duplicate_of", body.reason, principal, ctx)


def reply_settings(settings: Settings) -> ReplySettings:
    g = settings.gateway
    hooks = g.webhooks
    return ReplySettings(
        mail_domain=g.gateway.mail_domain,
        from_address=g.outbound.from_address,
        own_addresses=tuple(a.lower() for a in (*g.smtp.recipients, g.outbound.from_address)),
        own_domains=tuple(d.lower() for d in (*g.smtp.domains, g.gateway.mail_domain)),
        sms_from_number=hooks.from_number,
        sms_configured=bool(hooks.account_sid and hooks.from_number and twilio_auth_token()),
    )


@router.post(
    "/tickets/{ref}/replies",
    response_model=ReplyResult,
    status_code=201,
    summary="Reply to the customer by email or SMS (through the outbox)",
    description="Email threads to the customer's last message (In-Reply-To/References, the "
    "ticket token in the subject); SMS goes to their number. The reply is recorded on the "
    "ticket and stops the first-response clock.",
    responses=documented_errors(401, 403, 404, 409, 422),
)
def post_reply(ref: Ref, body: ReplyRequest, principal: Writer, ctx: Ctx) -> ReplyResult:
    settings = reply_settings(ctx.settings())
    with ctx.write_sessions.begin() as session:
        ticket = ticket_or_404(session, ref, for_update=True)
        at = ctx.clock()
        try:
            queued = queue_reply(
                session,
                ticket,
                body.text,
                body.channel or default_channel(ticket),
                actor=actor(principal),
                at=at,
                blobs=ctx.blobs,
                settings=settings,
            )
            if body.status is not None:
                change_status(
                    session,
                    ticket,
                    body.status,
                    actor=actor(principal),
                    reason="set with a reply",
                    at=at,
                )
        except AdminError as exc:
            raise answer(exc) from None
        session.flush()
        return ReplyResult(
            message=message_out(queued.message, ticket.reference or "", []),
            outbox_id=queued.outbox.id,
            outbox_status=queued.outbox.status,
            ticket=summary(session, ticket, at),
        )


@router.post(
    "/tickets/{ref}/incident-link",
    response_model=ChangeResult,
    summary="Make this ticket part of an emergency's incident (never billed, never raised)",
    description="The gateway links automatically only by the rule in docs/emergency.md (the "
    "same contact, or the emergency's ticket named in the message); an agent links anything "
    "else here. Audited. `changed` is false when it already was linked to that emergency.",
    responses=documented_errors(401, 403, 404, 409, 422),
)
def post_incident_link(
    ref: Ref, body: IncidentLinkRequest, principal: Writer, ctx: Ctx
) -> ChangeResult:
    with ctx.write_sessions.begin() as session:
        ticket = ticket_or_404(session, ref, for_update=True)
        try:
            emergency = ticket_or_404(session, body.emergency)
        except ApiError:
            raise ApiError(422, "invalid_request", f"no ticket {body.emergency!r}") from None
        try:
            changed = link_to_incident(
                session,
                ticket,
                emergency,
                actor=actor(principal),
                at=ctx.clock(),
                reason=body.reason,
            )
        except AdminError as exc:
            raise answer(exc) from None
        return _changed(ctx, session, changed, ticket)


@router.post(
    "/tickets/{ref}/incident-unlink",
    response_model=ChangeResult,
    summary="Take this ticket out of the emergency incident it is linked to",
    description="Audited. `changed` is false when it was linked to none.",
    responses=documented_errors(401, 403, 404, 409, 422),
)
def post_incident_unlink(
    ref: Ref, body: IncidentUnlinkRequest, principal: Writer, ctx: Ctx
) -> ChangeResult:
    with ctx.write_sessions.begin() as session:
        ticket = ticket_or_404(session, ref, for_update=True)
        try:
            changed = unlink_from_incident(
                session, ticket, actor=actor(principal), at=ctx.clock(), reason=body.reason
            )
        except AdminError as exc:
            raise answer(exc) from None
        return _changed(ctx, session, changed, ticket)
