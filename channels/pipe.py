"""Pipe delivery for an MTA (Postfix `pipe`, Exim `pipe` transport), as rt-mailgate does.

Owns the exit-code contract of `gateway ingest` (sysexits.h, which MTAs understand):
  0   the message is durable in the spool (the MTA may forget it)
  65  EX_DATAERR: the input is not a message at all (empty, binary, no header) — a permanent
      failure the MTA bounces
  66  EX_NOINPUT: a file named on the command line cannot be read (missing, unreadable)
  75  EX_TEMPFAIL: we could not make it durable (spool full or unwritable, config unreadable) —
      the MTA keeps the message and retries
Several files in one call (an admin importing saved mail, not an MTA) answer per file, one line
each, and exit 0 when every file was either spooled or refused with its reason printed: one
refused file of many is reported, not a failure of the batch (issue 19 item 10). 75 still wins:
a file we could not make durable must be retried.
Never parses beyond the "is this a message" check, never touches the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway import clock as business_clock
from gateway.intake.rawmail import looks_like_message
from gateway.intake.spool import Envelope, Spool, SpoolError

EX_OK = 0
EX_DATAERR = 65
EX_NOINPUT = 66
EX_TEMPFAIL = 75


@dataclass(frozen=True)
class IngestResult:
    code: int
    detail: str


def batch_exit_code(results: list[IngestResult]) -> int:
    """The exit code of one `ingest` call: a single message's own code (the MTA acts on it);
    for several files, 75 if any must be retried, else 0 (each refusal is printed)."""
    if len(results) == 1:
        return results[0].code
    return EX_TEMPFAIL if any(r.code == EX_TEMPFAIL for r in results) else EX_OK


def admit(
    raw: bytes, *, recipient: str | None, sender: str | None, max_bytes: int, source: str
) -> Envelope | IngestResult:
    """The envelope to spool `raw` under, or why it is refused (65): not a message, too big."""
    if not looks_like_message(raw):
        return IngestResult(EX_DATAERR, f"{source}: not an RFC 5322 message (no header block)")
    if len(raw) > max_bytes:
        return IngestResult(
            EX_DATAERR, f"{source}: {len(raw)} bytes is over the {max_bytes}-byte message limit"
        )
    return Envelope(
        channel="pipe",
        received_at=business_clock.now(),
        mail_from=sender,
        recipients=(recipient.lower(),) if recipient else (),
        peer=source,
    )


def _spooled(source: str, outcome: str | SpoolError) -> IngestResult:
    if isinstance(outcome, SpoolError):
        return IngestResult(
            EX_TEMPFAIL, f"{source}: spool unavailable, try again later: {outcome}"
        )
    return IngestResult(EX_OK, f"{source}: queued as {outcome}")


def ingest(
    spool: Spool,
    raw: bytes,
    *,
    recipient: str | None,
    sender: str | None,
    max_bytes: int,
    source: str = "stdin",
) -> IngestResult:
    """One message (an MTA's delivery): durable in the spool (0), or why not."""
    admitted = admit(raw, recipient=recipient, sender=sender, max_bytes=max_bytes, source=source)
    if isinstance(admitted, IngestResult):
        return admitted
    try:
        return _spooled(source, spool.enqueue(raw, admitted))
    except SpoolError as exc:
        return _spooled(source, exc)


def ingest_many(
    spool: Spool,
    messages: Sequence[tuple[str, bytes]],
    *,
    recipient: str | None,
    sender: str | None,
    max_bytes: int,
) -> list[IngestResult]:
    """Several files (source, bytes) as one spool group (`Spool.enqueue_many`: the files'
    fsyncs and one of incoming/ shared), each answered as `ingest` answers it, in order. No
    result says "queued" before the whole group is durable."""
    results: list[IngestResult | None] = []
    spooling: list[tuple[int, str, bytes, Envelope]] = []
    for source, raw in messages:
        admitted = admit(raw, recipient=recipient, sender=sender, max_bytes=max_bytes,
                         source=source)
        if isinstance(admitted, IngestResult):
            results.append(admitted)
        else:
            spooling.append((len(results), source, raw, admitted))
            results.append(None)
    outcomes = spool.enqueue_many([(raw, envelope) for _, _, raw, envelope in spooling])
    for (slot, source, _, _), outcome in zip(spooling, outcomes, strict=True):
        results[slot] = _spooled(source, outcome)
    return [result for result in results if result is not None]
