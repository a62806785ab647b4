"""Stage 7: the only stage that writes. One transaction per worker batch.

Owns exactly-once (DESIGN promise 2): the intake row claims the message's dedup key under a
unique constraint, in the transaction that writes everything else of the message, so a
redelivery, a replay, the same mail by SMTP and IMAP, or two instances racing all end as one
ticket plus recorded duplicates (the loser's writes roll back with its failed claim). In the
same transaction: the ticket or follow-up, the message, attachment records, every recorded
reason, an emergency's hold, incident and ledger rows (`gateway/emergency/holds.py`), and outbox
rows (acknowledgements pass the outbox gate and the per-recipient limit
here, because the limit needs history). `record` runs inside the caller's transaction (a
batch's; on its retry each message has a SAVEPOINT of its own), and `BatchWrites` keeps what is
done once a batch: the look-up of earlier intakes, ticket ids, per-recipient counts, and the
rows nothing reads back until the commit. Blobs are made durable *before* that transaction
commits. A crash anywhere before the commit leaves the spool entry to be processed
again, harmlessly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    Connection,
    Row,
    Table,
    bindparam,
    event,
    func,
    insert,
    or_,
    select,
    text,
)
from sqlalchemy.orm import Session

from classifiers.types import Verdict
from gateway.config.loader import Templates
from gateway.emergency import holds as emergency_holds
from gateway.intake.faults import crash_point
from gateway.message import (
    PARSE_DEFECT_TAG,
    TRANSCRIPTION_PENDING,
    TRANSCRIPTION_UNAVAILABLE,
    Automated,
    Customer,
    ParsedMessage,
    Thread,
    contact_of,
    settle_transcription,
    transcription_received,
)
from gateway.outbound.outbox import Draft, gate, render
from gateway.policy.plans import earlier_due
from gateway.policy.sms import sms_gate
from gateway.stages.decide import (
    Accept,
    Decision,
    Discard,
    Hold,
    Reject,
    Reply,
    severity_rank,
)
from gateway.storage import forwarding_tables, ticket_reference
from gateway.storage.bulk import copy_rows
from gateway.storage.models import (
    AttachmentRecord,
    DecisionRecord,
    Intake,
    Message,
    OutboxRow,
    SmsOptOut,
    Ticket,
    TicketEvent,
    TicketPause,
)
from gateway.storage.queries import PROMPT_KINDS, MessageIdIndex, as_utc, opted_out

if TYPE_CHECKING:
    import psycopg


@dataclass(frozen=True)
class PersistContext:
    templates: Templates
    company: str
    mail_domain: str
    own_addresses: tuple[str, ...]
    own_domains: tuple[str, ...]
    per_recipient_limit: int
    per_recipient_window: timedelta
    levels: tuple[str, ...]
    instance: str


# The tables written by Core statements (no ORM unit of work, issue 20 outcome 1): rows nothing
# reads back as objects in the transaction that writes them. Tickets too, on the common path,
# through `forwarding_tables.insert_ticket` (which journals them for forwarding).
_INTAKES = cast(Table, Intake.__table__)
_MESSAGES = cast(Table, Message.__table__)
_ATTACHMENTS = cast(Table, AttachmentRecord.__table__)
_DECISIONS = cast(Table, DecisionRecord.__table__)
_OUTBOX = cast(Table, OutboxRow.__table__)

# Statements built once (building one costs about as much as running it): the intakes that
# already hold this spool entry or this dedup key; the claim of an intake, the message, their
# attachments and decisions; the intake's outcome once known; a ticket's reference; automatic
# messages to one recipient since a moment.
_SEEN_COLUMNS = (
    _INTAKES.c.id,
    _INTAKES.c.spool_id,
    _INTAKES.c.first_key,
    _INTAKES.c.outcome,
    _INTAKES.c.ticket_id,
)
# An intake as the look-ups read it: id, spool_id, first_key, outcome, ticket_id.
_SeenRow = Row[Any, Any, Any, Any, Any]
_SEEN = select(*_SEEN_COLUMNS).where(
    or_(_INTAKES.c.spool_id == bindparam("spool_id"), _INTAKES.c.first_key == bindparam("key"))
)
_SEEN_BATCH = select(*_SEEN_COLUMNS).where(
    or_(
        _INTAKES.c.spool_id.in_(bindparam("spool_ids", expanding=True)),
        _INTAKES.c.first_key.in_(bindparam("keys", expanding=True)),
    )
)
_CLAIM = insert(_INTAKES).returning(_INTAKES.c.id)
_STORE = insert(_MESSAGES).returning(_MESSAGES.c.id)
# `BatchWrites.insert` of a message or an intake written at once (SQLite; a batch's retry).
_INSERT_AT_ONCE = {"messages": _STORE, "intakes": _CLAIM}
# The tables `BatchWrites.insert` writes behind, in the order they are sent.
_BEHIND_TABLES = {
    "tickets": cast(Table, Ticket.__table__), "messages": _MESSAGES, "intakes": _INTAKES
}
# SQLite: their rows go by executemany of these (one per set of columns given).
_BEHIND_INSERTS = {name: insert(table) for name, table in _BEHIND_TABLES.items()}
# SQLite: the largest message and intake id when the batch starts counting its own (BEGIN
# IMMEDIATE makes the batch the only writer, and SQLite gives a new row the largest id plus one).
_LAST_IDS = {
    name: select(func.coalesce(func.max(_BEHIND_TABLES[name].c.id), 0))
    for name in ("messages", "intakes")
}
# One round trip for a batch's message and intake ids: as many of each sequence's as the batch
# has messages (each message stores at most one message and one intake through `insert`).
# Unused ones are gaps in internal ids nobody reads.
_NEXT_IDS = text(
    "SELECT nextval(pg_get_serial_sequence('messages', 'id')),"
    " nextval(pg_get_serial_sequence('intakes', 'id'))"
    " FROM generate_series(1, :n)"
)
# A ticket's id is its reference, which agents and customers read: taken one at a time, when a
# ticket is made, so a batch of discarded mail leaves no gap in the numbers.
_NEXT_TICKET_SQL = "SELECT nextval(pg_get_serial_sequence('tickets', 'id'))"
_QUEUE = insert(_OUTBOX)
# The rows `BatchWrites.write` sends with one statement a table: COPY on PostgreSQL
# (gateway.storage.bulk), an executemany of these INSERTs on SQLite (in process, the plain
# executemany is cheapest there).
_INSERT_INTO = {
    table: insert(table)
    for table in (_ATTACHMENTS, _DECISIONS, _OUTBOX, forwarding_tables.JOURNAL_TABLE)
}
_REFERENCE = select(Ticket.reference).where(Ticket.id == bindparam("ticket_id"))
# At most `cap` of them are counted: the limit only asks "as many as the limit yet?", and an
# exact count of a busy address would read every row of its window for each message.
_RECENT_ROWS = select(OutboxRow.id).where(
    OutboxRow.recipient == bindparam("recipient"),
    OutboxRow.created_at >= bindparam("since"),
    OutboxRow.status.in_(("pending", "sending", "sent")),
)
_RECENT = select(func.count()).select_from(_RECENT_ROWS.limit(bindparam("cap")).subquery())
_RECENT_OF_KIND = select(func.count()).select_from(
    _RECENT_ROWS.where(OutboxRow.kind == bindparam("kind")).limit(bindparam("cap")).subquery()
)
# The same count for a batch's senders at once (the window bounds the rows it reads).
_RECENT_BY_RECIPIENT = (
    select(OutboxRow.recipient, func.count())
    .where(
        OutboxRow.recipient.in_(bindparam("recipients", expanding=True)),
        OutboxRow.created_at >= bindparam("since"),
        OutboxRow.status.in_(("pending", "sending", "sent")),
    )
    .group_by(OutboxRow.recipient)
)
_LAST_TICKET_ID = select(func.coalesce(func.max(Ticket.id), 0))
# The batch's own statements, which its read-your-writes barrier lets pass.
_OWN_STATEMENTS = (_NEXT_IDS, _LAST_TICKET_ID, *_LAST_IDS.values(), *_BEHIND_INSERTS.values())


@dataclass(frozen=True)
class Persisted:
    outcome: str  # ticket | follow-up | duplicate | discard | reject | hold | already-processed
    reference: str | None
    reason: str


def index_safe(value: str, limit: int = 998) -> str:
    """At most `limit` UTF-8 bytes (RFC 5322's line length), cut on a character boundary: an
    indexed column must fit PostgreSQL's btree entry limit (2,704 bytes), and 998 characters of
    non-ASCII text can be three times that. The raw message keeps the whole header."""
    return value.encode("utf-8")[:limit].decode("utf-8", "ignore")


@dataclass(frozen=True)
class Seen:
    """Intakes already recorded for a batch's spool entries or dedup keys, from one query before
    its first message (`look_up`), and which of its messages that answer cannot serve: those
    sharing a dedup key or spool entry with another message of the batch (the earlier one may
    claim it within the batch, or may not, if it fails)."""

    by_spool_id: dict[str, _SeenRow]
    by_key: dict[str, _SeenRow]
    shared: frozenset[str]

    def answers(self, message: ParsedMessage) -> bool:
        return message.spool_id not in self.shared and message.dedup_key not in self.shared


def look_up(session: Session, messages: list[ParsedMessage]) -> Seen:
    """One query for the whole batch instead of one per message (issue 20 outcome 1). Read in the
    batch's transaction: on SQLite after BEGIN IMMEDIATE, so no other writer can claim a key
    before the batch commits; on PostgreSQL a twin racing us still meets the unique constraint
    at the claim, and `_one` retries that message with its own query."""
    spool_ids = [m.spool_id for m in messages]
    keys = [m.dedup_key for m in messages]
    counts = Counter([*spool_ids, *keys])
    by_spool_id: dict[str, _SeenRow] = {}
    by_key: dict[str, _SeenRow] = {}
    for row in session.connection().execute(_SEEN_BATCH, {"spool_ids": spool_ids, "keys": keys}):
        by_spool_id[row.spool_id] = row
        if row.first_key is not None:
            by_key[row.first_key] = row
    shared = frozenset(value for value, count in counts.items() if count > 1)
    return Seen(by_spool_id, by_key, shared)


class BatchWrites:
    """Persist's state across the messages of one batch, in the batch's one transaction, so
    that work is done once a batch rather than once a message (issue 20 outcome 1):

    - `seen`: the intakes its spool entries and dedup keys already have (`look_up`);
    - ticket ids on SQLite, where BEGIN IMMEDIATE makes the batch the only writer: the largest
      id once, then counted on, so a new ticket's reference goes in its own INSERT (SQLite
      itself gives a new row the largest id plus one, so the ids are the same);
    - when `deferred`, the new tickets, stored messages and intakes written behind
      (`insert`), their rows sent with one statement a table (COPY on PostgreSQL,
      gateway.storage.bulk; an executemany on SQLite) either before the next statement of any
      kind on the transaction's connection (`watch`: a read-your-writes barrier, so a thread
      look-up, the ORM or the emergency wing always sees them, and no SAVEPOINT opens with
      rows still pending) or at the end of the batch. On PostgreSQL message and intake ids are
      taken from their sequences for the whole batch in one round trip (a ticket's as it is
      made: its number is its reference, and discarded mail must not leave gaps in it); each
      of those statements was a round trip a message (bench/stage_budgets.py --postgresql). On
      SQLite they are counted on from the tables' largest ids, read again after any statement
      not the batch's own (which might have added a row); each was a statement's Python cost
      a message (about a third of persist). A row that fails there (a twin's claim of a dedup
      key) marks the batch `spoilt`: it is written again, one savepoint a message;
    - rows nothing reads back in the transaction (a message's decisions, its attachments, the
      forwarding journal), written with one statement per table by `write` (COPY on
      PostgreSQL): at the end of the batch when `deferred`, else at the end of each message,
      in its savepoint;
    - when `deferred`, the automatic messages per recipient in the per-recipient window: one
      query for the batch's senders, then counted as the batch queues replies, whose outbox
      rows then wait for `write` too (but an emergency's confirmation request, which the
      emergency wing reads back so as never to send two). Without `deferred` (a batch's
      retry, one savepoint a message) each message counts its own: a message rolled back to
      its savepoint would leave its replies in a running count."""

    def __init__(
        self,
        seen: Seen,
        deferred: bool,
        counts: dict[str, int] | None,
        sqlite: bool,
        messages: int = 1,
    ) -> None:
        self.seen = seen
        self.deferred = deferred
        self.counts = counts
        self._sqlite = sqlite
        self._messages = max(1, messages)
        self._last_ticket_id: int | None = None
        self.journal: list[dict[str, Any]] = []
        self._rows: list[tuple[Table, list[dict[str, Any]]]] = []
        # (recipient, kind) of the automatic messages queued with the batch's rows, not yet
        # in the outbox.
        self.queued: set[tuple[str, str]] = set()
        #: Tickets, messages and intakes are written behind (`deferred`).
        self.behind = deferred
        self._behind: list[tuple[str, dict[str, Any]]] = []
        self._ids: dict[str, list[int]] = {}
        # SQLite: the next message and intake id to give, while no other statement ran.
        self._next_sqlite: dict[str, int] = {}
        #: The batch's thread look-ups, told of each message the batch stores (`deferred` only).
        self.thread_index: MessageIdIndex | None = None
        #: A row written behind failed: the batch must be written again (`_RetryWithSavepoints`).
        self.spoilt = False
        self._watched: Connection | None = None

    def ticket_id(self, conn: Connection) -> int | None:
        """The next ticket's id where the batch chooses it (SQLite; PostgreSQL written behind),
        else None (the INSERT takes it from the sequence)."""
        if self.behind and not self._sqlite:
            # On the driver's connection (psycopg 3, in this transaction): no SQL compiled, no
            # barrier, one short round trip (~190 µs here; through SQLAlchemy ~300).
            dbapi = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
            row = dbapi.execute(_NEXT_TICKET_SQL).fetchone()
            assert row is not None  # nextval always returns a row
            return int(row[0])
        if not self._sqlite:
            return None
        if self._last_ticket_id is None:
            self._last_ticket_id = int(conn.execute(_LAST_TICKET_ID).scalar_one())
        self._last_ticket_id += 1
        return self._last_ticket_id

    def insert(self, conn: Connection, table: str, row: dict[str, Any]) -> int:
        """Insert `row` into `table` and return its id: written behind when `behind` (a ticket's
        row, from `forwarding_tables.insert_ticket`, carries the id `ticket_id` gave it), else at
        once (messages and intakes; a ticket at once is inserted by `insert_ticket` itself)."""
        if not self.behind:
            return int(conn.execute(_INSERT_AT_ONCE[table], row).scalar_one())
        row_id = row["id"] if table == "tickets" else self._next_id(conn, table)
        self._behind.append((table, {**row, "id": row_id}))
        if table == "messages" and self.thread_index is not None:
            self.thread_index.add(row["header_message_id"], row_id, row["ticket_id"])
        return int(row_id)

    def _next_id(self, conn: Connection, table: str) -> int:
        if self._sqlite:
            if table not in self._next_sqlite:
                self._next_sqlite[table] = int(conn.execute(_LAST_IDS[table]).scalar_one()) + 1
            row_id = self._next_sqlite[table]
            self._next_sqlite[table] = row_id + 1
            return row_id
        pool = self._ids.get(table)
        if not pool:
            # The first of the batch, or (never in practice) more than one a message: a batch's
            # worth more. Unused ids are gaps, as a rolled-back insert leaves.
            for row in conn.execute(_NEXT_IDS, {"n": self._messages}):
                for name, row_id in zip(("messages", "intakes"), row, strict=True):
                    self._ids.setdefault(name, []).append(int(row_id))
            for ids in self._ids.values():
                ids.sort(reverse=True)  # popped in ascending order, as the table would number
            pool = self._ids[table]
        return int(pool.pop())

    def watch(self, conn: Connection) -> None:
        """Write the rows written behind before any other statement on `conn`, until `unwatch`."""
        if self.behind and self._watched is None:
            event.listen(conn, "before_execute", self._barrier)
            self._watched = conn

    def unwatch(self) -> None:
        if self._watched is not None:
            event.remove(self._watched, "before_execute", self._barrier)
            self._watched = None

    def _barrier(self, conn: Connection, statement: Any, *_params: Any) -> None:
        # The batch's own statements pass (by identity: a SQL expression's == builds SQL, not a
        # bool): its id reservations read no row of its own, its writes behind are the writing.
        if any(statement is own for own in _OWN_STATEMENTS):
            return
        if self._behind:
            self._write_behind(conn)
        # Any other statement may add a message or an intake (the ORM, the emergency wing):
        # SQLite's counted ids are read again before the next is given.
        self._next_sqlite.clear()

    def _write_behind(self, conn: Connection) -> None:
        rows, self._behind = self._behind, []  # taken first: these statements pass the barrier
        grouped: dict[str, list[dict[str, Any]]] = {"tickets": [], "messages": [], "intakes": []}
        for table, row in rows:
            grouped[table].append(row)
        try:
            # In this order: a message names its ticket, an intake both.
            for table, group in grouped.items():
                if not self._sqlite:
                    copy_rows(conn, _BEHIND_TABLES[table], group)
                    continue
                # One executemany per set of columns: it compiles its INSERT from one row's.
                by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
                for row in group:
                    by_columns.setdefault(tuple(row), []).append(row)
                for rows_alike in by_columns.values():
                    conn.execute(_BEHIND_INSERTS[table], rows_alike)
        except Exception:
            self.spoilt = True  # whoever catches this, the batch is not committed as it is
            raise

    def add(self, table: Table, rows: list[dict[str, Any]]) -> None:
        self._rows.append((table, rows))

    def forget(self) -> None:
        """Drop the rows added since the last write: their message rolled back to its
        savepoint."""
        self._rows = []
        self._behind = []
        self.journal = []
        self.queued = set()

    def write(self, conn: Connection) -> None:
        """Every row added since the last write, one executemany per statement (the rows
        written behind first: the others name them)."""
        if self._behind:
            self._write_behind(conn)
        if self.journal:
            self.add(forwarding_tables.JOURNAL_TABLE, self.journal)
            self.journal = []
        grouped: dict[Table, list[dict[str, Any]]] = {}
        for table, rows in self._rows:
            grouped.setdefault(table, []).extend(rows)
        self._rows = []
        self.queued = set()
        for table, rows in grouped.items():
            if self._sqlite:
                conn.execute(_INSERT_INTO[table], rows)
            else:
                copy_rows(conn, table, rows)


def begin_batch(
    session: Session, messages: list[ParsedMessage], ctx: PersistContext, now: datetime,
    *, deferred: bool,
) -> BatchWrites:
    """Persist's look-ups for a batch about to be recorded, in its transaction: its intakes
    (`look_up`) and, when `deferred`, its senders' automatic messages in the window."""
    conn = session.connection()
    counts: dict[str, int] | None = None
    if deferred:
        senders = sorted({m.sender.lower() for m in messages if m.sender})
        counts = dict.fromkeys(senders, 0)
        if senders:
            since = now - ctx.per_recipient_window
            for recipient, count in conn.execute(
                _RECENT_BY_RECIPIENT, {"recipients": senders, "since": since}
            ):
                counts[recipient] = int(count)
    return BatchWrites(
        look_up(session, messages), deferred, counts, conn.dialect.name == "sqlite", len(messages)
    )


