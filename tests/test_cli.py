"""The operator's commands, run as an operator runs them: a real `gateway` process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Gateway, gateway_cli, make_email


@pytest.fixture
def config_with_tickets(make_config: Callable[..., Path]) -> Path:
    config = make_config()
    gw = Gateway(config)
    gw.ingest(
        make_email(subject="Export question", body="How do I export to CSV?", message_id="<q@x>")
    )
    gw.ingest(
        make_email(
            subject="Everything is down",
            body="None of our staff can open the application since 7am.",
            message_id="<d@x>",
        )
    )
    gw.drain()
    gw.close()
    return config


def test_tickets_are_listed_in_queue_order_most_urgent_first(config_with_tickets: Path) -> None:
    out = gateway_cli(config_with_tickets, "tickets", "--json")
    assert out.returncode == 0, out.stderr
    tickets = json.loads(out.stdout)
    assert [t["subject"] for t in tickets] == ["Everything is down", "Export question"]
    assert tickets[0]["jump_queue"] is True
    assert all(t["schema"] == 1 for t in tickets)


def test_show_explains_why_a_ticket_got_its_severity(config_with_tickets: Path) -> None:
    out = gateway_cli(config_with_tickets, "show", "T-000002")
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    assert "severity=urgent" in text
    assert "classifier: severity=urgent score=" in text
    assert "hits=" in text and "model=" in text
    assert "identify" in text and "thread" in text


def test_set_severity_records_who_and_why_as_a_classifier_label(config_with_tickets: Path) -> None:
    out = gateway_cli(
        config_with_tickets,
        "ticket",
        "set-severity",
        "T-000001",
        "normal",
        "--reason",
        "customer needs it for a meeting",
        "--actor",
        "sam",
    )
    assert out.returncode == 0, out.stderr
    shown = json.loads(gateway_cli(config_with_tickets, "show", "T-000001", "--json").stdout)
    assert shown["severity"] == "normal"
    gw = Gateway(config_with_tickets)
    try:
        from sqlalchemy import select

        from gateway.storage.models import SeverityLabel, TicketEvent

        with gw.session() as s:
            (label,) = s.execute(select(SeverityLabel)).scalars()
            (event,) = s.execute(select(TicketEvent)).scalars()
        assert (label.level, label.actor, label.reason) == (
            "normal",
            "sam",
            "customer needs it for a meeting",
        )
        assert "CSV" in label.text
        assert (event.kind, event.new, event.actor) == ("severity", "normal", "sam")
    finally:
        gw.close()


def test_set_severity_refuses_a_level_not_on_the_scale_and_a_missing_reason(
    config_with_tickets: Path,
) -> None:
    out = gateway_cli(
        config_with_tickets, "ticket", "set-severity", "T-000001", "critical", "--reason", "x"
    )
    assert out.returncode == 1 and b"unknown level" in out.stderr
    out = gateway_cli(
        config_with_tickets, "ticket", "set-severity", "T-000001", "high", "--reason", " "
    )
    assert out.returncode == 1 and b"reason is required" in out.stderr


def test_set_status_closes_and_the_closed_ticket_leaves_the_queue(
    config_with_tickets: Path,
) -> None:
    out = gateway_cli(config_with_tickets, "ticket", "set-status", "T-000002", "resolved")
    assert out.returncode == 0, out.stderr
    open_refs = [
        t["reference"]
        for t in json.loads(gateway_cli(config_with_tickets, "tickets", "--json").stdout)
    ]
    assert open_refs == ["T-000001"]


def test_show_of_an_unknown_ticket_says_so(config_with_tickets: Path) -> None:
    out = gateway_cli(config_with_tickets, "show", "T-999999")
    assert out.returncode == 1 and b"no ticket T-999999" in out.stderr


def test_status_reports_spool_and_quarantine(config_with_tickets: Path) -> None:
    out = gateway_cli(config_with_tickets, "status", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["spool_depth"] == 0 and data["quarantine"] == 0 and data["running"] is False


def test_quarantine_list_and_replay_all(make_config: Callable[..., Path]) -> None:
    config = make_config()
    gw = Gateway(config)
    entry_id = gw.ingest(make_email())
    entry = gw.spool.claim()
    assert entry is not None and entry.id == entry_id
    gw.spool.quarantine(entry, stage="classify", error="RuntimeError: boom")
    gw.close()
    listed = gateway_cli(config, "quarantine", "list")
    assert entry_id in listed.stdout.decode() and b"stage=classify" in listed.stdout
    assert gateway_cli(config, "quarantine", "replay", "all").returncode == 0
    assert entry_id in gateway_cli(config, "spool", "list").stdout.decode()
    assert gateway_cli(config, "quarantine", "replay", "nope").returncode == 1


def test_classify_prints_the_verdict_without_creating_a_ticket(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = make_config()
    msg = tmp_path / "m.eml"
    msg.write_bytes(
        make_email(
            subject="URGENT: how do I export to CSV?", body="How do I export the report to CSV?"
        )
    )
    out = gateway_cli(config, "classify", "--json", str(msg))
    assert out.returncode == 0, out.stderr
    verdict = json.loads(out.stdout)
    assert verdict["jump_queue"] is False and verdict["severity"] != "urgent"
    assert {"severity", "jump_queue", "score", "hits", "model_version"} <= verdict.keys()
    assert not (tmp_path / "state" / "gateway.db").exists()


def test_logs_off_a_terminal_are_one_json_object_a_line() -> None:
    import logging

    from gateway.cli.logs import JsonFormatter

    record = logging.LogRecord(
        "gateway.service.worker",
        logging.INFO,
        __file__,
        1,
        'smtp %s -> ticket %s "quoted"',
        ("0179-ab", "T-000001"),
        None,
    )
    line = JsonFormatter().format(record)
    data = json.loads(line)
    assert "\n" not in line
    assert data["level"] == "info" and data["logger"] == "gateway.service.worker"
    assert data["message"] == 'smtp 0179-ab -> ticket T-000001 "quoted"'


OUTAGE_SMS = "URGENT the phone system is down, nobody in the office can make or take calls"
HOWTO_SMS = "hi, how do I change the greeting on my voicemail box? no rush, thanks"


@pytest.mark.parametrize("channel", ["sms", "voicemail", "voice"])
def test_classify_reads_the_text_of_a_plain_sms_or_voicemail_file(
    make_config: Callable[..., Path], tmp_path: Path, channel: str
) -> None:
    config = make_config()
    verdicts = {}
    for name, text in (("outage", OUTAGE_SMS), ("howto", HOWTO_SMS)):
        path = tmp_path / f"{name}.txt"
        path.write_text(text + "\n")
        out = gateway_cli(config, "classify", "--json", "--channel", channel, str(path))
        assert out.returncode == 0, out.stderr
        verdicts[name] = json.loads(out.stdout)
    assert verdicts["outage"]["severity"] == "urgent" and verdicts["outage"]["jump_queue"]
    assert verdicts["howto"]["severity"] not in ("urgent", "high")
    assert verdicts["outage"]["score"] != verdicts["howto"]["score"]


def test_explain_reads_plain_text_and_the_spooled_json_form_of_an_sms(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = make_config()
    plain = tmp_path / "plain.txt"
    plain.write_text(HOWTO_SMS)
    spooled = tmp_path / "spooled.json"
    spooled.write_text(json.dumps({"event": "sms", "params": {"Body": OUTAGE_SMS}}))
    for channel in ("sms", "voicemail", "voice"):
        out = gateway_cli(config, "explain", "--channel", channel, str(plain))
        assert out.returncode == 0, out.stderr
        assert "how do I change the greeting" in out.stdout.decode()
    out = gateway_cli(config, "explain", "--channel", "sms", str(spooled))
    assert out.returncode == 0, out.stderr
    assert "severity=urgent" in out.stdout.decode()


@pytest.mark.parametrize("command", ["classify", "explain"])
def test_an_empty_sms_file_gets_a_verdict_not_a_crash(
    make_config: Callable[..., Path], tmp_path: Path, command: str
) -> None:
    config = make_config()
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    out = gateway_cli(config, command, "--channel", "sms", str(empty))
    assert out.returncode == 0, out.stderr
    assert b"severity=" in out.stdout


@pytest.mark.parametrize("command", [("tickets",), ("status",), ("show", "T-000001")])
def test_a_missing_config_directory_is_reported_without_a_traceback(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    out = gateway_cli(tmp_path / "no-such-config", *command)
    assert out.returncode == 1
    assert b"config directory does not exist" in out.stderr
    assert b"Traceback" not in out.stderr


def test_the_default_config_directory_is_named_in_full_when_missing(tmp_path: Path) -> None:
    """`gateway tickets` run outside the repository looks for ./config: the answer says which
    directory that was, and how to point at the real one."""
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "tickets"],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 1
    assert f"{tmp_path / 'config'}: config directory does not exist".encode() in out.stderr
    assert b"--config DIR" in out.stderr
    assert b"Traceback" not in out.stderr


def _set_state_dir(config: Path, value: str) -> None:
    toml = config / "gateway.toml"
    lines = toml.read_text().splitlines()
    lines = [f'state_dir = "{value}"' if ln.startswith("state_dir") else ln for ln in lines]
    toml.write_text("\n".join(lines) + "\n")


def test_a_relative_state_dir_is_relative_to_the_config_directory_not_the_cwd(
    config_with_tickets: Path,
) -> None:
    # The tickets were made with state at <tmp>/state; the CLI runs in <tmp>, where "../state"
    # would be a different (empty) directory. Relative to <tmp>/config it is the right one.
    _set_state_dir(config_with_tickets, "../state")
    out = gateway_cli(config_with_tickets, "tickets", "--json")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 2
    assert not (config_with_tickets.parent.parent / "state").exists()


def test_read_only_commands_never_create_state(make_config: Callable[..., Path]) -> None:
    config = make_config()
    fresh = config.parent / "fresh-state"
    _set_state_dir(config, str(fresh))
    status = gateway_cli(config, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["spool_depth"] == 0
    tickets = gateway_cli(config, "tickets", "--json")
    assert tickets.returncode == 0 and json.loads(tickets.stdout) == []
    show = gateway_cli(config, "show", "T-000001")
    assert show.returncode == 1 and b"no ticket T-000001" in show.stderr
    assert not fresh.exists()


@pytest.mark.parametrize(
    "command",
    [
        ("tickets",),
        ("tickets", "--json"),
        ("show", "T-000001"),
        ("status", "--json"),
        ("intakes",),
        ("intakes", "--outcome", "reject"),
    ],
)
def test_a_reader_that_closes_the_pipe_gets_no_traceback(
    config_with_tickets: Path, command: tuple[str, ...]
) -> None:
    import os
    import subprocess
    import sys

    # As `gateway tickets | head -0`: the reader is gone before the command writes a byte.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(config_with_tickets), *command],
            stdout=write_end,
            stderr=subprocess.PIPE,
            cwd=config_with_tickets.parent,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141


def _edit_tickets(config: Path, change: Callable[[Any], None]) -> None:
    """Change the stored tickets in place (what another channel or an emergency would set)."""
    from sqlalchemy import select

    from gateway.storage.models import Ticket

    gw = Gateway(config)
    try:
        with gw.session() as s:
            change((s, list(s.execute(select(Ticket).order_by(Ticket.id)).scalars())))
            s.commit()
    finally:
        gw.close()


def test_tickets_print_a_header_row_aligned_columns_and_an_emergency_mark(
    config_with_tickets: Path,
) -> None:
    def sms_emergency(arg: Any) -> None:
        _, (first, _second) = arg
        first.channel = "twilio-sms"
        first.emergency = True
        first.emergency_acknowledged = True

    _edit_tickets(config_with_tickets, sms_emergency)
    out = gateway_cli(config_with_tickets, "tickets")
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.decode().splitlines()
    assert header.split() == ["REF", "FLAGS", "SEVERITY", "STATUS", "ACCOUNT", "CHANNEL", "SUBJECT"]
    assert len(rows) == 2
    starts = [header.index(name) for name in ("FLAGS", "SEVERITY", "STATUS", "CHANNEL", "SUBJECT")]
    for row in rows:  # every column starts where its header starts, twilio-sms or smtp
        for start in starts:
            assert row[start - 2 : start] == "  " and row[start] != " ", (header, row)
    (sms_row,) = [r for r in rows if "twilio-sms" in r]
    assert sms_row[header.index("FLAGS") :].split()[0].endswith("E")
    assert "Export question" in sms_row


def test_tickets_all_lists_every_ticket_and_a_cut_list_says_how_to_page(
    config_with_tickets: Path,
) -> None:
    from gateway.storage.models import Ticket

    def many(arg: Any) -> None:
        session, (first, _second) = arg
        columns = [c.key for c in Ticket.__table__.columns if c.key not in ("id", "reference")]
        for i in range(110):
            copy = Ticket(**{k: getattr(first, k) for k in columns})
            copy.reference = f"T-{900000 + i}"
            copy.status = "closed" if i % 2 else "open"
            session.add(copy)

    _edit_tickets(config_with_tickets, many)
    every = gateway_cli(config_with_tickets, "tickets", "--json", "--all")
    assert every.returncode == 0, every.stderr
    assert len(json.loads(every.stdout)) == 112
    assert b"of 112" not in every.stderr
    page = gateway_cli(config_with_tickets, "tickets", "--json", "--limit", "50")
    assert len(json.loads(page.stdout)) == 50
    assert b"tickets 1-50 of 57; next page: --offset 50 --limit 50" in page.stderr
    rest = gateway_cli(config_with_tickets, "tickets", "--json", "--limit", "50", "--offset", "50")
    assert len(json.loads(rest.stdout)) == 7


def test_an_empty_spool_and_quarantine_say_empty(make_config: Callable[..., Path]) -> None:
    config = make_config()
    assert gateway_cli(config, "spool", "list").stdout == b"spool is empty\n"
    assert gateway_cli(config, "quarantine", "list").stdout == b"quarantine is empty\n"


@pytest.mark.parametrize("flags", [("--honest",), ()], ids=["honest", "no-data"])
def test_evaluate_prints_the_three_honest_evaluations_per_channel(
    make_config: Callable[..., Path], flags: tuple[str, ...]
) -> None:
    config = make_config()
    out = gateway_cli(config, "evaluate", *flags, "--folds", "2")
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    sections = [line for line in text.splitlines() if line.startswith("== ")]
    assert len(sections) == 3, text
    assert sections[0].startswith("== dev set")  # "(evaluation only)", or "not found at"
    assert sections[1] == "== leave-one-domain-out (2 folds of whole industries)"
    assert sections[2] == "== shipped eval.jsonl"
    lodo = text.split(sections[1], 1)[1].split(sections[2], 1)[0]
    for channel in ("pooled", "email", "sms", "voicemail"):
        assert re.search(rf"^{channel} +n= *\d+ +exact [\d.]+ +urgent recall .* jumped the "
                         r"queue: urgent \d+/\d+ \([\d.]+\), others \d+/\d+$", lodo, re.M), lodo


def test_status_shows_no_accepted_counter_for_the_api_which_spools_nothing(
    config_with_tickets: Path,
) -> None:
    # As a daemon leaves it: the API listener has an address but no intake counters.
    status_dir = config_with_tickets.parent / "state" / "status"
    status_dir.mkdir(parents=True, exist_ok=True)
    (status_dir / "daemon.json").write_text(
        json.dumps(
            {
                "listeners": {"smtp": "127.0.0.1:2525", "api": "127.0.0.1:8081"},
                "channels": {"smtp": {"accepted": 3, "temp_failures": 0, "last_error": None}},
            }
        )
    )
    out = gateway_cli(config_with_tickets, "status")
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    lines = {line.split()[1]: line for line in text.splitlines() if line.startswith("listener:")}
    assert "accepted=3" in lines["smtp"]
    assert lines["api"].split() == ["listener:", "api", "127.0.0.1:8081"]


def test_check_config_warns_but_passes_when_a_plan_sells_sms_and_outbound_sms_is_unset(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()  # the sample: growth sells SMS, [webhooks] account_sid = ""
    out = gateway_cli(config, "check-config", env={"GATEWAY_TWILIO_AUTH_TOKEN": ""})
    assert out.returncode == 0, out.stderr
    err = out.stderr.decode()
    assert "warning:" in err and "sell SMS but outbound SMS is not configured" in err
    assert "account_sid" in err and b"config OK" in out.stdout


def test_status_shows_the_outbox_depth_per_channel_and_why_the_oldest_sms_waits(
    make_config: Callable[..., Path], pin_clock: Callable[[str], Any]
) -> None:
    from datetime import timedelta

    from gateway.outbound.twilio_sender import send_due_sms
    from gateway.storage.models import OutboxRow
    from tests.helpers import BUSINESS_HOURS

    now = pin_clock(BUSINESS_HOURS)
    config = make_config()
    gw = Gateway(config)
    with gw.session() as s, s.begin():
        for i, (channel, minutes) in enumerate([("sms", 90), ("sms", 5), ("email", 1)]):
            s.add(
                OutboxRow(
                    header_message_id=f"r{i}@x",
                    kind="ack",
                    channel=channel,
                    recipient="+15550100" if channel == "sms" else "a@example.net",
                    subject="",
                    body="we got it",
                    status="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now - timedelta(minutes=minutes),
                )
            )
    assert send_due_sms(gw.worker.sessions, gw.settings) == 0  # no account_sid: rows wait
    gw.close()
    out = gateway_cli(config, "status", "--json")
    assert out.returncode == 0, out.stderr
    outbox = json.loads(out.stdout)["outbox"]
    assert outbox["email"]["depth"] == 1 and outbox["sms"]["depth"] == 2
    oldest = outbox["sms"]["oldest"]
    assert oldest["attempts"] == 0 and oldest["age_seconds"] >= 90 * 60
    assert "outbound SMS is not configured" in oldest["reason"]
    text = gateway_cli(config, "status").stdout.decode()
    assert re.search(r"outbox sms: +2 waiting, oldest 9\dm .*not configured", text), text
