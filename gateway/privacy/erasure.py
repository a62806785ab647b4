"""Erasure: `gateway erase --contact ADDRESS|PHONE` removes one person's personal data.

Owns who a person is in the data (an email address, or an E.164 number in every common
formatting), their pseudonym, and the rules that remove them:

* **Their messages** (sent from the address or number, or our outgoing messages to it) lose
  text, subject, sender name, attachments and raw message; outbox rows to them lose subject and
  body, and those not yet sent are suppressed ("recipient erased"). Tickets they opened lose
  their subject; tickets whose contact they are lose contact address and name. Severity labels
  made from a ticket they opened (a copy of their words) are deleted, and so are their rows in
  `customer_contacts` (an import replaces contacts; the CSV itself is the admin's to edit).
* **Everywhere else** — every String, Text and JSON column of every table in `Base.metadata`,
  so also the tables later features add (billing ledger evidence, webhook bodies, audit before
  and after) — the address or number is replaced by the person's pseudonym
  `erased:<16 hex>` (HMAC-SHA256 of "email:<address>" or "phone:<E.164>" under a random salt
  created once in the state directory). Billing rows keep a stable pseudonymous reference and
  every amount; intakes keep their dedup keys (a replay is still a duplicate).
* **In rows about them** — their tickets, every row that references those tickets, their
  messages or intakes through a foreign key (found from the schema, transitively), and audit
  entries naming those tickets — the lines of their messages, their subjects and their name are
  replaced with "[erased]": quoted copies in agents' replies, acknowledgement subjects, webhook
  bodies (also JSON-escaped), severity labels. A message changed this way loses its raw message.
* **Blobs and spool**: their raw messages and attachments are deleted unless another kept
  message still names the same content (a shared logo); any blob that contains the address or
  number (byte search; unreferenced raw messages are also MIME-decoded) is deleted, whoever's it
  is, and the rows naming it say so (`raw_sha256 = ""`, `stored = false`). Quarantined spool
  entries mentioning them are deleted; entries still waiting to be processed are reported.
* **Verification**: after the changes (in the transaction, and again after the commit) every
  text column of every table is searched for the address and number (every formatting), the
  rows about them for their text and name, every blob and spool entry for the identifiers.
  Anything found is reported and the erasure fails (in the transaction: rolled back).

Applied in one transaction with one audit entry (`privacy.erase`, target and contents naming
only pseudonyms). Blob files are deleted (and their directories fsynced) just before the commit:
a failed commit leaves rows naming missing blobs, which the admin's next run erases anyway,
never a committed erasure whose files survived a crash.

Must never: write the identifier or the salt into the audit log or a log; delete a billing row or
change an amount; rewrite a config file (a contact in customers.toml or any other config file is
reported, and `apply` refuses without `force`); change anything on a dry run (which only reads;
the salt file is created on first use). Limits, said plainly: text inside compressed attachments
of other people's messages (PDF streams, Office files) is not found by the byte search; copies
outside the gateway (the IMAP mailbox, Twilio's logs, backups, log files) are reported in notes,
not removed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    String,
    Table,
    Text,
    cast,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Mapper, Session, sessionmaker

from gateway.intake.blobs import BlobStore, read_blob_file
from gateway.intake.spool import Spool
from gateway.privacy.audit import Actor, record_action
from gateway.privacy.identity import (
    ERASED,
    SEPARATORS,
    ErasureError,
    Matcher,
    Person,
    fragments_of,
    install_salt,
    parse_contact,
    pseudonym,
    subject_fragment,
)
from gateway.privacy.retention import blob_files, chunks, delete_files, still_referenced
from gateway.storage.agent_tables import AuditEntry
from gateway.storage.models import (
    AttachmentRecord,
    Base,
    CustomerContact,
    Intake,
    Message,
    OutboxRow,
    SeverityLabel,
    Ticket,
)

_MAX_CONFIG_FILE: Final = 4 * 1024 * 1024

# ---- where: the schema, generically -----------------------------------------------------------


def _text_columns(table: Table) -> list[Column[Any]]:
    return [c for c in table.columns if isinstance(c.type, String | JSON)]


def _pk(table: Table) -> list[Column[Any]]:
    return list(table.primary_key.columns)


def _mappers() -> dict[str, Mapper[Any]]:
    return {
        m.local_table.name: m for m in Base.registry.mappers if isinstance(m.local_table, Table)
    }


def _digits(expr: ColumnElement[Any]) -> ColumnElement[Any]:
    """The column with phone separators removed (portable: nested REPLACE on both databases)."""
    for sep in SEPARATORS:
        expr = func.replace(expr, sep, "")
    return expr


@functools.lru_cache(maxsize=512)
def _prefilter(table: Table, people: tuple[Person, ...]) -> ColumnElement[bool] | None:
    """SQL that keeps every row that might hold an identifier (the regex then decides). Built
    once per table and person: the expression is large and a run uses it three times."""
    conditions: list[ColumnElement[bool]] = []
    for column in _text_columns(table):
        text: ColumnElement[Any] = cast(column, Text) if isinstance(column.type, JSON) else column
        length = getattr(column.type, "length", None)
        for person in people:
            shortest = len(person.value) if person.kind == "email" else len(person.national)
            if isinstance(length, int) and length < shortest:
                continue  # a status or currency column cannot hold it
            if person.kind == "email":
                lowered = func.lower(text)
                conditions.append(lowered.contains(person.value, autoescape=True))
                conditions.append(
                    lowered.contains(person.value.replace("@", "%40"), autoescape=True)
                )
            else:
                conditions.append(_digits(text).contains(person.national, autoescape=True))
    return or_(*conditions) if conditions else None


Key = tuple[Any, ...]


def _rows(session: Session, table: Table, where: ColumnElement[bool]) -> dict[Key, dict[str, Any]]:
    pk = _pk(table)
    out: dict[Key, dict[str, Any]] = {}
    for row in session.execute(select(table).where(where)).mappings():
        out[tuple(row[c.name] for c in pk)] = dict(row)
    return out


def _rows_by_key(session: Session, table: Table, keys: Iterable[Key]) -> dict[Key, dict[str, Any]]:
    pk = _pk(table)
    out: dict[Key, dict[str, Any]] = {}
    if len(pk) != 1:
        for key in keys:
            cond = [c == v for c, v in zip(pk, key, strict=True)]
            out.update(_rows(session, table, cond[0] if len(cond) == 1 else cond[0] & cond[1]))
        return out
    for part in chunks([k[0] for k in keys]):
        out.update(_rows(session, table, pk[0].in_(part)))
    return out


def _children(session: Session, seeds: Mapping[str, set[Key]]) -> dict[str, set[Key]]:
    """Every row that references a seed row through a foreign key, transitively (the rows
    *about* the person: also in tables added after this module was written)."""
    tables = {t.name: t for t in Base.metadata.sorted_tables}
    related: dict[str, set[Key]] = {name: set(keys) for name, keys in seeds.items()}
    frontier: dict[str, set[Key]] = {name: set(keys) for name, keys in seeds.items() if keys}
    while frontier:
        found: dict[str, set[Key]] = {}
        for table in tables.values():
            pk = _pk(table)
            for fk in table.foreign_keys:
                target = fk.column.table
                new_ids = frontier.get(target.name)
                if not new_ids or list(target.primary_key.columns) != [fk.column]:
                    continue
                for part in chunks(sorted(k[0] for k in new_ids)):
                    for row in session.execute(select(*pk).where(fk.parent.in_(part))):
                        key = tuple(row)
                        if key not in related.setdefault(table.name, set()):
                            related[table.name].add(key)
                            found.setdefault(table.name, set()).add(key)
        frontier = found
    return related


# ---- the plan -------------------------------------------------------------------------------


@dataclass
class _Plan:
    changes: dict[tuple[str, Key], dict[str, Any]] = field(default_factory=dict)
    deletes: set[tuple[str, Key]] = field(default_factory=set)
    columns: dict[str, int] = field(default_factory=dict)  # "table.column" -> values changed
    blobs: set[str] = field(default_factory=set)
    shared_kept: int = 0
    quarantine: list[Path] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    related: dict[str, set[Key]] = field(default_factory=dict)
    tickets: list[str] = field(default_factory=list)
    labels_deleted: int = 0

    def set(self, table: str, key: Key, column: str, old: Any, new: Any) -> None:
        values = self.changes.setdefault((table, key), {})
        if column not in values:
            if old == new:
                if not values:
                    del self.changes[(table, key)]
                return
            self.columns[f"{table}.{column}"] = self.columns.get(f"{table}.{column}", 0) + 1
        values[column] = new

    def current(self, table: str, key: Key, row: Mapping[str, Any], column: str) -> Any:
        return self.changes.get((table, key), {}).get(column, row[column])

    def rows_by_table(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for table, _ in self.changes.keys() - self.deletes:
            counts[table] = counts.get(table, 0) + 1
        return counts

    def deletes_by_table(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for table, _ in self.deletes:
            counts[table] = counts.get(table, 0) + 1
        return counts


@dataclass(frozen=True)
class ErasureReport:
    """What an erasure did (applied) or would do (dry run). Names only pseudonyms."""

    applied: bool
    pseudonyms: tuple[str, ...]
    rows: tuple[tuple[str, int], ...]  # table -> rows changed
    deleted: tuple[tuple[str, int], ...]  # table -> rows deleted
    columns: tuple[tuple[str, int], ...]  # "table.column" -> values changed
    tickets: tuple[str, ...]  # references of the tickets about the person
    blobs: int  # blob files deleted (or to delete)
    bytes_freed: int
    shared_blobs_kept: int  # their content, still named by other people's kept messages
    quarantine_entries: int  # quarantined spool entries deleted (or to delete)
    pending_entries: tuple[str, ...]  # spool entries still to be processed that mention them
    config_mentions: tuple[str, ...]  # "customers.toml:12": config never rewritten by us
    remaining: tuple[tuple[str, int], ...]  # verification: where traces were still found
    refused: str = ""  # why nothing was applied
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.rows or self.deleted or self.blobs or self.quarantine_entries)

    @property
    def complete(self) -> bool:
        """Nothing of the person left that the gateway holds (verified)."""
        return not (self.remaining or self.pending_entries or self.refused)


# ---- scanning files -------------------------------------------------------------------------


@dataclass(frozen=True)
class _FileScan:
    hits: frozenset[str]  # blob shas containing an identifier
    scanned: frozenset[str]  # every blob sha looked at


def _scan_blobs(
    store: BlobStore, matcher: Matcher, referenced: Callable[[set[str]], set[str]]
) -> _FileScan:
    files = list(blob_files(store))
    used = referenced({f.sha256 for f in files})
    hits: set[str] = set()
    for f in files:
        try:
            # A linked spool entry carries its envelope (the sender) in a header line.
            header, data = read_blob_file(f.path)
        except FileNotFoundError:
            continue
        # Unreferenced blobs (recorded duplicates' raw messages) have no row to judge them by:
        # decode them as messages too.
        found = matcher.bytes_hits(header) or (
            matcher.bytes_hits(data) if f.sha256 in used else matcher.message_hits(data)
        )
        if found:
            hits.add(f.sha256)
    return _FileScan(frozenset(hits), frozenset(f.sha256 for f in files))


def _scan_spool(spool_dir: Path, matcher: Matcher) -> tuple[list[Path], list[str]]:
    """(quarantined entry files mentioning the person, ids of waiting entries that do)."""
    quarantined: list[Path] = []
    waiting: list[str] = []
    if not spool_dir.is_dir():
        return quarantined, waiting
    spool = Spool(spool_dir, fsync=False)
    try:
        entries = [(e, False) for e in spool.pending()]
        for record in spool.quarantined():
            entry = spool.get(record.id)
            if entry is not None:
                entries.append((entry, True))
        for entry, in_quarantine in entries:
            try:
                data = entry.path.read_bytes()
            except FileNotFoundError:
                continue
            # "<header JSON>\n<raw message>": the envelope (sender) and the message, decoded.
            header, _, raw = data.partition(b"\n")
            if matcher.bytes_hits(header) or matcher.message_hits(raw):
                if in_quarantine:
                    quarantined.append(entry.path)
                else:
                    waiting.append(entry.id)
    finally:
        spool.close()
    return quarantined, waiting


def _scan_config(directory: Path, matcher: Matcher, state_dir: Path) -> list[str]:
    """file:line of every mention in the config directory (customers.toml, routing rules...)."""
    found: list[str] = []
    if not directory.is_dir():
        return found
    state = state_dir.absolute()
    for path in sorted(directory.rglob("*")):
        if state == path.absolute() or state in path.absolute().parents:
            continue
        if not path.is_file() or path.stat().st_size > _MAX_CONFIG_FILE:
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if any(regex.search(line) for regex, _ in matcher.ids):
                found.append(f"{path.relative_to(directory)}:{number}")
    return found


# ---- planning -------------------------------------------------------------------------------


def _seed_messages(session: Session, people: Sequence[Person]) -> list[Message]:
    conditions: list[ColumnElement[bool]] = []
    for p in people:
        if p.kind == "email":
            conditions.append(func.lower(Message.sender) == p.value)
            # Our outgoing messages to them (agents' replies) are theirs to erase too.
            conditions.append(
                (Message.direction == "out")
                & func.lower(Message.recipients).contains(p.value, autoescape=True)
            )
        else:
            conditions.append(Message.sender == p.value)
            conditions.append(
                (Message.direction == "out") & Message.recipients.contains(p.value, autoescape=True)
            )
    found = session.execute(select(Message).where(or_(*conditions))).scalars().all()
    return [
        m
        for m in found
        if any(p.same(m.sender) for p in people)
        or (m.direction == "out" and any(p.pattern().search(m.recipients) for p in people))
    ]


@dataclass(frozen=True)
class _Found:
    """Where the person is by their identifiers, before anything changes."""

    mine: tuple[Message, ...]  # messages from them, and our outgoing messages to them
    intakes: frozenset[int]
    tickets: dict[int, Ticket]  # their tickets: opened by them, about them, or joined by them
    opened: frozenset[int]  # tickets whose first inbound message is theirs
    contact_tickets: frozenset[int]  # tickets whose contact they are
    outbox: frozenset[int]  # outbox rows addressed to them
    contacts: tuple[CustomerContact, ...]  # their rows in customer_contacts

    @property
    def mine_ids(self) -> set[int]:
        return {m.id for m in self.mine}


def _find(session: Session, people: Sequence[Person]) -> _Found:
    mine = _seed_messages(session, people)
    mine_ids = {m.id for m in mine}

    def about(column: Any) -> ColumnElement[bool]:
        return or_(*(func.lower(column) == p.value.lower() for p in people))

    intakes = session.execute(select(Intake.id, Intake.ticket_id).where(about(Intake.sender))).all()
    contact_tickets = set(
        session.execute(select(Ticket.id).where(about(Ticket.contact_email))).scalars()
    )
    outbox = set(session.execute(select(OutboxRow.id).where(about(OutboxRow.recipient))).scalars())
    ticket_ids = contact_tickets | {m.ticket_id for m in mine if m.ticket_id is not None}
    ticket_ids |= {tid for _, tid in intakes if tid is not None}
    tickets: dict[int, Ticket] = {}
    opened: set[int] = set()
    for part in chunks(sorted(ticket_ids)):
        tickets.update(
            (t.id, t) for t in session.execute(select(Ticket).where(Ticket.id.in_(part))).scalars()
        )
        firsts = session.execute(
            select(Message.ticket_id, func.min(Message.id))
            .where(Message.ticket_id.in_(part), Message.direction == "in")
            .group_by(Message.ticket_id)
        ).all()
        opened |= {tid for tid, first in firsts if tid is not None and first in mine_ids}
    contacts = tuple(
        c
        for c in session.execute(select(CustomerContact)).scalars()
        if any(p.same(c.email if p.kind == "email" else c.phone) for p in people)
    )
    return _Found(
        tuple(mine),
        frozenset(iid for iid, _ in intakes),
        tickets,
        frozenset(opened),
        frozenset(contact_tickets),
        frozenset(outbox),
        contacts,
    )


def _words_and_names(
    found: _Found, people: Sequence[Person], config_contacts: Sequence[tuple[str, str, str]]
) -> tuple[set[str], set[str]]:
    """Their own lines and subjects, and the names they go by (before anything is changed)."""
    fragments: set[str] = set()
    names: set[str] = set()
    for m in found.mine:
        fragments |= fragments_of(m.text)
        subject = subject_fragment(m.subject)
        if subject:
            fragments.add(subject)
        if m.sender_name and m.direction == "in":
            names.add(m.sender_name.strip())
    for tid in found.opened:
        subject = subject_fragment(found.tickets[tid].subject) if tid in found.tickets else None
        if subject:
            fragments.add(subject)
    for tid in found.contact_tickets:
        name = found.tickets[tid].contact_name if tid in found.tickets else None
        if name:
            names.add(name.strip())
    names |= {c.name.strip() for c in found.contacts if c.name}
    for name, address, phone in config_contacts:
        if name and any(p.same(address if p.kind == "email" else phone) for p in people):
            names.add(name.strip())
    return fragments, names


def _related(session: Session, found: _Found) -> dict[str, set[Key]]:
    """The rows about them: their tickets, messages, intakes and outbox rows, every row that
    references one of those (transitively), and the audit entries naming their tickets."""
    seeds: dict[str, set[Key]] = {
        Ticket.__tablename__: {(tid,) for tid in found.tickets},
        Message.__tablename__: {(mid,) for mid in found.mine_ids},
        Intake.__tablename__: {(iid,) for iid in found.intakes},
        OutboxRow.__tablename__: {(oid,) for oid in found.outbox},
    }
    related = _children(session, seeds)
    refs = sorted(t.reference for t in found.tickets.values() if t.reference)
    for part in chunks(refs):
        related.setdefault(AuditEntry.__tablename__, set()).update(
            (aid,)
            for aid in session.execute(
                select(AuditEntry.id).where(AuditEntry.target.in_(part))
            ).scalars()
        )
    return related


def _own_rows(plan: _Plan, session: Session, found: _Found, people: Sequence[Person]) -> None:
    """The explicit rules: what is theirs goes (text, subjects, names, contact rows, labels
    made of their words); unsent mail to them is suppressed."""

    def replacement(value: str | None) -> str | None:
        return next((p.pseudonym for p in people if p.same(value)), value)

    for m in found.mine:
        key = (m.id,)
        plan.set("messages", key, "text", m.text, "")
        plan.set("messages", key, "subject", m.subject, "")
        if m.direction == "in":
            plan.set("messages", key, "sender_name", m.sender_name, "")
        plan.set("messages", key, "sender", m.sender, replacement(m.sender))
    for tid, t in found.tickets.items():
        if tid in found.contact_tickets:
            plan.set(
                "tickets", (tid,), "contact_email", t.contact_email, replacement(t.contact_email)
            )
            plan.set("tickets", (tid,), "contact_name", t.contact_name, None)
        if tid in found.opened:
            plan.set("tickets", (tid,), "subject", t.subject, ERASED)
    for part in chunks(sorted(found.outbox)):
        for o in session.execute(select(OutboxRow).where(OutboxRow.id.in_(part))).scalars():
            key = (o.id,)
            plan.set("outbox", key, "recipient", o.recipient, replacement(o.recipient))
            plan.set("outbox", key, "subject", o.subject, "")
            plan.set("outbox", key, "body", o.body, "")
            if o.status in ("pending", "sending"):
                # Never send to a pseudonym; never send what they asked us to forget.
                plan.set("outbox", key, "status", o.status, "suppressed")
                plan.set("outbox", key, "status_reason", o.status_reason, "recipient erased")
    for part in chunks(sorted(found.opened)):
        for lid in session.execute(
            select(SeverityLabel.id).where(SeverityLabel.ticket_id.in_(part))
        ).scalars():
            plan.deletes.add(("severity_labels", (lid,)))
            plan.labels_deleted += 1
    for c in found.contacts:
        plan.deletes.add(("customer_contacts", (c.id,)))


def _sweep(plan: _Plan, session: Session, matcher: Matcher) -> None:
    """Every String, Text and JSON column of every table: identifiers become the pseudonym
    everywhere; their words and name become "[erased]" in the rows about them."""
    mappers = _mappers()
    for table in Base.metadata.sorted_tables:
        if table.name not in mappers and not _pk(table):
            continue
        where = _prefilter(table, matcher.people)
        rows = _rows(session, table, where) if where is not None else {}
        related_keys = plan.related.get(table.name, set())
        missing = related_keys - rows.keys()
        if missing:
            rows.update(_rows_by_key(session, table, missing))
        for key, row in rows.items():
            if (table.name, key) in plan.deletes:
                continue
            for column in _text_columns(table):
                current = plan.current(table.name, key, row, column.name)
                if current is None:
                    continue
                new, n = matcher.scrub_value(current, key in related_keys)
                if n:
                    plan.set(table.name, key, column.name, row[column.name], _fit(column, new))


def _doomed_blobs(
    plan: _Plan,
    session: Session,
    found: _Found,
    matcher: Matcher,
    scan: _FileScan,
    blobs: BlobStore,
) -> None:
    """Which blob files go, and the rows that named them saying so."""
    mine_ids = found.mine_ids
    changed = {key[0] for (table, key) in plan.changes if table == "messages"}
    about = mine_ids | changed | {k[0] for k in plan.related.get("messages", set())}
    attachments = {
        a.id: a
        for part in chunks(sorted(about))
        for a in session.execute(
            select(AttachmentRecord).where(AttachmentRecord.message_id.in_(part))
        ).scalars()
    }
    own = {m.raw_sha256 for m in found.mine if m.raw_sha256}
    own |= {a.sha256 for a in attachments.values() if a.message_id in mine_ids and a.stored}
    # Content someone else's kept message also names (a shared logo) stays: it is theirs too.
    shared = still_referenced(session, own, ignoring=mine_ids)
    plan.shared_kept = len(own & shared)
    doomed = own - shared
    # A message whose text changed here keeps its attachments, but its raw mail still says
    # what was removed: it goes.
    for part in chunks(sorted(changed)):
        doomed |= set(
            session.execute(
                select(Message.raw_sha256).where(Message.id.in_(part), Message.raw_sha256 != "")
            ).scalars()
        )
    doomed |= scan.hits
    for a in attachments.values():
        if a.message_id in mine_ids or not a.stored or a.sha256 in doomed:
            continue
        try:
            data = blobs.get(a.sha256)
        except (FileNotFoundError, ValueError):
            continue
        if matcher.bytes_hits(data, with_text=True):  # their words in a colleague's attachment
            doomed.add(a.sha256)
    plan.blobs = {sha for sha in doomed if sha}
    for part in chunks(sorted(plan.blobs)):
        for mid, sha in session.execute(
            select(Message.id, Message.raw_sha256).where(Message.raw_sha256.in_(part))
        ):
            plan.set("messages", (mid,), "raw_sha256", sha, "")
        for a in session.execute(
            select(AttachmentRecord).where(AttachmentRecord.sha256.in_(part))
        ).scalars():
            plan.set("attachments", (a.id,), "stored", a.stored, False)
    for a in attachments.values():
        if a.message_id in mine_ids:
            plan.set("attachments", (a.id,), "stored", a.stored, False)
            plan.set("attachments", (a.id,), "sha256", a.sha256, "")
            plan.set("attachments", (a.id,), "filename", a.filename, ERASED)


def _notes(
    found: _Found, people: Sequence[Person], config_contacts: Sequence[tuple[str, str, str]]
) -> list[str]:
    notes: list[str] = []
    if found.contacts:
        notes.append(
            f"{len(found.contacts)} contact(s) imported into the database are deleted; remove "
            "them from the CSV file too, or the next `gateway customers import` brings them back"
        )
    linked = {
        value
        for c in found.contacts
        for value in (c.email, c.phone)
        if value and not any(p.same(value) for p in people)
    }
    for _, address, phone in config_contacts:
        if any(p.same(address if p.kind == "email" else phone) for p in people):
            linked |= {v for v in (address, phone) if v and not any(p.same(v) for p in people)}
    notes.extend(
        f"the same contact also has {value}: erase it too with --contact {value}"
        for value in sorted(linked)
    )
    return notes


def _plan(
    session: Session,
    people: Sequence[Person],
    config_contacts: Sequence[tuple[str, str, str]],
    scan: _FileScan,
    blobs: BlobStore,
) -> tuple[_Plan, Matcher, list[str]]:
    """Everything the erasure changes, computed from the database without changing it."""
    found = _find(session, people)
    fragments, names = _words_and_names(found, people, config_contacts)
    matcher = Matcher(people, fragments, names)
    plan = _Plan()
    plan.related = _related(session, found)
    plan.tickets = sorted(t.reference for t in found.tickets.values() if t.reference)
    _own_rows(plan, session, found, people)
    _sweep(plan, session, matcher)
    _doomed_blobs(plan, session, found, matcher, scan, blobs)
    return plan, matcher, _notes(found, people, config_contacts)


def _fit(column: Column[Any], value: Any) -> Any:
    """A replacement may be longer than what it replaced: keep within the column's length."""
    length = getattr(column.type, "length", None)
    if isinstance(value, str) and isinstance(length, int) and len(value) > length:
        return value[:length]
    return value