@dataclass(frozen=True)
class _Opened:
    """What the replies need of the message's ticket, however it was written (a Core insert or
    an ORM object)."""

    id: int
    reference: str
    queue: str
    severity: str
    account_id: str

    @classmethod
    def of(cls, ticket: Ticket) -> _Opened:
        return cls(
            ticket.id, ticket.reference or "", ticket.queue, ticket.severity, ticket.account_id
        )


def record(
    session: Session,
    message: ParsedMessage,
    customer: Customer,
    automated: Automated,
    thread: Thread,
    verdict: Verdict,
    decision: Decision,
    ctx: PersistContext,
    now: datetime,
    batch: BatchWrites,
    *,
    look_again: bool = False,
) -> Persisted:
    """Write what became of `message`. `batch` is its batch's state (`begin_batch`): its
    look-up of earlier intakes answers unless `look_again` (a retry after a twin's claim) or
    another message of the batch shares this one's dedup key or spool entry; then this
    message's own query does."""
    # Core statements on the session's connection, so in its transaction (and this message's
    # savepoint, if it has one): the common path (a new ticket, a plain follow-up) builds no
    # ORM object for the intake, the message or its attachments (issue 20 outcome 1).
    conn = session.connection()
    # This spool entry already recorded? This dedup key already claimed?
    seen = None if look_again else batch.seen
    if seen is not None and seen.answers(message):
        done = seen.by_spool_id.get(message.spool_id)
        first = seen.by_key.get(message.dedup_key)
    else:  # one query for both
        done = first = None
        for row in conn.execute(_SEEN, {"spool_id": message.spool_id, "key": message.dedup_key}):
            if row.spool_id == message.spool_id:
                done = row
            if row.first_key == message.dedup_key:
                first = row
    if done is not None:
        # This very spool entry was committed before a crash kept it in the spool.
        return Persisted(
            "already-processed", None, f"spool entry already recorded as {done.outcome}"
        )
    intake: dict[str, Any] = {
        "spool_id": message.spool_id,
        "dedup_key": message.dedup_key,
        "channel": message.channel,
        "sender": message.sender[:320],
        "received_at": message.received_at,
        "processed_at": now,
        "instance": ctx.instance,
    }
    if first is not None:
        ticket_ref = (
            conn.execute(_REFERENCE, {"ticket_id": first.ticket_id}).scalar_one_or_none()
            if first.ticket_id
            else None
        )
        reason = (
            f"same message as intake {first.id} ({first.outcome}"
            + (f", {ticket_ref}" if ticket_ref else "")
            + f") by dedup key {message.dedup_key[:80]}"
        )
        batch.insert(
            conn,
            "intakes",
            {
                **intake,
                "first_key": None,
                "outcome": "duplicate",
                "duplicate_of": first.id,
                "ticket_id": first.ticket_id,
                "message_id": None,
                "reason": reason,
            },
        )
        return Persisted("duplicate", ticket_ref, reason)

    outcome = decision.outcome
    ticket: Ticket | _Opened | None = None
    kind: str
    if isinstance(outcome, Accept | Hold):
        ticket, kind = _ticket_for(
            session, conn, message, customer, thread, verdict, decision, ctx, now, batch
        )
        if isinstance(outcome, Hold):
            # The request is held, not the ticket: the emergency wing marks it (holds.apply).
            kind = "hold"
    elif isinstance(outcome, Discard):
        kind = "discard"
    elif isinstance(outcome, Reject):
        kind = "reject"
    else:  # pragma: no cover - the Outcome union is closed
        raise TypeError(f"unknown outcome {outcome!r}")
    ticket_id = ticket.id if ticket else None

    stored_id = batch.insert(
        conn,
        "messages",
        {
            "ticket_id": ticket_id,
            "direction": "in",
            "channel": message.channel,
            "header_message_id": index_safe(message.message_id) if message.message_id else None,
            "in_reply_to": " ".join(message.in_reply_to)[:2000],
            "sender": message.sender[:320],
            "sender_name": message.sender_name[:320],
            "recipients": ", ".join(message.recipients)[:2000],
            "subject": message.subject,
            "sent_at": message.date,
            "received_at": message.received_at,
            "text": message.text,
            "raw_sha256": message.raw_sha256,
            "raw_size": message.raw_size,
            # What the parse lost or altered first, so the cap never cuts those off.
            "defects": ",".join((*(d.encoded() for d in message.parse_defects), *message.defects))[
                :2000
            ],
            "automated": automated.kind,
            "verdict": verdict.to_json(),
        },
    )
    # The claim of the dedup key, written whole once the ticket and message exist (no UPDATE
    # to settle it): a racing twin fails here on the unique constraint, and everything this
    # message wrote rolls back with it. Within one transaction the order of the writes changes
    # nothing another transaction can see.
    intake_id = batch.insert(
        conn,
        "intakes",
        {
            **intake,
            "first_key": message.dedup_key,
            "outcome": kind,
            "reason": outcome.reason[:4000],
            "ticket_id": ticket_id,
            "message_id": stored_id,
            "duplicate_of": None,
        },
    )
    crash_point("mid-transaction")
    if message.attachments:
        batch.add(
            _ATTACHMENTS,
            [
                {
                    "message_id": stored_id,
                    "filename": att.filename,
                    "content_type": att.content_type[:255],
                    "size": att.size,
                    "sha256": att.sha256,
                    "stored": att.content is not None,
                }
                for att in message.attachments
            ],
        )
    if decision.reasons:
        # About six rows a message, written with the batch's.
        batch.add(
            _DECISIONS,
            [
                {
                    "intake_id": intake_id,
                    "ticket_id": ticket_id,
                    "stage": reason.stage,
                    "code": reason.code[:64],
                    "text": reason.text[:4000],
                }
                for reason in decision.reasons
            ],
        )
    # -- Twilio: SMS opt-outs and the voicemail transcript (channels/twilio.py) ---------------
    if decision.sms_opt:
        _record_opt(session, message.sender, decision.sms_opt, now)
    if isinstance(ticket, Ticket) and message.channel == "twilio-voice":
        stored = session.get(Message, stored_id)
        assert stored is not None  # inserted above, in this transaction
        _voicemail_update(session, ticket, message, stored)
    # -- end Twilio ---------------------------------------------------------------------------
    # -- emergency support: the hold, the incident and its billing, or the link ----------------
    billed: tuple[tuple[str, str], ...] = ()
    if isinstance(ticket, Ticket) and decision.emergency_step is not None:
        # The emergency wing reads the outbox and may queue messages through the ORM, which
        # the batch's running count would miss: the batch's rows go first, and the count
        # starts afresh (the ORM's rows are flushed before the next message).
        batch.write(conn)
        billed = emergency_holds.apply(session, ticket, decision, thread, now)
        if batch.counts is not None:
            batch.counts.clear()
    # -- end emergency ------------------------------------------------------------------------
    opened = _Opened.of(ticket) if isinstance(ticket, Ticket) else ticket
    for reply in decision.replies:
        if billed and reply.template.startswith(("emergency-", "confirm-charge")):
            reply = replace(reply, values=(*reply.values, *billed))
        _queue_reply(
            session, conn, reply, message, customer, automated, opened, intake_id, ctx, now, batch
        )
    if not batch.deferred:
        batch.write(conn)
    return Persisted(kind, opened.reference if opened else None, outcome.reason)


