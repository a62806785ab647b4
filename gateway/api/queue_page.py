"""The shift lead's live queue page: `/queue`, server-rendered, refreshing itself.

Owns the page and its login: `GET /queue` (the open tickets in THE queue order of
`gateway.storage.queries.queue_order`, with level, JUMP / EMERGENCY / HELD badges, plan,
channel, subject, age and an SLA countdown that turns amber, then red), `GET /queue/rows` (the
same table as an HTML fragment, which the page's few lines of inline JavaScript fetch every
`refresh_seconds` and swap in — no front-end build step), and the only open part,
`GET|POST /queue/login` and `POST /queue/logout`.

Login: the agent pastes an API token (any scope: `read` is enough). A valid token gets a random
session id in a cookie (HttpOnly, SameSite=Strict, Path=/queue, Secure over https) mapped, in
this process's memory, to the principal, the token's digest and an expiry. The token itself is
never stored, logged, put in the cookie or rendered; a session ends at logout, at expiry, or as
soon as its token is no longer configured (checked on every request against the live token
table, so a revoked token ends its sessions with the next reload). Sessions are per process:
behind a load balancer with several instances, use sticky sessions or log in on each.

CSRF: the only POSTs are login and logout; the cookie is SameSite=Strict and a POST whose Origin
(or Sec-Fetch-Site) says it came from another site is refused with 403 (a reverse proxy in front
must pass the Host header through, or every login looks cross-site).

Escaping: every value from a customer (subject, names, hold reasons) goes through Jinja2 with
autoescape on; the fragment is rendered by the same templates, so the script only ever inserts
server-escaped HTML. A Content-Security-Policy with a per-response nonce allows only our own
inline script and style, as a second line of defence.

Must never: write to the database, show closed tickets, or let a token reach a cookie, a page
or a log line.

Mounting (gateway/api/app.py)::

    from gateway.api.queue_page import queue_routes
    app.router.routes.extend(
        queue_routes(
            sessions=sessions,                         # sessionmaker[Session]
            tokens=token_source,                       # gateway.api.auth.TokenSource
            levels=lambda: box.current.settings.severity.levels,
            now=business_clock.now,             # optional; tests freeze it
            settings=QueuePageSettings(),              # optional: thresholds, refresh
        )
    )

The routes are plain Starlette routes (not in /openapi.json: they serve HTML to a browser).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway import clock as business_clock
from gateway.api.auth import TokenSource
from gateway.message import PARSE_DEFECT_TAG
from gateway.storage.models import Ticket
from gateway.storage.queries import OPEN_STATUSES, as_utc, list_queue

log = logging.getLogger(__name__)

COOKIE_NAME = "gw_queue_session"
COOKIE_PATH = "/queue"
# A pasted token longer than this is not one of ours (ours are ~47 characters).
MAX_TOKEN_LENGTH = 512
TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class QueuePageSettings:
    """How the page looks and behaves; every field has a sensible default."""

    # A countdown turns amber when less than this fraction of its span (created -> due) is
    # left, or when fewer than `amber_minutes` are left, whichever comes first.
    amber_fraction: float = 0.25
    amber_minutes: int = 30
    # How often the page fetches the table again.
    refresh_seconds: float = 5.0
    # How long a login lasts.
    session_hours: float = 12.0
    # At most this many tickets are shown (the header says how many more there are).
    limit: int = 200
    # Sessions kept at once in this process; the oldest is dropped beyond it.
    max_sessions: int = 1000

    def __post_init__(self) -> None:
        if not 0.0 <= self.amber_fraction <= 1.0:
            raise ValueError("amber_fraction must be from 0 to 1")
        if self.amber_minutes < 0 or self.refresh_seconds <= 0 or self.session_hours <= 0:
            raise ValueError("amber_minutes, refresh_seconds and session_hours must be positive")
        if self.limit < 1 or self.max_sessions < 1:
            raise ValueError("limit and max_sessions must be at least 1")


# ---- the view: pure functions from tickets and a clock to what the page shows ---------------


@dataclass(frozen=True)
class Badge:
    code: str  # css class: jump | emergency | ack | held
    text: str
    title: str


@dataclass(frozen=True)
class SlaClock:
    """The one countdown a row shows: first response until it is sent, then resolution."""

    target: str  # "first response" | "resolution" | "" (no SLA)
    due: datetime | None
    remaining_seconds: int | None
    # Remaining below this is amber (0 and below is red).
    amber_seconds: int
    state: str  # ok | amber | red | paused | none
    text: str


@dataclass(frozen=True)
class QueueRow:
    position: int
    reference: str
    level: str
    level_rank: int
    badges: tuple[Badge, ...]
    plan: str
    channel: str
    queue: str
    subject: str
    contact: str
    created: datetime
    held: bool
    age_text: str
    sla: SlaClock


def format_duration(seconds: int) -> str:
    """`2d 03h`, `3h 07m`, `7m 05s` — the same format the page's script ticks in."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def countdown_text(remaining: int) -> str:
    return (
        f"overdue {format_duration(-remaining)}" if remaining <= 0 else format_duration(remaining)
    )


