"""The load generator: real clients sending marked messages over SMTP, signed Twilio SMS
webhooks and IMAP APPEND, concurrently, retrying what they did not see acknowledged.

Owns how a sender behaves under faults, modelled on real ones: an MTA retries a message until it
gets a 2xx (here: a non-250 reply or a broken connection is "not acknowledged"), and so does
Twilio for a webhook without a 2xx; some senders give up (a seeded fraction of the failed ones is
abandoned: those messages must then have *at most* one ticket). IMAP mail is acknowledged once
the mail server took the APPEND; the gateway then owes it exactly one ticket. Every send is
recorded in the :class:`~tests.faults.ledger.Ledger`. Never looks at the daemon or its database.
"""

from __future__ import annotations

import hashlib
import http.client
import random
import smtplib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP

from tests.faults.ledger import Ledger, Sent
from tests.imap.dovecot import Dovecot
from tests.twilio.conftest import GROWTH_PHONE, signed_post, sms_params

SENDER = "dana@acme-clinic.example"  # a growth-plan contact: email and SMS are on her plan
RECIPIENT = "support@example.com"
RETRY_SECONDS = 0.5  # a failed message is tried again this much later
TOPICS = (
    "Label printer offline",
    "Cannot open the patient portal",
    "Scanner jams on every page",
    "Password reset link expired",
    "Invoice PDF will not download",
    "Calendar sync stopped",
)


def email_for(item: Sent, padding: int = 0) -> bytes:
    """The message for `item`: its marker in the subject, the Message-ID and the last line."""
    topic = TOPICS[int(item.marker.rsplit("-", 1)[1]) % len(TOPICS)]
    msg = EmailMessage()
    msg["From"] = f"Dana Whitfield <{SENDER}>"
    msg["To"] = RECIPIENT
    msg["Subject"] = f"{topic} {item.marker}"
    msg["Date"] = "Mon, 23 Nov 2026 10:00:00 -0500"
    msg["Message-ID"] = f"<{item.marker}@acme-clinic.example>"
    # Long lines (within RFC 5321's 998): a big message crosses the wire quickly.
    filler = "".join(f"Detail {i:05d} " + "x" * 880 + "\n" for i in range(padding))
    # The last line proves the message arrived whole: a truncated one would lack it.
    msg.set_content(f"Hello, {topic.lower()} since this morning.\n{filler}END {item.marker}\n")
    # CRLF, as on the wire (RFC 5321) and in a mailbox: smtplib sends bytes as they are.
    return msg.as_bytes(policy=SMTP)


def sms_for(item: Sent) -> dict[str, str]:
    """A signed-SMS form for `item`. NEW: each text is its own ticket (no SMS threading)."""
    sid = "SM" + hashlib.sha256(item.marker.encode()).hexdigest()[:32]
    body = f"NEW printer issue {item.marker}\nEND {item.marker}"
    return sms_params(body, sid, sender=GROWTH_PHONE)


def send_smtp(port: int, raw: bytes, timeout: float = 10.0) -> bool:
    """True only for a 250 to the whole transaction."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as client:
            return client.sendmail(SENDER, [RECIPIENT], raw) == {}
    except (smtplib.SMTPException, OSError):
        return False


def smtp_reply(port: int, raw: bytes, timeout: float = 10.0) -> int:
    """The SMTP code the server gave the message (0: no answer at all)."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as client:
            client.sendmail(SENDER, [RECIPIENT], raw)
            return 250
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code
    except smtplib.SMTPRecipientsRefused as exc:
        return int(next(iter(exc.recipients.values()))[0])
    except (smtplib.SMTPException, OSError):
        return 0


def sms_status(port: int, params: dict[str, str]) -> int:
    """The HTTP status of a signed SMS webhook (0: no answer at all)."""
    try:
        return signed_post(port, "/twilio/sms", params)[0]
    except (OSError, http.client.HTTPException):
        return 0


@dataclass(frozen=True)
class Ports:
    smtp: int
    webhooks: int


@dataclass(frozen=True)
class Mailbox:
    server: Dovecot
    user: str


