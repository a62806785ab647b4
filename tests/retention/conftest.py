"""Retention and erasure test kit: a gateway with Twilio webhooks and a customer imported into
the database, a person's real mail, texts and replies put through the real pipeline, and
scanners that read back EVERYTHING — every column of every table, every blob file, every spool
file — so a trace left anywhere fails the test, also in tables added after these tests."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import compat32
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from gateway import clock
from gateway.storage.db import make_engine
from gateway.storage.models import Base
from tests.helpers import Gateway
from tests.twilio.conftest import OUR_NUMBER, PUBLIC, SID, TOKEN, AppServer, signed_post, sms_params

ROSA = "rosa.quintero@quokka-vet.example"
ROSA_NAME = "Rosa Quintero"
ROSA_PHONE = "+16175550177"
# How people and programs write her number: every one must be gone after erasure.
ROSA_PHONE_FORMS = (
    "+16175550177",
    "6175550177",
    "617-555-0177",
    "(617) 555-0177",
    "617.555.0177",
    "617 555 0177",
    "+1 617 555 0177",
)
# Sentences only she wrote: after erasure they must be nowhere.
SENTENCE = "The quokka-shaped label printer in room 7B ate forty invoices again."
SMS_TEXT = "Printer in 7B is smoking now, please call me back urgently"
ACK_TEXT = "I confirm the emergency charge for the smoking quokka printer."
COLLEAGUE = "frontdesk@quokka-vet.example"
# Her address is the tail of this one: it must survive her erasure untouched.
NEIGHBOUR = "jim.rosa.quintero@quokka-vet.example"
LOGO = b"\x89PNG\r\n\x1a\n" + b"quokka-vet shared logo " * 40
INVOICE = (
    b"Scanned invoice 7B-0042\nContact: Rosa Quintero, +1 617 555 0177, "
    b"rosa.quintero@quokka-vet.example\n"
)

CUSTOMERS_CSV = f"""account,name,plan,language,domains,contact_name,email,phone,emergency_authorised
quokka-vet,Quokka Vet Clinic,growth,en,quokka-vet.example,{ROSA_NAME},{ROSA},{ROSA_PHONE},yes
quokka-vet,Quokka Vet Clinic,growth,en,quokka-vet.example,Front Desk,{COLLEAGUE},,no
"""


def email_from(
    sender: str,
    subject: str,
    body: str,
    message_id: str,
    *,
    attachments: tuple[tuple[str, str, bytes], ...] = (),
    **headers: str,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "support@example.com"
    msg["Subject"] = subject
    msg["Date"] = "Mon, 23 Nov 2026 10:00:00 -0500"
    msg["Message-ID"] = message_id
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    for filename, ctype, data in attachments:
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


@pytest.fixture
def retention_config(make_config: Callable[..., Path], database_url: str) -> Path:
    """The sample config on `database_url`, Twilio webhooks signed with the test token."""
    return make_config(
        storage__url=database_url,
        webhooks__port=0,
        webhooks__public_url=PUBLIC,
        webhooks__account_sid=SID,
        webhooks__from_number=OUR_NUMBER,
    )


@pytest.fixture
def gw(retention_config: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    """The gateway in-process with Rosa's clinic imported into the database (as
    `gateway customers import` does) and known to the worker (as `gateway worker` does)."""
    from gateway.storage.customers import import_csv, load_accounts

    monkeypatch.setenv("GATEWAY_TWILIO_AUTH_TOKEN", TOKEN)
    gateway = Gateway(retention_config)
    csv_path = retention_config.parent / "customers.csv"
    csv_path.write_text(CUSTOMERS_CSV)
    plans = [p.name for p in gateway.settings.plans.plan]
    report = import_csv(gateway.worker.sessions, csv_path, plans, _Null())
    assert report.errors == [] and report.contacts == 2
    gateway.box.imported_accounts = lambda: load_accounts(gateway.worker.sessions)
    assert gateway.box.reload()
    yield gateway
    gateway.close()


class _Null:
    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        pass


@dataclass(frozen=True)
class Story:
    """What Rosa's story put where (ids and references to look at afterwards)."""

    first_ticket: str
    sms_ticket: str
    colleague_ticket: str
    neighbour_ticket: str


