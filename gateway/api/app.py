"""The `[api]` listener's app: health, metrics, the agents' API, the queue page, forwarding.

Owns what is served on the `[api]` address (default 127.0.0.1:8081) and who may reach it:

    /healthz, /readyz                 open (gateway/service/health.py's checks)
    /metrics                          open, or a read token with [api] metrics_require_token
    /openapi.json                     read token (the OpenAPI 3.1 document of /api/v1)
    /api/v1/...                       a token with the scope each operation names (x-scope)
    /queue/...                        the queue page (gateway/api/queue_page.py; own login)
    /api/v1/forwarding/...            forwarding's dead letters (gateway/api/forwarding_routes.py)

and that every 4xx/5xx is the one error body (gateway/api/errors.py). The app is built from an
`ApiContext` (no globals) and reads the live settings on each request, so a reload changes
tokens at once. Never serves Swagger UI or anything fetched from elsewhere, never logs a
request's headers or body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api import forwarding_routes, queue_page, routes_admin, routes_tickets
from gateway.api.auth import STATE_KEY, TokenSource, authorize, bearer_token, scope_of
from gateway.api.context import CONTEXT_KEY, ApiContext, token_source
from gateway.api.errors import (
    ErrorBody,
    documented_errors,
    error_response,
    install_error_handlers,
)
from gateway.api.views import API_PREFIX
from gateway.service.health import HealthEndpoints

log = logging.getLogger(__name__)

API_VERSION = "1"
DESCRIPTION = """\
The agents' API of Intake Gateway.

**Auth**: `Authorization: Bearer <token>`; tokens are created with `gateway api token create NAME
--scope read|write|admin` and configured in gateway.toml as `[[api.tokens]]` (hashed). `admin`
implies `write` implies `read`; each operation's scope is in `x-scope`. No or an invalid token:
401 with `WWW-Authenticate: Bearer`; a token without the scope: 403.

**Errors**: every 4xx and 5xx has the body `{"error": {"code": "...", "message": "..."}}`
(validation errors add `fields`).
"""


class NoStoreHeaders:
    """API answers are about customers: no shared cache may keep them, no browser sniffs them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(("/api/", "/openapi.json")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


# The largest request body the API reads (a reply's text is at most 20,000 characters).
MAX_BODY_BYTES = 1024 * 1024


class BodyLimit:
    """Refuse a request body the API would never accept before anything reads it: FastAPI
    buffers a body before it checks the token, so without this anyone who can reach the port
    could make the daemon hold gigabytes. 413 above MAX_BODY_BYTES; 411 for a body without a
    Content-Length (chunked), which no client of this API needs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = {k.lower(): v for k, v in scope.get("headers", [])}
            length = headers.get(b"content-length")
            problem: tuple[int, str, str] | None = None
            if length is None and b"chunked" in headers.get(b"transfer-encoding", b""):
                problem = (411, "length_required", "send the body with a Content-Length")
            elif length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
                problem = (413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes")
            if problem is not None:
                await error_response(*problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _scope_of_route(route: APIRoute) -> str | None:
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        found = scope_of(dep.call)
        if found is not None:
            return found
        stack.extend(dep.dependencies)
    return None


def _openapi(app: FastAPI, routers: list[tuple[str, APIRouter]]) -> Callable[[], dict[str, Any]]:
    """FastAPI's document plus `x-scope` on every operation of `routers` (prefix, router) that
    needs a token: clients and tests read each operation's scope from the document."""
    from fastapi.openapi.utils import get_openapi

    scopes: dict[tuple[str, str], str] = {}
    for prefix, router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute) and (scope := _scope_of_route(route)) is not None:
                for method in route.methods or ():
                    scopes[(prefix + route.path_format, method.lower())] = scope

    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        for path, item in doc.get("paths", {}).items():
            for method, operation in item.items():
                if (path, method) in scopes:
                    operation["x-scope"] = scopes[(path, method)]
        app.openapi_schema = doc
        return doc

    return build


def build_api_app(ctx: ApiContext, health: HealthEndpoints) -> FastAPI:
    """The whole `[api]` app around `ctx`; `health` are gateway/service/health.py's handlers."""
    app = FastAPI(
        title="Intake Gateway API",
        version=API_VERSION,
        description=DESCRIPTION,
        openapi_url=None,  # served below, behind a read token
        docs_url=None,
        redoc_url=None,
        responses=documented_errors(),
    )
    tokens = token_source(ctx.settings)
    setattr(app.state, STATE_KEY, tokens)
    setattr(app.state, CONTEXT_KEY, ctx)
    install_error_handlers(app)
    app.add_middleware(NoStoreHeaders)
    app.add_middleware(BodyLimit)

    @app.get(
        "/healthz",
        tags=["health"],
        summary="Alive (no token)",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def healthz(request: Request) -> Response:
        return await health.healthz(request)

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Ready: database answers, spool writable with room, listeners bound (no token)",
        responses={
            200: {"description": "Ready", "content": {"application/json": {}}},
            503: {"description": "Not ready (intake still works from the spool)"},
        },
    )
    async def readyz(request: Request) -> Response:
        return await health.readyz(request)

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics (a read token if [api] metrics_require_token)",
        response_class=PlainTextResponse,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
            401: {"model": ErrorBody},
            403: {"model": ErrorBody},
        },
    )
    async def metrics(request: Request) -> Response:
        if ctx.settings().gateway.api.metrics_require_token:
            authorize(request, bearer_token(request), "read")
        return await health.metrics(request)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        authorize(request, bearer_token(request), "read")
        return JSONResponse(app.openapi())

    app.include_router(routes_tickets.router)
    app.include_router(routes_admin.router)
    routers = [("", routes_tickets.router), ("", routes_admin.router)]
    routers += _mount_queue_page_and_forwarding(app, ctx, tokens)
    app.openapi = _openapi(app, routers)  # type: ignore[method-assign]
    return app


def _mount_queue_page_and_forwarding(
    app: FastAPI, ctx: ApiContext, tokens: TokenSource
) -> list[tuple[str, APIRouter]]:
    """The queue page (plain Starlette routes: HTML with its own login) and forwarding's
    dead-letter routes, built by their own modules; returns the API routers mounted (for the
    OpenAPI document's scopes)."""
    app.router.routes.extend(
        queue_page.queue_routes(
            sessions=ctx.sessions,
            tokens=tokens,
            levels=lambda: ctx.settings().severity.levels,
            now=ctx.clock,
        )
    )
    app.include_router(forwarding_routes.router, prefix=API_PREFIX)
    # Their writes go through the write engine (SQLite: BEGIN IMMEDIATE), like ours.
    app.dependency_overrides[forwarding_routes.get_sessions] = lambda: ctx.write_sessions
    return [(API_PREFIX, forwarding_routes.router)]
