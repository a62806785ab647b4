"""What the senders saw, what the database holds, and the fault table that compares them.

Owns the accounting of the fault-injection suite: every message a test sends carries a unique
marker (``fx-<run>-<channel>-<n>``) in its subject; the :class:`Ledger` records, per marker, the
fault it was first sent under and whether the sender ever saw it acknowledged (SMTP 250, HTTP
2xx, IMAP APPEND OK). :func:`count_markers` reads the database the daemon wrote — tickets and the
inbound messages on them, by marker — and :func:`rows` turns both into :class:`FaultRow`\\ s:
sent / acknowledged / retried / unacknowledged / ticketed / duplicated / lost.

The rules a row must satisfy (``FaultRow.violations``): every acknowledged message has exactly
one ticket (else it is *lost* or *duplicated*), every unacknowledged one at most one.
Never talks to the daemon: it only reads the database (the final count after it stopped).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import OperationalError, ProgrammingError

from gateway.storage.db import make_engine

MARKER = re.compile(r"fx-[a-z0-9]+-[a-z]+-\d{5}")


@dataclass
class Sent:
    """One message of a test, as its sender experienced it (mutated under the ledger's lock)."""

    marker: str
    channel: str  # smtp | sms | imap
    fault: str  # the fault row it belongs to: the one in force when it was first sent
    attempts: int = 0
    failed_attempts: int = 0  # attempts the sender did not see acknowledged
    acknowledged: bool = False
    abandoned: bool = False  # the sender gave up retrying (it may still have been spooled)


class Ledger:
    """Thread-safe record of every message sent, by marker."""

    def __init__(self, run: str) -> None:
        assert re.fullmatch(r"[a-z0-9]+", run), run
        self.run = run
        self.fault = "start"
        self._faults: list[str] = []
        self._lock = threading.Lock()
        self._items: dict[str, Sent] = {}
        self._counts: Counter[str] = Counter()

    def begin(self, fault: str) -> None:
        """From now on, new messages belong to `fault`'s row."""
        with self._lock:
            self.fault = fault
            self._faults.append(fault)
        # The run's timeline in the test output (-s), to see where the time goes.
        print(f"{time.strftime('%H:%M:%S')} fault: {fault}", flush=True)

    def new(self, channel: str) -> Sent:
        with self._lock:
            self._counts[channel] += 1
            marker = f"fx-{self.run}-{channel}-{self._counts[channel]:05d}"
            item = Sent(marker, channel, self.fault)
            self._items[marker] = item
            return item

    def attempt(self, item: Sent, acknowledged: bool) -> None:
        with self._lock:
            item.attempts += 1
            if acknowledged:
                item.acknowledged = True
            else:
                item.failed_attempts += 1

    def abandon(self, item: Sent) -> None:
        with self._lock:
            item.abandoned = True

    def items(self) -> list[Sent]:
        with self._lock:
            return [Sent(**asdict(item)) for item in self._items.values()]

    def unacknowledged(self) -> list[Sent]:
        """The live records (not copies) of messages not acknowledged yet, oldest first."""
        with self._lock:
            return [item for item in self._items.values() if not item.acknowledged]

    def acknowledged(self) -> set[str]:
        with self._lock:
            return {m for m, item in self._items.items() if item.acknowledged}

    def faults(self) -> list[str]:
        """Every fault begun, in order."""
        with self._lock:
            return list(self._faults)


@dataclass(frozen=True)
class MarkerCount:
    tickets: int  # tickets whose subject carries the marker
    messages: int  # inbound messages on a ticket whose subject carries the marker


def query(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of `sql` on the daemon's database; none while its schema does not exist yet (the
    worker migrates PostgreSQL once it runs)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    except (ProgrammingError, OperationalError) as exc:
        # PostgreSQL: relation "x" does not exist; SQLite: no such table. Anything else is real.
        if "does not exist" in str(exc) or "no such table" in str(exc):
            return []
        raise
    finally:
        engine.dispose()


def count_markers(database_url: str) -> dict[str, MarkerCount]:
    """Tickets and ticketed inbound messages per marker, straight from the database."""
    tickets = Counter(
        marker
        for (subject,) in query(database_url, "SELECT subject FROM tickets")
        for marker in set(MARKER.findall(subject or ""))
    )
    messages = Counter(
        marker
        for (subject,) in query(
            database_url,
            "SELECT subject FROM messages WHERE direction = 'in' AND ticket_id IS NOT NULL",
        )
        for marker in set(MARKER.findall(subject or ""))
    )
    return {
        marker: MarkerCount(tickets[marker], messages[marker])
        for marker in set(tickets) | set(messages)
    }


@dataclass(frozen=True)
class FaultRow:
    fault: str
    sent: int  # distinct messages first sent while this fault was in force
    acknowledged: int  # ... that the sender saw acknowledged (at once or on a retry)
    retried: int  # ... acknowledged only on a retry: the fault really hit them
    unacknowledged: int  # ... never acknowledged (the sender gave up): at most one ticket
    ticketed: int  # ... with a ticket
    duplicated: int  # ... with more than one ticket (must be 0)
    lost: int  # ... acknowledged without a ticket (must be 0)
    note: str = ""

    def violations(self) -> list[str]:
        problems = []
        if self.duplicated:
            problems.append(f"{self.fault}: {self.duplicated} duplicated")
        if self.lost:
            problems.append(f"{self.fault}: {self.lost} lost")
        return problems


COLUMNS = (
    "sent",
    "acknowledged",
    "retried",
    "unacknowledged",
    "ticketed",
    "duplicated",
    "lost",
)


def rows(
    items: list[Sent], counts: dict[str, MarkerCount], notes: dict[str, str] | None = None
) -> list[FaultRow]:
    """One row per fault, in the order the faults were injected."""
    zero = MarkerCount(0, 0)

    def tickets(item: Sent) -> int:
        found = counts.get(item.marker, zero)
        # A second ticket, or a second message recorded on one ticket: both are duplicates.
        return max(found.tickets, found.messages)

    out = []
    for fault in dict.fromkeys(item.fault for item in items):
        mine = [item for item in items if item.fault == fault]
        out.append(
            FaultRow(
                fault=fault,
                sent=len(mine),
                acknowledged=sum(item.acknowledged for item in mine),
                retried=sum(item.acknowledged and item.failed_attempts > 0 for item in mine),
                unacknowledged=sum(not item.acknowledged for item in mine),
                ticketed=sum(tickets(item) >= 1 for item in mine),
                # Acknowledged or not, no message may ever have two tickets.
                duplicated=sum(tickets(item) > 1 for item in mine),
                lost=sum(item.acknowledged and tickets(item) == 0 for item in mine),
                note=(notes or {}).get(fault, ""),
            )
        )
    return out


def render(table: list[FaultRow]) -> str:
    """A fixed-width text table with a total line, and the notes (what else was checked)."""
    total = {name: sum(getattr(row, name) for row in table) for name in COLUMNS}
    lines = [
        ("fault", *COLUMNS),
        *((row.fault, *(str(getattr(row, name)) for name in COLUMNS)) for row in table),
        ("TOTAL", *(str(total[name]) for name in COLUMNS)),
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]

    def fmt(line: tuple[str, ...]) -> str:
        cells = [line[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        return " | ".join(cells)

    rule = "-+-".join("-" * width for width in widths)
    out = [fmt(lines[0]), rule, *(fmt(line) for line in lines[1:-1]), rule, fmt(lines[-1])]
    notes = [f"  {row.fault}: {row.note}" for row in table if row.note]
    if notes:
        out += ["", "checked besides:", *notes]
    return "\n".join(out)


@dataclass
class FaultTable:
    """All rows of one pytest session, written to the artifacts directory as they come."""

    directory: Path
    table: list[FaultRow] = field(default_factory=list)
    tests: dict[str, list[FaultRow]] = field(default_factory=dict)

    def add(self, test: str, new_rows: list[FaultRow]) -> None:
        self.table += new_rows
        self.tests.setdefault(test, []).extend(new_rows)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "fault-table.txt").write_text(render(self.table) + "\n")
        (self.directory / "fault-table.json").write_text(
            json.dumps(
                {name: [asdict(r) for r in found] for name, found in self.tests.items()},
                indent=1,
            )
            + "\n"
        )
