"""CLI commands for API tokens (create a token and its hash for gateway.toml).

Registered on the main parser by `gateway.cli.main.build_parser`. Commands print plain words for an
admin; the rules they apply live in the modules they call, never here.

`gateway api token create NAME [--scope read|write|admin]` prints a new random token ONCE (on
stdout, for the admin to hand over) and the `[[api.tokens]]` table with its SHA-256 to paste into
gateway.toml. Nothing is written anywhere: the gateway never holds a token in clear, so a lost
token is replaced, never recovered.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from gateway.config.gateway_schema import API_SCOPES


def cmd_token_create(args: argparse.Namespace) -> int:
    from gateway.api.auth import new_token, token_digest

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}", args.name):
        print(
            f"invalid token name {args.name!r}: 1-64 letters, digits, '_', '.', '@' or '-'",
            file=sys.stderr,
        )
        return 2
    token = new_token()
    scopes = ", ".join(f'"{s}"' for s in dict.fromkeys(args.scope or ["read"]))
    print(f"token for {args.name} (shown once; store it now, it cannot be recovered):")
    print()
    print(f"    {token}")
    print()
    print("add to gateway.toml, then run `gateway reload`:")
    print()
    print("[[api.tokens]]")
    print(f'name = "{args.name}"')
    print(f'sha256 = "{token_digest(token)}"')
    print(f"scopes = [{scopes}]")
    return 0


def register(sub: Any) -> None:
    """Add this module's commands to the main parser's subparsers `sub`."""
    api = sub.add_parser("api", help="the agents' HTTP API").add_subparsers(
        dest="api_cmd", required=True
    )
    token = api.add_parser("token", help="API tokens").add_subparsers(
        dest="token_cmd", required=True
    )
    s = token.add_parser(
        "create", help="print a new token once and its [[api.tokens]] table for gateway.toml"
    )
    s.add_argument("name", help="names the holder (the audit log records actions by it)")
    s.add_argument(
        "--scope",
        action="append",
        choices=API_SCOPES,
        help="read, write or admin (admin implies write implies read); default read",
    )
    s.set_defaults(func=cmd_token_create)


__all__ = ["register"]
