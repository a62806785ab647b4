"""Serving a Starlette app with uvicorn inside the daemon's event loop.

Owns one thing: uvicorn must not install its own signal handlers (the daemon owns SIGTERM,
SIGINT and SIGHUP), must bind before we report ready, and must stop within a bound. Used by the
Twilio webhooks (`[webhooks]`) and the health/metrics app (`[api]`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send


class RefuseWhileStopping:
    """ASGI middleware: while the daemon stops, requests under `paths` get 503 at once, so a
    load balancer (and Twilio's retry) moves to another instance instead of waiting on us."""

    def __init__(
        self, app: ASGIApp, *, stopping: Callable[[], bool], paths: tuple[str, ...] = ("/",)
    ) -> None:
        self.app = app
        self.stopping = stopping
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.stopping() and scope["path"].startswith(self.paths):
            response = PlainTextResponse(
                "shutting down\n", status_code=503, headers={"Retry-After": "5"}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _Server(uvicorn.Server):
    """uvicorn inside the daemon's loop: the daemon owns SIGTERM/SIGINT/SIGHUP, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class HttpServer:
    server: uvicorn.Server
    task: asyncio.Task[None]
    host: str
    port: int

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, timeout=10)


async def serve_http(app: Starlette, host: str, port: int) -> HttpServer:
    """Serve `app` in the running loop; returns once bound (port 0: read the real one)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # re-raises the bind error
            raise OSError(f"could not bind {host}:{port}")
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()
    return HttpServer(server, task, str(bound[0]), int(bound[1]))
