"""Forwarding into existing help desks: what a webhook delivery is, how it is signed and retried.

Owns the rules of forwarding.toml beyond its types (`check_forwarding`: unique names and secret
names, https, known queues; `missing_secrets`), which ticket changes a webhook receives
(`wants`), the idempotency key, the JSON body (the spine's ticket JSON in an envelope), the
signature (HMAC-SHA256 over `<timestamp>.<body>`, header `X-Intake-Signature: v1=<hex>`) and
the retry delay (exponential, capped, jittered). Pure: no database, no network, no clock of its own.
`gateway.outbound.forwarding_sender` does the I/O; `gateway.storage.forwarding_tables` holds
the rows.

How "every new ticket and every update is delivered at least once" holds, link by link:
1. Every ticket insert and every UPDATE that changes a ticket column writes a journal row
   (`forward_changes`) from a mapper event, on the flush's connection: the row commits if and
   only if the change does. We chose this over hooks called by each writer (persist, admin, API,
   escalation, billing, retention: six places today, more tomorrow, each one a chance to forget)
   and over a scanner of `tickets.updated_at` (not every writer bumps it, and a time watermark
   misses transactions that commit out of timestamp order). One touch point, no edit to any
   writer, and nothing to forget: the only bypass, a bulk UPDATE statement, is caught by a test.
2. `fan_out` (worker 0) locks journal rows (`SKIP LOCKED` on PostgreSQL), inserts one delivery
   per matching webhook under the unique idempotency key, and deletes the journal rows, in one
   transaction: a crash before the commit leaves the journal rows to do again; after it, the
   deliveries exist. Two instances take disjoint rows, and the unique key would stop a twin.
3. The sender claims due deliveries with a lease, POSTs them, and marks them delivered only on a
   2xx answer; any other outcome (an HTTP error, a timeout, a refused or dropped connection, a
   crash mid-send: the lease runs out) is an attempt, retried with backoff, and after
   `max_attempts` the delivery is a dead letter — visible, and retried by an admin, never lost.
Receivers deduplicate by the `Idempotency-Key` header (the same key on every attempt).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config.errors import ConfigProblem, find_line
from gateway.config.schema import ForwardingFile, ForwardWebhook, RoutingFile

FILE = "forwarding.toml"
SIGNATURE_VERSION = "v1"
# Header names, documented in docs/forwarding.md.
HEADER_SIGNATURE = "X-Intake-Signature"
HEADER_TIMESTAMP = "X-Intake-Timestamp"
HEADER_EVENT = "X-Intake-Event"
HEADER_IDEMPOTENCY = "Idempotency-Key"
HEADER_ATTEMPT = "X-Intake-Attempt"
# The hosts an http:// webhook may reach without allow_http (same rule as IMAP's plaintext).
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class SecretName:
    """Where a webhook's signing secret comes from: an environment variable or a credential."""

    credential: str
    env: str


def secret_name(webhook: str) -> SecretName:
    """`GATEWAY_FORWARD_SECRET_<NAME>` (upper case, '-' as '_') or credential
    `forward-secret-<name>` (systemd `LoadCredential=`)."""
    return SecretName(
        credential=f"forward-secret-{webhook}",
        env="GATEWAY_FORWARD_SECRET_" + webhook.upper().replace("-", "_"),
    )


def known_queues(routing: RoutingFile) -> set[str]:
    """Every queue routing.toml can send a ticket to: its default and each rule's queue."""
    return {routing.default_queue, *(rule.queue for rule in routing.rule if rule.queue)}