def sla_clock(ticket: Ticket, now: datetime, settings: QueuePageSettings) -> SlaClock:
    """Which clock runs, how long is left, and its colour, at `now`."""
    created = as_utc(ticket.created_at) or now
    if ticket.first_response_at is None and ticket.first_response_due is not None:
        target, due = "first response", as_utc(ticket.first_response_due)
    elif ticket.resolution_due is not None:
        target, due = "resolution", as_utc(ticket.resolution_due)
        if ticket.waiting_since is not None:
            # Waiting on the customer pauses the resolution clock (docs/config.md: support contract)
            return SlaClock(target, due, None, 0, "paused", "paused: waiting on customer")
    else:
        return SlaClock("", None, None, 0, "none", "—")
    assert due is not None
    span = max(0.0, (due - created).total_seconds())
    amber = int(max(settings.amber_fraction * span, settings.amber_minutes * 60))
    remaining = int((due - now).total_seconds())
    state = "red" if remaining <= 0 else "amber" if remaining < amber else "ok"
    return SlaClock(target, due, remaining, amber, state, countdown_text(remaining))


def badges(ticket: Ticket) -> tuple[Badge, ...]:
    out: list[Badge] = []
    if ticket.emergency:
        out.append(Badge("emergency", "EMERGENCY", "emergency support (billed per incident)"))
        if not ticket.emergency_acknowledged:
            out.append(
                Badge("ack", "AWAITING ACK", "the billing acknowledgement is not recorded yet")
            )
    if ticket.emergency_pending:
        out.append(
            Badge(
                "pending",
                "EMERGENCY PENDING",
                "an emergency request awaits the contact's confirmation of the charge; the "
                "ticket keeps its place and clock meanwhile",
            )
        )
    if ticket.jump_queue:
        out.append(Badge("jump", "JUMP", ticket.jump_reason or "jumps the queue"))
    if ticket.held:
        out.append(Badge("held", "HELD", ticket.hold_reason or "held for review"))
    if PARSE_DEFECT_TAG in (ticket.tags or []):
        out.append(
            Badge(
                "parse",
                "PARSE",
                "part of a message was lost or altered in parsing: see the ticket's defects",
            )
        )
    return tuple(out)


def queue_row(
    position: int,
    ticket: Ticket,
    now: datetime,
    levels: Sequence[str],
    settings: QueuePageSettings,
) -> QueueRow:
    created = as_utc(ticket.created_at) or now
    # The live scale decides the colour (a reload may have renamed levels); the stored rank is
    # the fallback for a level no longer on it.
    rank = levels.index(ticket.severity) if ticket.severity in levels else ticket.severity_rank
    contact = ticket.contact_name or ticket.contact_email or ""
    if ticket.contact_name and ticket.contact_email:
        contact = f"{ticket.contact_name} <{ticket.contact_email}>"
    return QueueRow(
        position=position,
        reference=ticket.reference or f"#{ticket.id}",
        level=ticket.severity,
        level_rank=rank,
        badges=badges(ticket),
        plan=ticket.plan,
        channel=ticket.channel,
        queue=ticket.queue,
        subject=ticket.subject or "(no subject)",
        contact=contact,
        created=created,
        held=ticket.held,
        age_text=format_duration(int((now - created).total_seconds())),
        sla=sla_clock(ticket, now, settings),
    )


