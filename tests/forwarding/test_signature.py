"""The signature as a receiver checks it: the snippet of docs/forwarding.md (once the README's),
run as printed, accepts what the gateway sent and refuses a changed body, another secret, a
moved timestamp and an old replayed request. Also the retry delays that page promises."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from email.message import Message

import pytest

from gateway.config.schema import ForwardWebhook
from gateway.outbound import forwarding
from tests.forwarding.support import (
    ROOT,
    SECRET,
    WEBHOOK,
    Clock,
    Received,
    Receiver,
    forward,
    readme_verify,
    webhook_toml,
)
from tests.helpers import Gateway, make_email


@pytest.fixture
def received(
    forwarding_gateway: Callable[..., Gateway],
    receivers: Callable[..., Receiver],
    clock: Clock,
) -> Received:
    """One real request the gateway sent to a real receiver."""
    receiver = receivers()
    gw = forwarding_gateway(webhook_toml(WEBHOOK, receiver.url))
    gw.ingest(make_email())
    gw.drain()
    forward(gw, clock)
    (request,) = receiver.requests
    return request


def with_header(headers: Message, name: str, value: str) -> Message:
    copy = Message()
    for k, v in headers.items():
        if k.lower() != name.lower():
            copy[k] = v
    copy[name] = value
    return copy


def test_a_changed_body_another_secret_or_a_moved_or_old_timestamp_fail_verification(
    received: Received,
) -> None:
    verify = readme_verify()
    key, headers, body = SECRET.encode(), received.headers, received.body
    forged = body.replace(b'"status":"new"', b'"status":"closed"')
    assert forged != body and not verify(key, headers, forged)
    assert not verify(b"not-the-secret", headers, body)
    moved = str(int(headers["X-Intake-Timestamp"]) + 1)
    assert not verify(key, with_header(headers, "X-Intake-Timestamp", moved), body)
    # Correctly signed, but an hour old: a captured request replayed.
    then = int(time.time()) - 3600
    replayed = with_header(headers, "X-Intake-Timestamp", str(then))
    replayed = with_header(replayed, "X-Intake-Signature", forwarding.signature(SECRET, then, body))
    assert not verify(key, replayed, body)
    assert verify(key, replayed, body, tolerance=7200)  # only its age failed it


def test_the_readme_snippet_verifies_a_request_with_the_documented_headers(
    received: Received,
) -> None:
    assert readme_verify()(SECRET.encode(), received.headers, received.body)
    readme = (ROOT / "docs" / "forwarding.md").read_text()
    section = readme[readme.index("## Forwarding into your help desk") :]
    documented = set(re.findall(r"^\| `([A-Za-z-]+)` \|", section, re.M))
    sent = {
        forwarding.HEADER_EVENT,
        forwarding.HEADER_IDEMPOTENCY,
        forwarding.HEADER_TIMESTAMP,
        forwarding.HEADER_SIGNATURE,
        forwarding.HEADER_ATTEMPT,
    }
    assert sent <= documented
    assert all(received.headers[name] for name in sent)
    assert received.headers["Content-Type"] == "application/json; charset=utf-8"


def hook(backoff_seconds: float, max_backoff_seconds: float) -> ForwardWebhook:
    return ForwardWebhook(
        name=WEBHOOK,
        url="https://desk.example.com/in",
        backoff_seconds=backoff_seconds,
        max_backoff_seconds=max_backoff_seconds,
    )


@pytest.mark.parametrize("attempt", [1, 2, 3, 8])
def test_the_retry_delay_doubles_with_half_of_it_jitter(attempt: int) -> None:
    webhook = hook(backoff_seconds=30.0, max_backoff_seconds=3600.0)
    full = min(3600.0, 30.0 * 2 ** (attempt - 1))
    assert forwarding.backoff_seconds(attempt, webhook, rand=lambda: 0.0) == full / 2
    assert forwarding.backoff_seconds(attempt, webhook, rand=lambda: 1.0) == full


def test_the_retry_delay_never_exceeds_the_maximum_however_many_attempts() -> None:
    webhook = hook(backoff_seconds=30.0, max_backoff_seconds=600.0)
    assert forwarding.backoff_seconds(10_000, webhook, rand=lambda: 1.0) == 600.0