# ---- applying and verifying -----------------------------------------------------------------


def _apply(session: Session, plan: _Plan) -> None:
    mappers = _mappers()
    tables = {t.name: t for t in Base.metadata.sorted_tables}
    for (name, key), values in plan.changes.items():
        if (name, key) in plan.deletes:
            continue
        mapper = mappers.get(name)
        if mapper is None:
            table = tables[name]
            pk = _pk(table)
            session.execute(
                update(table)
                .where(*(c == v for c, v in zip(pk, key, strict=True)))
                .values(**values)
            )
            continue
        # Through the ORM, so mapper events see the change (forwarding journals ticket updates).
        obj = session.get(mapper.class_, key if len(key) > 1 else key[0])
        if obj is None:
            continue
        for column_name, value in values.items():
            prop = mapper.get_property_by_column(mapper.local_table.columns[column_name])
            setattr(obj, prop.key, value)
    for name, key in plan.deletes:
        mapper = mappers.get(name)
        if mapper is None:
            table = tables[name]
            pk = _pk(table)
            session.execute(delete(table).where(*(c == v for c, v in zip(pk, key, strict=True))))
            continue
        obj = session.get(mapper.class_, key if len(key) > 1 else key[0])
        if obj is not None:
            session.delete(obj)
    session.flush()