def _needs_ticket_object(message: ParsedMessage, decision: Decision) -> bool:
    """Does `record` change this message's ticket after writing it (the voicemail transcript,
    an emergency's hold, incident or link)? Those are written through an ORM `Ticket`; every
    other new ticket is one Core insert."""
    return message.channel == "twilio-voice" or decision.emergency_step is not None


def _with_defect_tag(tags: list[str] | None, message: ParsedMessage) -> list[str]:
    """The queue page marks a ticket part of whose message was lost or altered in parsing
    (issue 19); `show` and the API list what, the raw message has it all."""
    tags = list(tags or [])
    if message.parse_defects and PARSE_DEFECT_TAG not in tags:
        tags.append(PARSE_DEFECT_TAG)
    return tags


def _ticket_for(
    session: Session,
    conn: Connection,
    message: ParsedMessage,
    customer: Customer,
    thread: Thread,
    verdict: Verdict,
    decision: Decision,
    ctx: PersistContext,
    now: datetime,
    batch: BatchWrites,
) -> tuple[Ticket | _Opened, str]:
    if thread.kind in ("follow-up", "reopen") and thread.ticket is not None:
        ticket = current_locked(session, thread.ticket.id)
        if ticket is not None:
            _follow_up(session, ticket, message, thread, verdict, decision, ctx, now)
            return ticket, "follow-up"
    values = _new_ticket(message, customer, thread, verdict, decision, ctx, now)
    chosen = batch.ticket_id(conn)
    if _needs_ticket_object(message, decision):
        if chosen is not None:
            created = Ticket(**values, id=chosen, reference=ticket_reference.reference(chosen))
            session.add(created)
            session.flush()
        else:
            created = Ticket(**values)
            session.add(created)
            session.flush()
            created.reference = ticket_reference.reference(created.id)
        return created, "ticket"
    ticket_id = forwarding_tables.insert_ticket(
        conn, values, chosen, batch.journal,
        defer=(lambda row: batch.insert(conn, "tickets", row)) if batch.behind else None,
    )
    opened = _Opened(
        ticket_id,
        ticket_reference.reference(ticket_id),
        values["queue"],
        values["severity"],
        values["account_id"],
    )
    return opened, "ticket"