def rosa_story(gw: Gateway) -> Story:
    """Rosa's real traffic through the real pipeline: two mails with attachments (one shared
    with a colleague), a redelivered duplicate, a colleague's mail naming her, a text from her
    phone through the signed Twilio webhook, agents' changes, an audited agent action, a
    billed incident resting on her words, a quarantined message of hers."""
    from gateway.emergency.billing_views import export_incidents
    from gateway.emergency.ledger import record_incident
    from gateway.emergency.rules import Evidence, Quote
    from gateway.privacy.audit import Actor, record_action
    from gateway.storage.admin import set_severity, set_status
    from gateway.storage.models import Message, Ticket

    first = email_from(
        f"{ROSA_NAME} <{ROSA}>",
        "Quokka printer jammed in room 7B",
        f"Hello,\n\n{SENTENCE}\nCould someone look at it today?\n\n-- \n{ROSA_NAME}\n"
        "Practice manager, Quokka Vet Clinic\n(617) 555-0177\n",
        "<rosa-1@quokka-vet.example>",
        attachments=(
            ("invoice-scan.txt", "text/plain", INVOICE),
            ("logo.png", "image/png", LOGO),
        ),
    )
    gw.ingest(first)
    gw.drain()
    # A redelivery (another hop, CRLF line ends): a recorded duplicate whose raw blob no row
    # names.
    gw.ingest(b"Received: from relay2 by mx; Mon, 23 Nov 2026\r\n" + first.replace(b"\n", b"\r\n"))
    gw.ingest(
        email_from(
            f"Front Desk <{COLLEAGUE}>",
            "Printer in 7B",
            f"Please call Rosa at 617.555.0177 or write to {ROSA.title()} about it.\n",
            "<desk-1@quokka-vet.example>",
            attachments=(("logo.png", "image/png", LOGO),),
        )
    )
    gw.ingest(
        email_from(
            f"Jim <{NEIGHBOUR}>",
            "Scanner question",
            "How do I scan double-sided?\n",
            "<jim-1@quokka-vet.example>",
        )
    )
    gw.drain()
    # Her follow-up, non-ASCII so the body travels encoded (quoted-printable) in the raw mail.
    gw.ingest(
        email_from(
            f"{ROSA_NAME} <{ROSA}>",
            "Re: Quokka printer jammed in room 7B",
            f"{ACK_TEXT}\nGrüße aus dem Behandlungsraum.\n\n> {SENTENCE}\n",
            "<rosa-2@quokka-vet.example>",
            In_Reply_To="<rosa-1@quokka-vet.example>",
        )
    )
    gw.drain()
    # A text from her phone, through the signed webhook into the spool.
    app = AppServer(gw.box.config_dir).start()
    try:
        status, _ = signed_post(
            app.port, "/twilio/sms", sms_params(SMS_TEXT, "SM7B0001", sender=ROSA_PHONE)
        )
        assert status == 200
        # ... and her STOP: an opt-out row keyed by her number.
        status, _ = signed_post(
            app.port, "/twilio/sms", sms_params("STOP", "SM7B0002", sender=ROSA_PHONE)
        )
        assert status == 200
    finally:
        app.stop()
    gw.drain()

    with gw.session() as session:
        tickets = list(session.execute(select(Ticket).order_by(Ticket.id)).scalars())
        by_subject = {t.subject: t for t in tickets}
        mine = by_subject["Quokka printer jammed in room 7B"]
        sms = next(t for t in tickets if t.channel == "twilio-sms")
        desk = by_subject["Printer in 7B"]
        jim = by_subject["Scanner question"]
        story = Story(
            mine.reference or "", sms.reference or "", desk.reference or "", jim.reference or ""
        )
    assert mine.message_count == 2, "her reply threads onto her ticket"
    with gw.session() as session:
        assert (
            set_severity(
                session,
                story.first_ticket,
                "high",
                ("urgent", "high", "normal", "low"),
                actor="alice",
                reason="invoices are lost",
            )
            is None
        )
    with gw.session() as session:
        assert set_status(session, story.sms_ticket, "waiting", actor="alice", reason="") is None
    with gw.session() as session, session.begin():
        ticket = session.execute(
            select(Ticket).where(Ticket.reference == story.first_ticket)
        ).scalar_one()
        record_action(
            session,
            Actor("alice", "api"),
            "ticket.contact",
            story.first_ticket,
            at=clock.now(),
            before={"contact": ROSA},
            after={"note": f"called {ROSA_NAME} on +1 (617) 555-0177", "said": SENTENCE},
        )
        ack = session.execute(
            select(Message).where(Message.header_message_id == "rosa-2@quokka-vet.example")
        ).scalar_one()
        quote = Quote("USD", 25000, 5000, False, "", "", "2026-01")
        record_incident(
            session,
            ticket=ticket,
            evidence=Evidence(
                "email",
                "<rosa-2@quokka-vet.example>",
                ACK_TEXT,
                ack.received_at,
                ROSA,
                "dkim=pass",
                f"{ROSA_NAME} <{ROSA}>",
            ),
            quote=quote,
            at=clock.now(),
        )
        desk_ticket = session.execute(
            select(Ticket).where(Ticket.reference == story.colleague_ticket)
        ).scalar_one()
        record_incident(
            session,
            ticket=desk_ticket,
            evidence=Evidence(
                "email",
                "<desk-1@quokka-vet.example>",
                "yes",
                clock.now(),
                COLLEAGUE,
                "dkim=pass",
                f"Front Desk <{COLLEAGUE}>",
            ),
            quote=quote,
            at=clock.now(),
        )
        assert export_incidents(
            session, datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
        ).lines
    # Every ticket forwarded to a help desk: webhook bodies carry her messages (JSON).
    from gateway.config.schema import ForwardWebhook
    from gateway.outbound.forwarding_sender import fan_out

    assert fan_out(
        gw.worker.sessions,
        [ForwardWebhook(name="helpdesk", url="https://desk.example/hook")],
        clock.now(),
    )
    # A message of hers that failed processing and sits in the quarantine.
    gw.ingest(
        email_from(f"{ROSA_NAME} <{ROSA}>", "broken", SENTENCE, "<rosa-3@quokka-vet.example>")
    )
    entry = gw.spool.claim()
    assert entry is not None
    gw.spool.quarantine(entry, stage="parse", error="test: poison message")
    return story