def check_forwarding(
    forwarding: ForwardingFile, queues: Collection[str] | None, path: Path
) -> list[ConfigProblem]:
    """Every problem with forwarding.toml beyond types. `queues`: the queues routing.toml can
    send a ticket to (None when routing.toml is itself broken: queue names are not checked).

    A missing secret is not a config problem, as for every other secret here (IMAP, Twilio,
    the relay): operators' commands run without the daemon's credentials. The sender refuses
    to send unsigned and says why, on each attempt and at start (`missing_secrets`)."""
    problems: list[ConfigProblem] = []
    seen_names: set[str] = set()
    seen_env: dict[str, str] = {}
    for i, hook in enumerate(forwarding.webhook):
        key = f"webhook[{i}]"

        def problem(leaf: str, message: str, key: str = key) -> None:
            problems.append(
                ConfigProblem(FILE, f"{key}.{leaf}", message, find_line(path, f"{key}.{leaf}"))
            )

        if hook.name in seen_names:
            problem("name", f"duplicate webhook name {hook.name!r}")
        seen_names.add(hook.name)
        names = secret_name(hook.name)
        other = seen_env.setdefault(names.env, hook.name)
        if other != hook.name:
            problem("name", f"{hook.name!r} and {other!r} would share the secret ${names.env}")
        host = (urlsplit(hook.url).hostname or "").lower()
        if hook.url.startswith("http://") and not hook.allow_http and host not in LOCAL_HOSTS:
            problem(
                "url",
                f"http:// to {host!r} sends ticket data unencrypted; use https:// "
                "(or allow_http = true on a network you trust)",
            )
        if not hook.events:
            problem("events", 'must name at least one of "created", "updated"')
        elif len(set(hook.events)) != len(hook.events):
            problem("events", "lists an event twice")
        if hook.backoff_seconds > hook.max_backoff_seconds:
            problem("backoff_seconds", "must not be more than max_backoff_seconds")
        if queues is not None:
            unknown = [q for q in hook.queues if q not in queues]
            if unknown:
                problem(
                    "queues",
                    f"unknown queue(s) {', '.join(map(repr, unknown))}: routing.toml can send "
                    f"tickets to {', '.join(sorted(queues))}",
                )
    return problems


def missing_secrets(
    forwarding: ForwardingFile, has_secret: Callable[[SecretName], bool]
) -> list[str]:
    """What an admin must fix: one line per webhook whose signing secret is nowhere."""
    return [
        f"forwarding webhook {hook.name!r} has no signing secret: set ${names.env} or the "
        f"credential {names.credential!r}; its deliveries wait (never sent unsigned)"
        for hook in forwarding.webhook
        if not has_secret(names := secret_name(hook.name))
    ]


def wants(webhook: ForwardWebhook, queue: str, event: str) -> bool:
    """Does `webhook` receive this change (the ticket's queue at the time of fan-out)?"""
    return event in webhook.events and (not webhook.queues or queue in webhook.queues)


def idempotency_key(webhook: str, reference: str, change_id: int) -> str:
    """The same on every attempt of one delivery; different for every change and webhook."""
    return f"{webhook}:{reference}:{change_id}"


def _iso(at: datetime) -> str:
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def body(
    *,
    event: str,
    key: str,
    webhook: str,
    change_id: int,
    occurred_at: datetime,
    ticket: Mapping[str, Any],
) -> str:
    """The JSON every delivery carries: an envelope around `ticket_json(..., detail=True)`."""
    return json.dumps(
        {
            "event": f"ticket.{event}",
            "idempotency_key": key,
            "webhook": webhook,
            "sequence": change_id,
            "occurred_at": _iso(occurred_at),
            "ticket": dict(ticket),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def signature(secret: str, timestamp: int, payload: bytes) -> str:
    """`v1=` + hex HMAC-SHA256(secret, "<timestamp>." + body): the timestamp is signed too, so
    a receiver can refuse an old request replayed at it."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def headers(
    *, secret: str, timestamp: int, payload: bytes, event: str, key: str, attempt: int
) -> dict[str, str]:
    return {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "intake-gateway-forwarding/1",
        HEADER_EVENT: f"ticket.{event}",
        HEADER_IDEMPOTENCY: key,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: signature(secret, timestamp, payload),
        HEADER_ATTEMPT: str(attempt),
    }


def backoff_seconds(
    attempts: int, webhook: ForwardWebhook, rand: Callable[[], float] = random.random
) -> float:
    """Delay after the `attempts`-th failed attempt: base * 2^(attempts-1), capped, and then
    "equal jitter" (half fixed, half random) so receivers coming back from an outage are not
    hit by every gateway at the same instant."""
    exponent = min(max(attempts - 1, 0), 30)  # 2**30 * any sane base is far past any cap
    delay = min(webhook.max_backoff_seconds, webhook.backoff_seconds * float(2**exponent))
    return delay / 2 + rand() * delay / 2