def traces(session: Session, matcher: Matcher, related: Mapping[str, set[Key]]) -> dict[str, int]:
    """Where the person is still found: identifiers in every text column of every table, their
    words and name in the rows about them. {"table.column": occurrences}."""
    found: dict[str, int] = {}
    for table in Base.metadata.sorted_tables:
        where = _prefilter(table, matcher.people)
        rows = _rows(session, table, where) if where is not None else {}
        related_keys = related.get(table.name, set())
        for key, row in _rows_by_key(session, table, related_keys - rows.keys()).items():
            rows[key] = row
        for key, row in rows.items():
            for column in _text_columns(table):
                value = row[column.name]
                if value is None:
                    continue
                _, n = matcher.scrub_value(value, key in related_keys)
                if n:
                    found[f"{table.name}.{column.name}"] = (
                        found.get(f"{table.name}.{column.name}", 0) + n
                    )
    return found


def erase(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    *,
    contacts: Sequence[str],
    state_dir: Path,
    spool_dir: Path,
    config_dir: Path,
    config_contacts: Sequence[tuple[str, str, str]] = (),
    now: datetime,
    actor: Actor,
    apply: bool = False,
    force: bool = False,
    reason: str = "",
    outside_copies: Sequence[str] = (),
) -> ErasureReport:
    """Erase (apply=True) or report what erasing would change (apply=False, reads only).

    `contacts`: addresses and phone numbers as typed (ErasureError if one is neither).
    `config_contacts`: (name, email, phone) of customers.toml's contacts (names to erase,
    linked identifiers to suggest). `outside_copies`: notes about copies the gateway cannot
    reach (IMAP mailboxes, Twilio), added when the person has messages from those channels.
    """
    if not contacts:
        raise ErasureError("name at least one --contact")
    salt = install_salt(state_dir)
    people: list[Person] = []
    for text in contacts:
        kind, value = parse_contact(text)
        if not any(p.value == value for p in people):
            people.append(Person(kind, value, pseudonym(salt, kind, value)))
    id_matcher = Matcher(people)

    config_mentions = _scan_config(config_dir, id_matcher, state_dir)

    def referenced(shas: set[str]) -> set[str]:
        with sessions() as s:
            return still_referenced(s, shas)

    # The expensive part, files only, before any write lock is taken.
    blob_scan = _scan_blobs(blobs, id_matcher, referenced)
    quarantined, waiting = _scan_spool(spool_dir, id_matcher)

    with sessions() as session:
        plan, matcher, notes = _plan(session, people, config_contacts, blob_scan, blobs)
        plan.quarantine = quarantined
        plan.pending = waiting
        if plan.labels_deleted:
            notes.append(
                f"{plan.labels_deleted} severity label(s) held their words and are deleted; "
                "run `gateway train` so the model is rebuilt without them"
            )
        if plan.changes or plan.deletes:
            notes.extend(outside_copies)
        refused = ""
        if apply and config_mentions and not force:
            refused = (
                f"the contact is still in the config ({', '.join(config_mentions)}): remove it "
                "there and run `gateway reload` (or pass --force to erase the stored data anyway)"
            )
        if not apply or refused:
            session.rollback()
            return _report(plan, people, False, 0, config_mentions, {}, refused, notes)
        if not (plan.changes or plan.deletes or plan.blobs or plan.quarantine):
            session.rollback()  # nothing stored about them: nothing to change or audit
            plan.pending = waiting
            return _report(plan, people, True, 0, config_mentions, {}, "", notes)
        _apply(session, plan)
        record_action(
            session,
            actor,
            "privacy.erase",
            ", ".join(p.pseudonym for p in people)[:128],
            at=now,
            before={
                "tickets": plan.tickets[:500],
                "rows": plan.rows_by_table(),
                "deleted": plan.deletes_by_table(),
            },
            after={
                "pseudonyms": [p.pseudonym for p in people],
                "columns": dict(sorted(plan.columns.items())),
                "blobs_deleted": len(plan.blobs),
                "quarantine_entries_deleted": len(plan.quarantine),
            },
            reason=matcher.scrub(reason, True)[0],
        )
        session.flush()
        left = traces(session, matcher, plan.related)
        if left:
            # A rule missed something: change nothing rather than half-erase and claim success.
            session.rollback()
            return _report(
                plan, people, False, 0, config_mentions, left, "traces left by the rules", notes
            )
        freed = delete_files(p for sha in sorted(plan.blobs) for p in blobs.paths(sha))
        freed += delete_files(plan.quarantine)
        session.commit()

    # Verified again after the commit, as someone else would see it.
    with sessions() as session:
        left = traces(session, matcher, plan.related)
    for f in blob_files(blobs):
        if f.sha256 in plan.blobs or f.sha256 not in blob_scan.scanned:
            try:
                header, data = read_blob_file(f.path)
            except FileNotFoundError:
                continue
            if (
                f.sha256 in plan.blobs
                or id_matcher.bytes_hits(header)
                or id_matcher.message_hits(data)
            ):
                left["blobs"] = left.get("blobs", 0) + 1
    still_quarantined, still_waiting = _scan_spool(spool_dir, id_matcher)
    if still_quarantined:
        left["spool quarantine"] = len(still_quarantined)
    plan.pending = still_waiting
    return _report(plan, people, True, freed, config_mentions, left, "", notes)


