"""The hostile-input kit: where every spooled message ended, seeds from the real corpus, and the
mutations the fuzz tests apply to them (shared by the hypothesis run and the CLI sample).

A message "ends" in exactly one of: an intake row (ticket, follow-up, duplicate, discard, reject,
hold — each with its recorded reason) or the spool's quarantine (with stage and error). Anything
else — still pending, in neither, or in both — is a lost or doubled message.
"""

from __future__ import annotations

import random
import re
import smtplib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from gateway.intake.spool import Spool
from gateway.storage.db import make_engine, session_factory
from gateway.storage.models import Intake

FINAL_OUTCOMES = ("ticket", "follow-up", "duplicate", "discard", "reject", "hold")


@dataclass(frozen=True)
class Ending:
    """Where one spooled message ended: an intake outcome or `quarantine`, and why."""

    outcome: str
    reason: str


def endings(database_url: str, spool_dir: Path) -> dict[str, Ending]:
    """Spool id -> ending, for every message that reached an end (read from the database and
    the spool's quarantine). Raises if one id ended twice."""
    found: dict[str, Ending] = {}
    engine = make_engine(database_url)
    try:
        with session_factory(engine)() as session:
            for intake in session.execute(select(Intake)).scalars():
                found[intake.spool_id] = Ending(intake.outcome, intake.reason)
    except Exception as exc:  # not migrated yet: nothing has ended
        if "no such table" not in str(exc) and "does not exist" not in str(exc):
            raise
    finally:
        engine.dispose()
    spool = Spool(spool_dir)
    try:
        for record in spool.quarantined():
            assert record.id not in found, f"{record.id} is both an intake and quarantined"
            found[record.id] = Ending("quarantine", f"{record.stage}: {record.error}")
    finally:
        spool.close()
    return found


def assert_ended_clearly(ending: Ending, what: str) -> None:
    assert ending.outcome in (*FINAL_OUTCOMES, "quarantine"), f"{what}: {ending}"
    assert ending.reason.strip(), f"{what}: ended as {ending.outcome} without a reason"


def smtp_data(port: int, raw: bytes, *, to: str = "support@example.com") -> tuple[int, str]:
    """One SMTP transaction; the DATA reply (code, text). 250's text names the spool entry.
    Line ends go out as CRLF, as SMTP requires (smtplib sends bytes as they are)."""
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
        client.ehlo("hostile.example")
        code, text = client.mail("sender@hostile.example")
        assert code == 250, text
        code, text = client.rcpt(to)
        if code != 250:
            return code, text.decode(errors="replace")
        code, reply = client.data(raw)
        return code, reply.decode(errors="replace")


def spool_id_of(reply: str) -> str:
    m = re.search(r"Queued as (\S+)", reply)
    assert m, reply
    return m.group(1)


# ---- seeds --------------------------------------------------------------------------------------

SEED_GROUPS = (
    "spamassassin/easy-ham-1",
    "spamassassin/hard-ham-1",
    "spamassassin/spam-2",
    "flanker",
    "python-email",
    "spamscope",
)


