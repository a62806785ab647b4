"""The API's one error body, for every 4xx and 5xx: `{"error": {"code": ..., "message": ...}}`.

Owns the mapping of every failure to that body: our own `ApiError`s (auth, not found, invalid,
conflict), FastAPI's request validation (422 with the offending fields), Starlette's routing
errors (404 unknown path, 405 wrong method), a database that does not answer (503, Retry-After)
and anything unexpected (500, logged with its traceback, never echoed to the client). Must never
put a request header, body or token into an error message or a log line.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class FieldProblem(BaseModel):
    location: str = Field(description="Where: e.g. body.reason, query.limit, path.ref.")
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(
        description="Machine-readable: unauthorized, forbidden, not_found, invalid_request, "
        "conflict, gone, method_not_allowed, unavailable, internal, ..."
    )
    message: str = Field(description="What went wrong, in words for a person.")
    fields: list[FieldProblem] | None = Field(
        default=None, description="For invalid_request: each offending field."
    )


class ErrorBody(BaseModel):
    error: ErrorDetail


def _code_for(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    fields: list[FieldProblem] | None = None,
) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, fields=fields))
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail: Any = exc.detail
    if isinstance(detail, dict) and "code" in detail and "message" in detail:
        code, message = str(detail["code"]), str(detail["message"])
    else:
        code = _code_for(exc.status_code)
        message = str(detail) if detail else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404:
            message = "no such resource"
    return error_response(exc.status_code, code, message, headers=dict(exc.headers or {}))


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Only the location and pydantic's message: the offending value may be a secret or
    # customer text, and never goes back out (nor into the log).
    fields = [
        FieldProblem(location=_location(err.get("loc", ())), message=str(err.get("msg", "")))
        for err in exc.errors()[:20]
    ]
    summary = "; ".join(f"{f.location}: {f.message}" for f in fields[:3]) or "invalid request"
    return error_response(422, "invalid_request", summary, fields=fields)


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning(
        "API %s %s: database unavailable: %s", request.method, request.url.path, type(exc).__name__
    )
    return error_response(
        503,
        "unavailable",
        "the database is not answering; intake goes on, try again shortly",
        headers={"Retry-After": "5"},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "API %s %s failed: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc
    )
    return error_response(500, "internal", "internal error; the gateway's log has the details")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(Exception, _unexpected)


def documented_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status (and every other 4xx/5xx) has the ErrorBody."""
    out: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorBody, "description": HTTPStatus(status).phrase}
        for status in statuses
    }
    out["4XX"] = {"model": ErrorBody, "description": "Any other client error"}
    out["5XX"] = {"model": ErrorBody, "description": "Server error (503: database down)"}
    return out


def binary_download(description: str, *statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a download: bytes of any media type on 200, the ErrorBody otherwise."""
    return {
        200: {
            "description": description,
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
        },
        **documented_errors(*statuses),
    }