def _report(
    plan: _Plan,
    people: Sequence[Person],
    applied: bool,
    freed: int,
    config_mentions: Sequence[str],
    left: Mapping[str, int],
    refused: str,
    notes: Sequence[str],
) -> ErasureReport:
    return ErasureReport(
        applied=applied,
        pseudonyms=tuple(p.pseudonym for p in people),
        rows=tuple(sorted(plan.rows_by_table().items())),
        deleted=tuple(sorted(plan.deletes_by_table().items())),
        columns=tuple(sorted(plan.columns.items())),
        tickets=tuple(plan.tickets),
        blobs=len(plan.blobs),
        bytes_freed=freed,
        shared_blobs_kept=plan.shared_kept,
        quarantine_entries=len(plan.quarantine),
        pending_entries=tuple(plan.pending),
        config_mentions=tuple(config_mentions),
        remaining=tuple(sorted(left.items())),
        refused=refused,
        notes=tuple(notes),
    )


def describe(report: ErasureReport, out: Callable[[str], None]) -> None:
    """The report in plain words for an admin."""
    if report.refused:
        out(f"not erased: {report.refused}")
    elif report.applied:
        out(f"erased as {', '.join(report.pseudonyms)}")
    else:
        out(f"dry run (nothing changed; --apply erases) as {', '.join(report.pseudonyms)}")
    verb = "changed" if report.applied else "to change"
    for table, n in report.rows:
        detail = ", ".join(
            f"{col.split('.', 1)[1]} {k}"
            for col, k in report.columns
            if col.startswith(table + ".")
        )
        out(f"  {table:22} {n:6} row(s) {verb}: {detail}")
    for table, n in report.deleted:
        out(f"  {table:22} {n:6} row(s) {'deleted' if report.applied else 'to delete'}")
    out(
        f"  blob files             {report.blobs:6} {'deleted' if report.applied else 'to delete'}"
        + (
            f" ({report.shared_blobs_kept} kept: shared with other people's messages)"
            if report.shared_blobs_kept
            else ""
        )
    )
    out(
        f"  spool quarantine       {report.quarantine_entries:6} "
        f"{'deleted' if report.applied else 'to delete'}"
    )
    if report.tickets:
        shown = ", ".join(report.tickets[:20])
        more = f" and {len(report.tickets) - 20} more" if len(report.tickets) > 20 else ""
        out(f"  tickets about them: {shown}{more}")
    for mention in report.config_mentions:
        out(f"still in {mention}: remove it there (we never rewrite config files)")
    if report.pending_entries:
        out(
            f"{len(report.pending_entries)} spool entr(y/ies) waiting to be processed mention "
            "them; run erase again once the worker has processed them (`gateway status`)"
        )
    for note in report.notes:
        out(f"note: {note}")
    if report.applied:
        if report.remaining:
            out(
                "VERIFICATION FAILED, still found in: "
                + ", ".join(f"{where} ({n})" for where, n in report.remaining)
            )
        else:
            out("verified: no trace left in the database, blob store or spool quarantine")
    elif not report.changed and not report.refused:
        out("nothing stored about them")


__all__ = [
    "ERASED",
    "ErasureError",
    "ErasureReport",
    "Matcher",
    "Person",
    "describe",
    "erase",
    "install_salt",
    "parse_contact",
    "pseudonym",
    "traces",
]