def corpus_seeds(shared_mail: Path, per_group: int = 8, max_bytes: int = 64 * 1024) -> list[bytes]:
    """A fixed, spread-out sample of real messages: every k-th file of each group, so seeds
    cover plain ham, HTML spam, broken MIME and torture tests. Deterministic (sorted names)."""
    seeds: list[bytes] = []
    for group in SEED_GROUPS:
        files = sorted(
            p for p in (shared_mail / group).rglob("*") if p.is_file() and p.stat().st_size
        )
        files = [p for p in files if p.stat().st_size <= max_bytes]
        step = max(1, len(files) // per_group)
        seeds.extend(p.read_bytes() for p in files[::step][:per_group])
    return seeds


# ---- mutations ----------------------------------------------------------------------------------
# Each takes the message and a source of choices (`pick(n)` -> an int in [0, n)), so the same
# functions serve hypothesis (choices drawn from its data) and a seeded random.Random.

Pick = Callable[[int], int]

CHARSETS = (
    b"x-unknown",
    b"utf-7",
    b"utf-16",
    b"utf-32-be",
    b"iso-2022-jp",
    b"koi8-r",
    b"windows-1252",
    b'"',
    b"",
    b"utf-8\x00",
    b"..%2f..%2fetc",
    b"a" * 300,
)
JUNK = (b"\x00", b"\xff\xfe", b"\r", b"\n", b"\r\n.\r\n", b"=?utf-8?b?==?=", b"\x1b[2J", b"\xc3")


def byte_flip(raw: bytes, pick: Pick) -> bytes:
    if not raw:
        return raw
    i = pick(len(raw))
    return raw[:i] + bytes([pick(256)]) + raw[i + 1 :]


def truncate(raw: bytes, pick: Pick) -> bytes:
    return raw[: pick(len(raw) + 1)]


def duplicate_header(raw: bytes, pick: Pick) -> bytes:
    head_end = raw.find(b"\n\n")
    head = raw[: head_end if head_end >= 0 else len(raw)]
    lines = [m.start() for m in re.finditer(rb"(?m)^[A-Za-z-]+:", head)]
    if not lines:
        return raw
    start = lines[pick(len(lines))]
    end = raw.find(b"\n", start)
    line = raw[start : end + 1 if end >= 0 else len(raw)]
    if not line.endswith(b"\n"):
        line += b"\n"
    return raw[:start] + line * (2 + pick(40)) + raw[start:]


def damage_boundary(raw: bytes, pick: Pick) -> bytes:
    m = re.search(rb'boundary="?([^";\r\n]+)"?', raw, re.I)
    if not m:
        return raw.replace(b"\n\n", b"\nContent-Type: multipart/mixed; boundary=zz\n\n--zz\n", 1)
    boundary = m.group(1)
    choice = pick(5)
    if choice == 0:  # the declaration no longer matches the delimiters
        return raw[: m.start(1)] + boundary[::-1] + raw[m.end(1) :]
    if choice == 1:  # the closing delimiter is gone
        return raw.replace(b"--" + boundary + b"--", b"")
    if choice == 2:  # a delimiter in the middle of a part
        i = pick(len(raw))
        return raw[:i] + b"\n--" + boundary + b"\n" + raw[i:]
    if choice == 3:  # an empty boundary
        return raw[: m.start(1)] + raw[m.end(1) :]
    return raw.replace(b"--" + boundary, b"--" + boundary[: max(0, len(boundary) - 1)])


def swap_charset(raw: bytes, pick: Pick) -> bytes:
    new = CHARSETS[pick(len(CHARSETS))]
    swapped, n = re.subn(rb'(?i)charset="?[^";\s]*"?', b'charset="' + new + b'"', raw, count=1)
    if n:
        return swapped
    return raw.replace(b"\n\n", b'\nContent-Type: text/plain; charset="' + new + b'"\n\n', 1)


def mix_line_endings(raw: bytes, pick: Pick) -> bytes:
    choice = pick(4)
    if choice == 0:
        return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if choice == 1:
        return raw.replace(b"\r\n", b"\n")
    if choice == 2:  # every other line CRLF
        lines = raw.split(b"\n")
        return b"".join(
            line + (b"\r\n" if i % 2 else b"\n") for i, line in enumerate(lines)
        ).rstrip(b"\r\n")
    return raw.replace(b"\n", b"\r", 1 + pick(20))  # bare CRs


def insert_junk(raw: bytes, pick: Pick) -> bytes:
    i = pick(len(raw) + 1)
    return raw[:i] + JUNK[pick(len(JUNK))] * (1 + pick(8)) + raw[i:]


MUTATIONS: tuple[Callable[[bytes, Pick], bytes], ...] = (
    byte_flip,
    truncate,
    duplicate_header,
    damage_boundary,
    swap_charset,
    mix_line_endings,
    insert_junk,
)


def mutate(raw: bytes, pick: Pick, rounds: int) -> bytes:
    for _ in range(rounds):
        raw = MUTATIONS[pick(len(MUTATIONS))](raw, pick)
    return raw


def seeded_mutants(seeds: list[bytes], count: int, seed: int) -> list[bytes]:
    """`count` mutants from a seeded generator: the same list on every run."""
    rng = random.Random(seed)

    def pick(n: int) -> int:
        return rng.randrange(n) if n > 0 else 0

    return [mutate(seeds[pick(len(seeds))], pick, 1 + pick(4)) for _ in range(count)]
