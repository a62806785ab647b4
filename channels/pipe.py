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


def ingest(
    spool: Spool,
    raw: bytes,
    *,
    recipient: str | None,
    sender: str | None,
    max_bytes: int,
    source: str = "stdin",
) -> IngestResult:
    if not looks_like_message(raw):
        return IngestResult(EX_DATAERR, f"{source}: not an RFC 5322 message (no header block)")
    if len(raw) > max_bytes:
        return IngestResult(
            EX_DATAERR, f"{source}: {len(raw)} bytes is over the {max_bytes}-byte message limit"
        )
    envelope = Envelope(
        channel="pipe",
        received_at=business_clock.now(),
        mail_from=sender,
        recipients=(recipient.lower(),) if recipient else (),
        peer=source,
    )
    try:
        entry_id = spool.enqueue(raw, envelope)
    except SpoolError as exc:
        return IngestResult(EX_TEMPFAIL, f"{source}: spool unavailable, try again later: {exc}")
    return IngestResult(EX_OK, f"{source}: queued as {entry_id}")