@dataclass(frozen=True)
class QueueView:
    rows: tuple[QueueRow, ...]
    total_open: int
    now: datetime


def load_queue(
    sessions: sessionmaker[Session],
    now: datetime,
    levels: Sequence[str],
    settings: QueuePageSettings,
) -> QueueView:
    """The open tickets in queue order (read-only; runs in a worker thread)."""
    with sessions() as session:
        tickets = list_queue(session, statuses=OPEN_STATUSES, limit=settings.limit)
        total = session.execute(
            select(func.count()).select_from(Ticket).where(Ticket.status.in_(OPEN_STATUSES))
        ).scalar_one()
        rows = tuple(queue_row(i, t, now, levels, settings) for i, t in enumerate(tickets, start=1))
    return QueueView(rows, int(total), now)


# ---- logins -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginSession:
    principal: str
    # SHA-256 of the token that logged in (what gateway.toml holds anyway): the session lives
    # only as long as that token is configured.
    token_digest: bytes
    expires: datetime


@dataclass
class LoginSessions:
    """Session id -> login, in this process's memory. One per app (never a module global)."""

    max_sessions: int = 1000
    _by_id: dict[str, LoginSession] = field(default_factory=dict)

    def create(self, principal: str, token_digest: bytes, expires: datetime, now: datetime) -> str:
        self._by_id = {k: v for k, v in self._by_id.items() if v.expires > now}
        while len(self._by_id) >= self.max_sessions:
            oldest = min(self._by_id, key=lambda k: self._by_id[k].expires)
            del self._by_id[oldest]
        session_id = secrets.token_urlsafe(32)
        self._by_id[session_id] = LoginSession(principal, token_digest, expires)
        return session_id

    def get(self, session_id: str, now: datetime) -> LoginSession | None:
        found = self._by_id.get(session_id)
        if found is None:
            return None
        if found.expires <= now:
            del self._by_id[session_id]
            return None
        return found

    def end(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._by_id)


def _token_still_configured(tokens: TokenSource, digest: bytes) -> bool:
    return any(hmac.compare_digest(entry.digest, digest) for entry in tokens().entries)


def _same_origin(request: Request) -> bool:
    """False when the browser says this POST came from another site (login CSRF)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


# ---- rendering --------------------------------------------------------------------------------


def template_environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(enabled_extensions=("html",), default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # Milliseconds are what JavaScript's Date.parse reads; the page shows times in UTC.
    env.filters["iso"] = lambda d: (
        d.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
    env.filters["when"] = lambda d: d.astimezone(UTC).strftime("%a %d %b %H:%M UTC")
    env.filters["epoch_ms"] = lambda d: int(d.timestamp() * 1000)
    return env


def _security_headers(nonce: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; "
            "frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
    }


def _error(status: int, code: str, message: str) -> JSONResponse:
    """The API's one error body (gateway.api.auth.ApiError)."""
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


