"""Customers imported into the database, for shops with thousands of accounts.

Owns `gateway customers import FILE.csv` (one row per contact; account columns repeat) and
reading the imported accounts back as the same `Account` values customers.toml gives. An
import replaces each account it names (its contacts included), so running it again with the
same file changes nothing. Never consulted per message: the worker loads the accounts into the
in-memory directory at start and on every reload.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from gateway import clock as business_clock
from gateway.config.schema import Account, Contact
from gateway.phone import normalise_phone
from gateway.storage.models import CustomerAccount, CustomerContact

COLUMNS = (
    "account",
    "name",
    "plan",
    "language",
    "domains",
    "contact_name",
    "email",
    "phone",
    "emergency_authorised",
)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+[1-9]\d{6,14}$")
TRUE = ("1", "true", "yes", "y")


@dataclass
class ImportReport:
    rows: int = 0
    accounts: int = 0
    contacts: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)


def import_csv(
    sessions: sessionmaker[Session], path: Path, plan_names: Sequence[str], out: TextIO
) -> ImportReport:
    report = ImportReport()
    accounts: dict[str, CustomerAccount] = {}
    contacts: dict[str, list[CustomerContact]] = {}
    now = business_clock.now()
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("account", "plan") if c not in (reader.fieldnames or [])]
        if missing:
            report.errors.append(
                (1, f"missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
            )
            return report
        unknown = [c for c in reader.fieldnames or [] if c not in COLUMNS]
        if unknown:
            report.errors.append((1, f"unknown column(s) {', '.join(unknown)}"))
            return report
        for line, row in enumerate(reader, start=2):
            report.rows += 1
            if report.rows % 1000 == 0:
                print(f"  {report.rows} rows read", file=out, flush=True)
            problem = _check_row(row, plan_names)
            if problem:
                report.errors.append((line, problem))
                continue
            account_id = row["account"].strip()
            if account_id not in accounts:
                accounts[account_id] = CustomerAccount(
                    account_id=account_id,
                    name=(row.get("name") or "").strip()[:200],
                    plan=row["plan"].strip(),
                    language=(row.get("language") or "en").strip() or "en",
                    domains=[
                        d.strip().lower()
                        for d in (row.get("domains") or "").split(";")
                        if d.strip()
                    ],
                    updated_at=now,
                )
                contacts[account_id] = []
            email = (row.get("email") or "").strip().lower()
            phone = (row.get("phone") or "").strip()
            if email or phone:
                contacts[account_id].append(
                    CustomerContact(
                        account_id=account_id,
                        name=(row.get("contact_name") or "").strip()[:200],
                        email=email or None,
                        phone=normalise_phone(phone) if phone else None,
                        emergency_authorised=(row.get("emergency_authorised") or "").strip().lower()
                        in TRUE,
                    )
                )
    with sessions.begin() as session:
        ids = list(accounts)
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            session.execute(delete(CustomerContact).where(CustomerContact.account_id.in_(part)))
            session.execute(delete(CustomerAccount).where(CustomerAccount.account_id.in_(part)))
        session.add_all(accounts.values())
        for rows in contacts.values():
            session.add_all(rows)
            report.contacts += len(rows)
    report.accounts = len(accounts)
    return report


def _check_row(row: dict[str, str], plan_names: Sequence[str]) -> str | None:
    if not (row.get("account") or "").strip():
        return "account is empty"
    plan = (row.get("plan") or "").strip()
    if plan not in plan_names:
        return f"unknown plan {plan!r} (plans: {', '.join(plan_names)})"
    email = (row.get("email") or "").strip()
    if email and not _EMAIL.match(email):
        return f"email {email!r} is not an address"
    phone = (row.get("phone") or "").strip()
    if phone and not _PHONE.match(normalise_phone(phone)):
        return f"phone {phone!r} is not a phone number (E.164 like +16175550100)"
    for domain in (row.get("domains") or "").split(";"):
        if domain.strip() and "." not in domain:
            return f"domain {domain.strip()!r} is not a domain"
    return None


def load_accounts(sessions: sessionmaker[Session]) -> list[Account]:
    """Imported accounts as config values, for the in-memory directory."""
    with sessions() as session:
        contacts: dict[str, list[Contact]] = {}
        for c in session.execute(select(CustomerContact)).scalars():
            contacts.setdefault(c.account_id, []).append(
                Contact(
                    name=c.name,
                    email=c.email or "",
                    phone=c.phone or "",
                    emergency_authorised=c.emergency_authorised,
                )
            )
        return [
            Account(
                id=a.account_id,
                name=a.name,
                plan=a.plan,
                domains=tuple(a.domains),
                language=a.language,
                contacts=tuple(contacts.get(a.account_id, ())),
            )
            for a in session.execute(select(CustomerAccount).order_by(CustomerAccount.id)).scalars()
        ]