def current_locked(session: Session, ticket_id: int) -> Ticket | None:
    """A follow-up's ticket as it is now, held against other writers until the batch commits.

    PostgreSQL: SELECT ... FOR UPDATE with the row's values read again (populate_existing). The
    thread look-up read the ticket without a lock, and a change another worker committed since
    would otherwise be written over when this follow-up's counts are flushed.
    SQLite: BEGIN IMMEDIATE made this transaction the only writer from its start, so a ticket it
    has loaded is current; it comes from the session with no statement (SQLite has no FOR
    UPDATE: the query was a round trip and, at every follow-up, a flush of the batch's rows
    written behind; issue 20)."""
    if session.get_bind().dialect.name == "sqlite":
        return session.get(Ticket, ticket_id)
    return session.get(Ticket, ticket_id, with_for_update=True, populate_existing=True)


def _follow_up(
    session: Session,
    ticket: Ticket,
    message: ParsedMessage,
    thread: Thread,
    verdict: Verdict,
    decision: Decision,
    ctx: PersistContext,
    now: datetime,
) -> None:
    """The message joins `ticket` (loaded for update): counts, reopening, the resolution clock,
    a raised severity, emergency and queue-jump marks, and routing decided again."""
    ticket.message_count += 1
    ticket.updated_at = now
    if thread.kind == "reopen":
        session.add(
            TicketEvent(
                ticket_id=ticket.id,
                kind="status",
                old=ticket.status,
                new="reopened",
                reason=thread.reason,
                actor="gateway",
                at=now,
            )
        )
        ticket.status = "reopened"
        ticket.closed_at = None
    rank = severity_rank(ctx.levels, decision.severity)
    ticket.last_activity_at = now
    if ticket.waiting_since is not None:
        # The customer answered: the resolution clock runs again.
        ticket.waiting_since = None
        pause = (
            session.execute(
                select(TicketPause).where(
                    TicketPause.ticket_id == ticket.id, TicketPause.ended_at.is_(None)
                )
            )
            .scalars()
            .first()
        )
        if pause is not None:
            pause.ended_at = now
        if ticket.status == "waiting":
            ticket.status = "open"
    if rank < ticket.severity_rank:
        # A follow-up may raise a ticket's severity (the customer says it got worse),
        # never lower it: an agent lowers severity, with a reason.
        step = decision.emergency_step
        acknowledged = step is not None and step.acknowledged  # emergency.py's top level
        session.add(
            TicketEvent(
                ticket_id=ticket.id,
                kind="severity",
                old=ticket.severity,
                new=decision.severity,
                reason=step.reason if step and acknowledged else verdict.explain(),
                actor="emergency" if acknowledged else "classifier",
                at=now,
            )
        )
        ticket.severity = decision.severity
        ticket.severity_rank = rank
    if decision.emergency and not ticket.emergency:
        ticket.emergency = True  # a caller's keypress after the first event of a call
    if decision.jump_queue and not ticket.jump_queue:
        ticket.jump_queue = True
        ticket.jump_reason = verdict.explain()
    step = decision.emergency_step
    if decision.applies_routing and not (step is not None and step.acknowledged):
        # An acknowledged emergency is routed and timed by the emergency wing (holds.apply),
        # with the same earlier-only rule: applying it here too wrote a routing event naming a
        # due time the ticket did not keep.
        _reroute(session, ticket, decision, now)
    if message.parse_defects and PARSE_DEFECT_TAG not in (ticket.tags or []):
        ticket.tags = _with_defect_tag(ticket.tags, message)


