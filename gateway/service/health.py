"""Health and metrics over HTTP, on the `[api]` bind address: `/healthz`, `/readyz`, `/metrics`.

Owns what "alive" and "ready" mean. `/healthz`: the process answers (liveness; the systemd
watchdog covers wedged work). `/readyz`: the database answers, the spool is writable with room
to spare, and every listener is bound — a load balancer sends webhooks elsewhere while this is
503, and intake still works from the spool. `/metrics`: Prometheus text from
`gateway.service.metrics.GatewayCollector`. Never writes anything.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.intake.spool import Spool
from gateway.service.metrics import GatewayCollector

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class HealthEndpoints:
    """The three handlers, for an app to route (the agents' API app serves them on [api])."""

    healthz: Endpoint
    readyz: Endpoint
    metrics: Endpoint


def build_health_app(
    sessions: sessionmaker[Session],
    spool: Spool,
    collector: GatewayCollector,
    listeners: Callable[[], dict[str, str]],
    min_free_bytes: int,
) -> Starlette:
    """The three routes alone (the daemon serves them inside gateway/api/app.py instead)."""
    endpoints = health_endpoints(sessions, spool, collector, listeners, min_free_bytes)
    return Starlette(
        routes=[
            Route("/healthz", endpoints.healthz),
            Route("/readyz", endpoints.readyz),
            Route("/metrics", endpoints.metrics),
        ]
    )


def health_endpoints(
    sessions: sessionmaker[Session],
    spool: Spool,
    collector: GatewayCollector,
    listeners: Callable[[], dict[str, str]],
    min_free_bytes: int,
) -> HealthEndpoints:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)

    def database_ok() -> str | None:
        try:
            with sessions() as session:
                session.execute(text("SELECT 1"))
            return None
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"

    def spool_ok() -> str | None:
        if not os.access(spool.incoming_dir, os.W_OK | os.X_OK):
            return "spool directory is not writable"
        stat = os.statvfs(spool.incoming_dir)
        free = stat.f_bavail * stat.f_frsize
        if free < min_free_bytes:
            return f"only {free} bytes free (minimum {min_free_bytes})"
        return None

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> Response:
        db, sp = await asyncio.gather(asyncio.to_thread(database_ok), asyncio.to_thread(spool_ok))
        bound = listeners()
        checks = {
            "database": db or "ok",
            "spool": sp or "ok",
            "listeners": bound or "none bound",
        }
        ready = db is None and sp is None and bool(bound)
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    async def metrics(_: Request) -> Response:
        body = await asyncio.to_thread(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return HealthEndpoints(healthz=healthz, readyz=readyz, metrics=metrics)
