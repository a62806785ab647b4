"""Who is calling the agents' HTTP API, and what they may do.

Owns bearer-token authentication and scopes. Tokens are configured as `[[api.tokens]]` in
gateway.toml by name and SHA-256 (hashed at rest: the token itself is printed once by
`gateway api token create` and stored nowhere); the scopes are ordered, `admin` implies `write`
implies `read`. A request without a valid token is answered 401 with `WWW-Authenticate: Bearer`;
a valid token without the scope a route needs, 403.

Must never: log, store, echo or put into an error message a presented token (or any part of it);
compare secrets with `==` (the digests are compared with `hmac.compare_digest`, over every entry,
so the time taken does not depend on which token matched or how much of it).

Other modules use it like this (the app keeps a `TokenSource` in `app.state.token_source`, so a
configuration reload takes effect on the next request)::

    from gateway.api.auth import Principal, require

    @router.get("/x")
    def x(principal: Principal = Depends(require("read"))) -> ...: ...
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.config.gateway_schema import API_SCOPES, ApiToken

# The order of the scopes: each one includes every scope before it.
SCOPE_ORDER: tuple[str, ...] = API_SCOPES  # ("read", "write", "admin")

# Attribute of `app.state` holding the app's `TokenSource`.
STATE_KEY = "token_source"


def implied_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """Every scope the given ones grant: admin -> {admin, write, read}, write -> {write, read}."""
    granted: set[str] = set()
    for scope in scopes:
        if scope in SCOPE_ORDER:
            granted.update(SCOPE_ORDER[: SCOPE_ORDER.index(scope) + 1])
    return frozenset(granted)


def token_digest(token: str) -> str:
    """The SHA-256 hex digest configured for `token` (what gateway.toml holds)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token: 256 bits, URL-safe, prefixed so a leaked one is recognisable."""
    return "igw_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the token's configured name and every scope it grants."""

    name: str
    scopes: frozenset[str]

    def can(self, scope: str) -> bool:
        return scope in self.scopes


@dataclass(frozen=True)
class TokenEntry:
    """One configured token: its name, raw SHA-256 digest and every scope it grants."""

    name: str
    digest: bytes  # raw 32-byte SHA-256
    scopes: frozenset[str]


@dataclass(frozen=True)
class TokenTable:
    """The configured tokens, by digest. Built once per configuration (`from_config`)."""

    entries: tuple[TokenEntry, ...] = ()

    @classmethod
    def from_config(cls, tokens: Iterable[ApiToken]) -> TokenTable:
        return cls(
            tuple(
                TokenEntry(t.name, bytes.fromhex(t.sha256), implied_scopes(t.scopes))
                for t in tokens
            )
        )

    def authenticate(self, presented: str) -> Principal | None:
        """The principal `presented` belongs to, or None. Constant time in which entry matches:
        every configured digest is compared, none is skipped once one matched."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: TokenEntry | None = None
        for entry in self.entries:
            if hmac.compare_digest(entry.digest, digest) and found is None:
                found = entry
        if found is None:
            return None
        return Principal(found.name, found.scopes)


TokenSource = Callable[[], TokenTable]


class ApiError(HTTPException):
    """An HTTP error with a machine-readable `code`; the app renders it as the one error body
    `{"error": {"code": ..., "message": ...}}` (an app without that handler still answers the
    right status, with FastAPI's `{"detail": ...}`)."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code, detail={"code": code, "message": message}, headers=headers)
        self.code = code
        self.message = message


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None (scheme case-insensitive,
    RFC 6750 section 2.1). Never taken from the query string: URLs end up in logs."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return None
    return value


# Documents the scheme in /openapi.json (components.securitySchemes.bearer); auto_error=False so
# that the answer to a missing token is ours (401 with our error body), not FastAPI's.
_bearer_scheme = HTTPBearer(
    scheme_name="bearer",
    description="An API token from `gateway api token create`, as `Authorization: Bearer <token>`.",
    auto_error=False,
)


def token_table(request: Request) -> TokenTable:
    source: TokenSource | None = getattr(request.app.state, STATE_KEY, None)
    return source() if source is not None else TokenTable()


def authenticate_request(request: Request) -> Principal | None:
    """The caller of `request` by its bearer token, or None (no token, or not a valid one)."""
    presented = bearer_token(request)
    if presented is None:
        return None
    return token_table(request).authenticate(presented)


def authorize(request: Request, presented: str | None, scope: str) -> Principal:
    """The caller presenting `presented` (None: no token), who must hold `scope`: raises the
    401 or 403 ApiError otherwise. For routes that cannot use `require` as a dependency."""
    presented = (presented or "").strip()
    if not presented:
        raise unauthorized("an API token is required: Authorization: Bearer <token>")
    principal = token_table(request).authenticate(presented)
    if principal is None:
        # Never say why (unknown, revoked, mistyped): that would help someone guessing.
        raise unauthorized("the API token is not valid")
    if not principal.can(scope):
        raise ApiError(403, "forbidden", f"this token ({principal.name}) lacks the {scope!r} scope")
    request.state.principal = principal
    return principal


def require(scope: str) -> Callable[..., Principal]:
    """A FastAPI dependency: the caller, who must hold `scope` (401 / 403 otherwise)."""
    if scope not in SCOPE_ORDER:
        raise ValueError(f"unknown scope {scope!r}; scopes are {', '.join(SCOPE_ORDER)}")

    def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer_scheme),  # noqa: B008
    ) -> Principal:
        return authorize(request, credentials.credentials if credentials else None, scope)

    dependency.__name__ = f"require_{scope}"
    # The app reads this marker to document each operation's scope (x-scope) in /openapi.json.
    dependency.__dict__["gateway_scope"] = scope
    return dependency


def scope_of(dependency: Any) -> str | None:
    """The scope a `require(...)` dependency demands (None for anything else)."""
    return getattr(dependency, "gateway_scope", None)


__all__ = [
    "ApiError",
    "Principal",
    "TokenEntry",
    "TokenSource",
    "TokenTable",
    "authenticate_request",
    "authorize",
    "bearer_token",
    "implied_scopes",
    "new_token",
    "require",
    "token_digest",
    "unauthorized",
]