def _new_ticket(
    message: ParsedMessage,
    customer: Customer,
    thread: Thread,
    verdict: Verdict,
    decision: Decision,
    ctx: PersistContext,
    now: datetime,
) -> dict[str, Any]:
    """A new ticket's columns (its reference comes from its id, once inserted). Every column,
    defaults included: a Core INSERT missing some runs SQLAlchemy's default machinery for them
    on each execution (bench/stage_budgets.py: about a third of the INSERT's cost)."""
    return dict(
        status="new",
        held=False,
        hold_reason="",
        emergency_acknowledged=False,
        emergency_pending=False,
        escalation_level=0,
        severity=decision.severity,
        severity_rank=severity_rank(ctx.levels, decision.severity),
        jump_queue=decision.jump_queue,
        jump_reason=verdict.explain() if decision.jump_queue else "",
        channel=message.channel,
        account_id=customer.account_id,
        contact_email=contact_of(customer, message)[:320] or None,
        contact_name=(customer.contact_name or message.sender_name or "")[:200] or None,
        plan=customer.plan,
        queue=decision.queue,
        subject=message.subject,
        language=customer.language,
        created_at=now,
        updated_at=now,
        message_count=1,
        linked_from_id=thread.ticket.id if thread.kind == "new-linked" and thread.ticket else None,
        emergency=decision.emergency,
        routing_rule=decision.route.rule if decision.route else "",
        tags=_with_defect_tag(list(decision.route.tags) if decision.route else [], message),
        assignee_hint=decision.route.assignee if decision.route else "",
        calendar=decision.sla.calendar if decision.sla else "",
        first_response_minutes=decision.sla.first_response_minutes if decision.sla else None,
        resolution_minutes=decision.sla.resolution_minutes if decision.sla else None,
        first_response_due=decision.first_response_due,
        resolution_due=decision.resolution_due,
        last_activity_at=now,
        explanation={
            "classifier": verdict.to_json(),
            "reasons": [
                {"stage": r.stage, "code": r.code, "text": r.text} for r in decision.reasons
            ],
            "queue": decision.queue,
        },
    )