# ---- reading everything back -----------------------------------------------------------------


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table in the schema, ordered: equal dumps mean nothing changed."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            out: dict[str, list[tuple[Any, ...]]] = {}
            for table in Base.metadata.sorted_tables:
                rows = conn.execute(select(table).order_by(*table.primary_key.columns)).all()
                out[table.name] = [tuple(_plain(v) for v in row) for row in rows]
            return out
    finally:
        engine.dispose()


def _plain(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return value


def database_hits(url: str, needles: Callable[[str], list[str]]) -> list[str]:
    """ "table.column: what" for every text value of every table in which `needles` finds
    something (JSON values are searched as their JSON text, escaped and not)."""
    found: list[str] = []
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                for row in conn.execute(text(f'SELECT * FROM "{table.name}"')).mappings():
                    for column, value in row.items():
                        for shown in _texts(value):
                            found.extend(f"{table.name}.{column}: {hit}" for hit in needles(shown))
    finally:
        engine.dispose()
    return found


def _texts(value: Any) -> list[str]:
    if value is None or isinstance(value, bool | int | float | datetime):
        return []
    if isinstance(value, dict | list):
        return [json.dumps(value, ensure_ascii=False), json.dumps(value)]
    if isinstance(value, bytes | memoryview):
        return [bytes(value).decode("utf-8", "replace")]
    return [str(value)]


def rosa_needles(textual: str) -> list[str]:
    """Her address (any case, also %40-encoded), her number (any formatting: digits compared
    with separators removed), her sentences."""
    hits: list[str] = []
    lowered = textual.lower()
    if ROSA in lowered.replace(NEIGHBOUR, "") or ROSA.replace("@", "%40") in lowered:
        hits.append("address")
    if "6175550177" in re.sub(r"[\s.\-()/+\u00a0]", "", textual):
        hits.append("phone")
    for sentence in (SENTENCE, SMS_TEXT, ACK_TEXT, "quokka-shaped label printer"):
        if sentence in textual or json.dumps(sentence)[1:-1] in textual:
            hits.append(f"text {sentence[:24]!r}")
    return hits


def file_hits(root: Path, needles: Callable[[str], list[str]]) -> list[str]:
    """Every file under `root`, byte for byte and, when it parses as mail, MIME-decoded."""
    import email

    found: list[str] = []
    if not root.exists():
        return found
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        texts = [data.decode("latin-1")]
        raw = data.partition(b"\n")[2] if path.suffix == ".msg" else data
        message = email.message_from_bytes(raw, policy=compat32)
        for part in message.walk():
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                texts.append(payload.decode("utf-8", "replace"))
        for shown in texts:
            found.extend(f"{path.relative_to(root)}: {hit}" for hit in needles(shown))
    return found


def copy_tree(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    if source.exists():
        shutil.copytree(source, target)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(config: Path, *args: str) -> CliResult:
    """`gateway --config CONFIG ARGS...` in this process (the subprocess tests cover the entry
    point once; this keeps the suite fast)."""
    import contextlib
    import io

    from gateway.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["--config", str(config), *args])
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())