class MixedLoad:
    """Sender threads (SMTP, SMS, IMAP) feeding one daemon until :meth:`finish`.

    Each thread makes new messages at its own pace while :attr:`generating` is set, and retries
    its failed ones (a seeded ``retry_ratio`` of them; the rest are abandoned). :meth:`finish`
    stops new messages and waits until every retried message was acknowledged.
    """

    def __init__(
        self,
        ledger: Ledger,
        ports: Ports,
        mailbox: Mailbox | None,
        *,
        seed: int,
        retry_ratio: float = 0.8,
        pace: dict[str, float] | None = None,
    ) -> None:
        self.ledger = ledger
        self.ports = ports
        self.mailbox = mailbox
        self.seed = seed
        self.retry_ratio = retry_ratio
        # Seconds between sends per channel (IMAP appends three at a time): ~10 messages/s,
        # enough to be mid-flight at every crash without making the drains the slow part.
        self.pace = {"smtp": 0.18, "sms": 0.35, "imap": 1.2, **(pace or {})}
        self.generating = threading.Event()
        self.aborted = threading.Event()
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._pending: dict[str, deque[tuple[float, Sent]]] = {}

    def start(self) -> None:
        """Start the sender threads (a second call does nothing)."""
        if self._threads:
            return
        self.generating.set()
        senders: list[tuple[str, Callable[[list[Sent]], list[bool]]]] = [
            ("smtp", self._smtp),
            ("sms", self._sms),
        ]
        if self.mailbox is not None:
            senders.append(("imap", self._imap))
        for index, (channel, send) in enumerate(senders):
            rng = random.Random(self.seed * 31 + index)
            thread = threading.Thread(
                target=self._run, args=(channel, send, rng), name=f"load-{channel}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def finish(self, timeout: float = 120.0) -> None:
        """No new messages; wait until the senders' retries are all acknowledged."""
        self.generating.clear()
        for thread in self._threads:
            thread.join(timeout)
            assert not thread.is_alive(), f"{thread.name} still retrying after {timeout}s"
        if self.errors:
            raise self.errors[0]
        left = {channel: len(queue) for channel, queue in self._pending.items() if queue}
        assert not left, f"retries never acknowledged: {left}"

    def abort(self) -> None:
        """Stop at once (test teardown): no waiting for retries."""
        self.generating.clear()
        self.aborted.set()
        for thread in self._threads:
            thread.join(15)

    # -- one sender thread --------------------------------------------------------------------

    def _run(
        self, channel: str, send: Callable[[list[Sent]], list[bool]], rng: random.Random
    ) -> None:
        # (due time, message): a failed message is tried again after RETRY_SECONDS, as an MTA's
        # queue would; new messages keep coming meanwhile, as customers keep writing.
        retries: deque[tuple[float, Sent]] = deque()
        self._pending[channel] = retries
        batch = 3 if channel == "imap" else 1
        try:
            while not self.aborted.is_set():
                now = time.monotonic()
                if retries and retries[0][0] <= now:
                    items = [retries.popleft()[1]]
                elif self.generating.is_set():
                    items = [self.ledger.new(channel) for _ in range(batch)]
                elif retries:
                    self.aborted.wait(retries[0][0] - now)
                    continue
                else:
                    return  # finished: nothing new, nothing left to retry
                outcomes = send(items)
                for item, ok in zip(items, outcomes, strict=True):
                    self.ledger.attempt(item, ok)
                    if ok:
                        continue
                    # Whether this sender retries is decided once, at its first failure.
                    if item.abandoned or (
                        item.failed_attempts == 1 and rng.random() >= self.retry_ratio
                    ):
                        self.ledger.abandon(item)
                    else:
                        retries.append((time.monotonic() + RETRY_SECONDS, item))
                # Paced, and a little slower against a dead port, as MTAs and Twilio are.
                pace = self.pace[channel] * rng.uniform(0.5, 1.5)
                self.aborted.wait(pace if all(outcomes) else max(pace, 0.1))
        except BaseException as exc:  # a bug in the generator must fail the test, not hang it
            self.errors.append(exc)

    def _smtp(self, items: list[Sent]) -> list[bool]:
        return [send_smtp(self.ports.smtp, email_for(item)) for item in items]

    def _sms(self, items: list[Sent]) -> list[bool]:
        return [200 <= sms_status(self.ports.webhooks, sms_for(item)) < 300 for item in items]

    def _imap(self, items: list[Sent]) -> list[bool]:
        assert self.mailbox is not None
        try:
            self.mailbox.server.append(self.mailbox.user, *(email_for(i) for i in items))
        except Exception:
            return [False] * len(items)
        return [True] * len(items)