def _reroute(session: Session, ticket: Ticket, decision: Decision, now: datetime) -> None:
    """A follow-up that raised its ticket (decide's `applies_routing`): the routing and SLA
    decided again are applied, so a voicemail's transcript reaches the queue, clock and on-call
    its words call for (issue 18 item 1). Due times only ever move earlier; tags are added,
    never removed. The change is recorded as a `routing` event."""
    route, sla = decision.route, decision.sla
    if route is None:
        return
    before = f"{ticket.queue} ({ticket.routing_rule or 'default'})"
    ticket.queue = decision.queue
    ticket.routing_rule = route.rule
    tags = list(ticket.tags or [])
    ticket.tags = tags + [t for t in dict.fromkeys(route.tags) if t not in tags]
    if route.assignee:
        ticket.assignee_hint = route.assignee
    if sla is not None:
        ticket.calendar = sla.calendar
        ticket.first_response_minutes = sla.first_response_minutes
        ticket.resolution_minutes = sla.resolution_minutes
    ticket.first_response_due = earlier_due(ticket.first_response_due, decision.first_response_due)
    ticket.resolution_due = earlier_due(ticket.resolution_due, decision.resolution_due)
    due = as_utc(ticket.first_response_due)
    session.add(
        TicketEvent(
            ticket_id=ticket.id,
            kind="routing",
            old=before[:64],
            new=f"{ticket.queue} ({route.rule or 'default'})"[:64],
            reason=f"raised to {decision.severity}: {route.reason}; first response due "
            f"{due.isoformat().replace('+00:00', 'Z') if due else 'none'}",
            actor="gateway",
            at=now,
        )
    )