def queue_routes(
    *,
    sessions: sessionmaker[Session],
    tokens: TokenSource,
    levels: Callable[[], Sequence[str]],
    now: Callable[[], datetime] | None = None,
    settings: QueuePageSettings | None = None,
    logins: LoginSessions | None = None,
) -> list[BaseRoute]:
    """The queue page's routes, ready to add to the API app (see the module docstring)."""
    cfg = settings or QueuePageSettings()
    clock: Callable[[], datetime] = now or (business_clock.now)
    store = logins if logins is not None else LoginSessions(cfg.max_sessions)
    env = template_environment()

    def render(
        name: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any
    ) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        body = env.get_template(name).render(nonce=nonce, settings=cfg, **context)
        return HTMLResponse(
            body, status_code=status, headers={**_security_headers(nonce), **(headers or {})}
        )

    def current_login(request: Request) -> LoginSession | None:
        session_id = request.cookies.get(COOKIE_NAME)
        if not session_id:
            return None
        found = store.get(session_id, clock())
        if found is None:
            return None
        if not _token_still_configured(tokens, found.token_digest):
            store.end(session_id)
            log.info(
                "queue page session of %s ended: its token is no longer configured", found.principal
            )
            return None
        return found

    async def view() -> QueueView:
        return await asyncio.to_thread(load_queue, sessions, clock(), tuple(levels()), cfg)

    async def page(request: Request) -> Response:
        login = current_login(request)
        if login is None:
            return RedirectResponse("/queue/login", status_code=303)
        try:
            data = await view()
        except SQLAlchemyError as exc:
            log.warning("queue page: database unavailable: %s", type(exc).__name__)
            return render("queue_unavailable.html", status=503, principal=login.principal)
        return render("queue.html", view=data, principal=login.principal)

    async def rows(request: Request) -> Response:
        if current_login(request) is None:
            return _error(401, "unauthorized", "log in at /queue/login")
        try:
            data = await view()
        except SQLAlchemyError as exc:
            log.warning("queue page: database unavailable: %s", type(exc).__name__)
            return _error(503, "unavailable", "the database is not answering; retrying")
        return render("queue_rows.html", view=data)

    async def login_form(request: Request) -> Response:
        if current_login(request) is not None:
            return RedirectResponse("/queue", status_code=303)
        return render("login.html", error="")

    async def login(request: Request) -> Response:
        if not _same_origin(request):
            return render("login.html", status=403, error="Log in from this page itself.")
        form = await request.form(max_files=0, max_fields=5)
        presented = form.get("token")
        if not isinstance(presented, str) or not presented.strip():
            return render("login.html", status=400, error="Paste an API token to log in.")
        presented = presented.strip()
        if len(presented) > MAX_TOKEN_LENGTH:
            return render("login.html", status=400, error="That is not an API token.")
        principal = tokens().authenticate(presented)
        if principal is None:
            log.warning(
                "queue page: login refused (token not valid) from %s",
                request.client.host if request.client else "?",
            )
            return render("login.html", status=401, error="That token is not valid.")
        if not principal.can("read"):
            return render("login.html", status=403, error="That token lacks the read scope.")
        at = clock()
        expires = at.timestamp() + cfg.session_hours * 3600
        session_id = store.create(
            principal.name,
            hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest(),
            datetime.fromtimestamp(expires, UTC),
            at,
        )
        log.info("queue page: %s logged in", principal.name)
        response = RedirectResponse("/queue", status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            session_id,
            max_age=int(cfg.session_hours * 3600),
            path=COOKIE_PATH,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(request: Request) -> Response:
        if not _same_origin(request):
            return _error(403, "forbidden", "cross-site logout refused")
        session_id = request.cookies.get(COOKIE_NAME)
        if session_id:
            store.end(session_id)
        response = RedirectResponse("/queue/login", status_code=303)
        response.delete_cookie(
            COOKIE_NAME,
            path=COOKIE_PATH,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    return [
        Route("/queue", page, methods=["GET"], name="queue_page"),
        Route("/queue/rows", rows, methods=["GET"], name="queue_rows"),
        Route("/queue/login", login_form, methods=["GET"], name="queue_login_form"),
        Route("/queue/login", login, methods=["POST"], name="queue_login"),
        Route("/queue/logout", logout, methods=["POST"], name="queue_logout"),
    ]


__all__ = [
    "COOKIE_NAME",
    "LoginSessions",
    "QueuePageSettings",
    "QueueRow",
    "SlaClock",
    "badges",
    "countdown_text",
    "format_duration",
    "load_queue",
    "queue_routes",
    "sla_clock",
]