def _queue_reply(
    session: Session,
    conn: Connection,
    reply: Reply,
    message: ParsedMessage,
    customer: Customer,
    automated: Automated,
    ticket: _Opened | None,
    intake_id: int,
    ctx: PersistContext,
    now: datetime,
    batch: BatchWrites,
) -> None:
    template = reply.template
    recipient = (reply.to or message.sender).lower()
    # Twilio contacts are answered by SMS, to their number (staff notifications stay email).
    sms = message.channel.startswith("twilio") and not reply.internal
    if sms and ctx.templates.get(f"sms-{template}", customer.language) is not None:
        template = f"sms-{template}"
    if reply.internal:
        # Staff notifications: our own domain is expected; only a missing address stops them.
        why_not = None if "@" in recipient else "no notification address"
    elif sms:
        why_not = sms_gate(recipient, automated, opted_out(session, recipient))
    else:
        why_not = gate(recipient, automated, ctx.own_addresses, ctx.own_domains)
    draft: Draft | None = None
    if why_not is None:
        values = dict(reply.values)
        if ticket is not None:
            values.setdefault("queue", ticket.queue)
            values.setdefault("severity", ticket.severity)
            values.setdefault("account", ticket.account_id)
            values.setdefault("sender", message.sender)
        draft = render(
            ctx.templates,
            template,
            customer,
            message,
            ticket.reference if ticket else "",
            ctx.company,
            ctx.mail_domain,
            values,
            recipient,
        )
        if draft is None:
            why_not = f"template {template!r} does not exist"
    if why_not is None:
        # The count reads only outbox rows, which are written straight away below (Core, not
        # the ORM), so nothing pending in the session could change it: no autoflush here.
        recent, told = _recent_to(conn, recipient, template, sms, reply, ctx, now, batch)
        if told:
            why_not = f"{recipient} was already told this plan excludes SMS in this window"
        if why_not is None and recent >= ctx.per_recipient_limit:
            why_not = (
                f"per-recipient limit: {recent} or more automatic messages to {recipient} "
                f"in the last {int(ctx.per_recipient_window.total_seconds() // 60)} minutes"
            )
    row = {
        "header_message_id": draft.header_message_id
        if draft
        else f"suppressed-{intake_id}-{template}@{ctx.mail_domain}",
        "ticket_id": ticket.id if ticket else None,
        "intake_id": intake_id,
        "kind": template,
        "channel": "sms" if sms else "email",
        "recipient": recipient[:320] or "-",
        "subject": draft.subject if draft else "",
        "body": draft.body if draft else "",
        "in_reply_to": index_safe(draft.in_reply_to) if draft and draft.in_reply_to else None,
        "status": "pending" if why_not is None else "suppressed",
        "status_reason": why_not or "",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }
    if batch.counts is None or template in PROMPT_KINDS:
        # One Core insert: the row is in the database at once, so the next reply's count sees
        # it (and the emergency wing, in this transaction, the confirmation request it must
        # not send twice), and no ORM object is left for a flush to walk.
        conn.execute(_QUEUE, row)
        return
    # With the batch's rows: nothing in the batch reads it back (the count is kept below, and
    # no later message can answer or thread to mail that is not sent until the commit).
    batch.add(_OUTBOX, [row])
    if why_not is None:
        batch.counts[recipient] = batch.counts.get(recipient, 0) + 1
        batch.queued.add((recipient, template))


def _recent_to(
    conn: Connection,
    recipient: str,
    template: str,
    sms: bool,
    reply: Reply,
    ctx: PersistContext,
    now: datetime,
    batch: BatchWrites,
) -> tuple[int, int]:
    """Automatic messages to `recipient` in the per-recipient window, counted up to the limit
    (from the batch's running count where it keeps one), and (SMS "unentitled" only) whether
    one of them already told this sender the plan excludes SMS."""
    since = now - ctx.per_recipient_window
    window = {"recipient": recipient, "since": since}
    counts = batch.counts
    if counts is not None and recipient in counts:
        recent = min(counts[recipient], ctx.per_recipient_limit)
    else:
        recent = conn.execute(_RECENT, {**window, "cap": ctx.per_recipient_limit}).scalar_one()
        if counts is not None:
            counts[recipient] = recent
    told = 0
    if sms and reply.template == "unentitled":
        # One polite "not on your plan" text per window, however often they write.
        told = int((recipient, template) in batch.queued) or conn.execute(
            _RECENT_OF_KIND, {**window, "kind": template, "cap": 1}
        ).scalar_one()
    return recent, told


# -- Twilio SMS and voicemail helpers (channels/twilio.py, gateway/stages/parse_twilio.py) -----


def _record_opt(session: Session, phone: str, opt: str, now: datetime) -> None:
    row = session.execute(select(SmsOptOut).where(SmsOptOut.phone == phone)).scalar_one_or_none()
    if row is None:
        row = SmsOptOut(phone=phone[:32])
        session.add(row)
    row.opted_out = opt == "out"
    row.keyword = "STOP" if opt == "out" else "START"
    row.updated_at = now


def _voicemail_update(
    session: Session, ticket: Ticket, message: ParsedMessage, stored: Message
) -> None:
    """One voicemail ticket whatever the order of its events: the transcript becomes the
    ticket's subject line and replaces "pending" on the recording's message; a recording that
    arrives after its transcript is stored as already transcribed."""
    event = message.header("x-twilio-event")
    siblings = list(
        session.execute(
            select(Message).where(Message.ticket_id == ticket.id, Message.id != stored.id)
        ).scalars()
    )
    transcribed = [m for m in siblings if (m.header_message_id or "").startswith("transcription.")]
    if event == "transcription" and not message.text.startswith(TRANSCRIPTION_UNAVAILABLE):
        ticket.subject = message.subject
        for sibling in siblings:
            if TRANSCRIPTION_PENDING in sibling.text:
                sibling.text = settle_transcription(
                    sibling.text, transcription_received(stored.received_at)
                )
    elif event == "recording" and transcribed and TRANSCRIPTION_PENDING in stored.text:
        stored.text = settle_transcription(
            stored.text, transcription_received(transcribed[0].received_at)
        )
