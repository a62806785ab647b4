"""`gateway ingest`, the MTA pipe transport, through the real CLI in subprocesses: its sysexits
contract (0 durable, 65 not a message, 75 try again later) and what `worker --drain` makes of it.

The MTA acts on nothing but the exit code: 0 makes it forget the message, 65 bounces it, 75 keeps
it queued. So 75 must cover every fault of ours (spool, config), 65 only faults of the input."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from gateway.config.loader import load
from gateway.intake.spool import Spool
from tests.conftest import SHARED_DATA
from tests.helpers import Gateway, gateway_cli, make_email

EX_OK, EX_DATAERR, EX_TEMPFAIL = 0, 65, 75
OLE_HEADER = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
OUTLOOK_MSG = SHARED_DATA / "mail" / "spamscope" / "tests" / "mails" / "mail_outlook_1"

TICKET_FIELDS = {
    "schema",
    "reference",
    "status",
    "severity",
    "jump_queue",
    "channel",
    "account",
    "contact",
    "plan",
    "subject",
    "created_at",
    "updated_at",
    "first_response_due",
    "resolution_due",
    "explanation",
    "message_count",
}


def spool_of(config: Path) -> Spool:
    return Spool(load(config).spool_dir)


def pending(config: Path) -> int:
    spool = spool_of(config)
    try:
        return spool.depth()
    finally:
        spool.close()


def outlook_msg() -> bytes:
    """The Outlook .msg from the shared corpus when present, else a synthetic compound file."""
    if OUTLOOK_MSG.is_file() and OUTLOOK_MSG.read_bytes().startswith(OLE_HEADER):
        return OUTLOOK_MSG.read_bytes()
    return OLE_HEADER + bytes(24) + b"\x3e\x00\x03\x00\xfe\xff" + bytes(4000)


# ---- exit codes -------------------------------------------------------------------------------


def test_a_message_on_stdin_exits_0_and_is_one_spool_entry(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    result = gateway_cli(config, "ingest", "--recipient", "Support@Example.com", stdin=make_email())
    assert result.returncode == EX_OK, result.stderr.decode()
    assert b"queued as" in result.stdout
    spool = spool_of(config)
    try:
        (entry,) = spool.pending()
        assert spool.read_raw(entry) == make_email()  # byte for byte
        assert entry.envelope.channel == "pipe"
        assert entry.envelope.recipients == ("support@example.com",)
    finally:
        spool.close()


@pytest.mark.parametrize(
    ("name", "stdin"),
    [
        ("empty input", b""),
        ("blank lines only", b"\n\r\n\n"),
        ("an Outlook .msg", None),
        ("text without a header", b"Hello,\n\nthe printer is broken again.\n\nDana\n"),
    ],
)
def test_input_that_is_not_a_message_exits_65_with_a_reason_and_spools_nothing(
    make_config: Callable[..., Path], name: str, stdin: bytes | None
) -> None:
    config = make_config()
    result = gateway_cli(config, "ingest", stdin=outlook_msg() if stdin is None else stdin)
    assert result.returncode == EX_DATAERR, name
    assert b"not an RFC 5322 message" in result.stderr
    assert b"Traceback" not in result.stderr
    assert pending(config) == 0


def test_a_message_over_max_message_bytes_exits_65(make_config: Callable[..., Path]) -> None:
    config = make_config(limits__max_message_bytes=4096)
    big = make_email(body="x" * 8000)
    result = gateway_cli(config, "ingest", stdin=big)
    assert result.returncode == EX_DATAERR
    assert b"over the 4096-byte message limit" in result.stderr
    assert pending(config) == 0
    # Just under the limit is fine.
    assert gateway_cli(config, "ingest", stdin=make_email()).returncode == EX_OK


def test_an_unwritable_spool_incoming_directory_exits_75(make_config: Callable[..., Path]) -> None:
    """As root, chmod stops nothing: a regular file where `incoming/` belongs does."""
    config = make_config()
    spool_dir = load(config).spool_dir
    spool_dir.mkdir(parents=True)
    (spool_dir / "incoming").write_bytes(b"not a directory")
    result = gateway_cli(config, "ingest", stdin=make_email())
    assert result.returncode == EX_TEMPFAIL, result.stderr.decode()[-600:]
    assert b"Traceback" not in result.stderr


def test_a_spool_path_that_is_a_file_exits_75(make_config: Callable[..., Path]) -> None:
    config = make_config()
    spool_dir = load(config).spool_dir
    spool_dir.parent.mkdir(parents=True, exist_ok=True)
    spool_dir.write_bytes(b"not a directory")
    result = gateway_cli(config, "ingest", stdin=make_email())
    assert result.returncode == EX_TEMPFAIL, result.stderr.decode()[-600:]
    assert b"Traceback" not in result.stderr


def test_a_full_spool_exits_75(make_config: Callable[..., Path]) -> None:
    # More free space demanded than any disk has: the spool refuses as if the disk were full.
    config = make_config(spool__min_free_mib=1024 * 1024 * 1024)
    result = gateway_cli(config, "ingest", stdin=make_email())
    assert result.returncode == EX_TEMPFAIL, result.stderr.decode()[-600:]
    assert b"try again later" in result.stderr
    assert pending(config) == 0


def test_a_config_typo_exits_75_so_the_mta_retries_while_the_admin_fixes_it(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    toml = config / "gateway.toml"
    toml.write_text(toml.read_text().replace("max_attempts = 3", "max_atempts = 3", 1))
    result = gateway_cli(config, "ingest", stdin=make_email())
    assert result.returncode == EX_TEMPFAIL
    assert b"spool.max_atempts: unknown key" in result.stderr
    assert b"gateway.toml" in result.stderr


def test_a_config_that_is_not_toml_exits_75(make_config: Callable[..., Path]) -> None:
    config = make_config()
    (config / "gateway.toml").write_text((config / "gateway.toml").read_text() + "\noops = [\n")
    assert gateway_cli(config, "ingest", stdin=make_email()).returncode == EX_TEMPFAIL


def test_several_files_exit_0_when_each_is_spooled_or_refused_with_its_reason_printed(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    """Issue 19 item 10: one refused file of many is reported on its own line, not a failed
    batch (it exited 65, and a script re-ran the files already spooled)."""
    good = tmp_path / "good.eml"
    good.write_bytes(make_email())
    other = tmp_path / "other.eml"
    other.write_bytes(make_email(message_id="<m2@acme-clinic.example>", body="Second."))
    binary = tmp_path / "outlook.msg"
    binary.write_bytes(outlook_msg())
    config = make_config()
    result = gateway_cli(config, "ingest", str(good), str(binary), str(other))
    assert result.returncode == EX_OK
    assert result.stderr.decode().strip() == f"{binary}: not an RFC 5322 message (no header block)"
    queued = result.stdout.decode().splitlines()
    assert [line.split(": queued as ")[0] for line in queued] == [str(good), str(other)]
    assert pending(config) == 2


def test_an_unreadable_file_is_refused_on_its_own_line_and_the_others_are_spooled(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    good = tmp_path / "good.eml"
    good.write_bytes(make_email())
    missing = tmp_path / "gone.eml"
    config = make_config()
    result = gateway_cli(config, "ingest", str(missing), str(good))
    assert result.returncode == EX_OK
    assert result.stderr.decode().strip() == f"{missing}: cannot read: No such file or directory"
    assert pending(config) == 1
    alone = gateway_cli(config, "ingest", str(missing))
    assert alone.returncode == 66  # EX_NOINPUT: the MTA's and the shell's "cannot open input"


def test_a_single_file_that_is_not_a_message_still_exits_65(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    binary = tmp_path / "outlook.msg"
    binary.write_bytes(outlook_msg())
    assert gateway_cli(make_config(), "ingest", str(binary)).returncode == EX_DATAERR


def test_valid_mail_that_looked_like_no_message_is_spooled_ticketed_and_its_repair_shown(
    make_config: Callable[..., Path],
) -> None:
    """Issue 19 item 9: NUL bytes of a UTF-16 body, a garbled first line or one leading space
    before the headers made ingest exit 65, and the MTA bounced valid mail. Now each is spooled
    and ticketed; the repair is logged once with the spool id and listed by `show`."""
    utf16 = (
        b"From: dana@acme-clinic.example\nTo: support@example.com\nSubject: UTF-16\n"
        b"Message-ID: <u16@acme-clinic.example>\nMIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=utf-16\n\n" + "Der Server ist down.".encode("utf-16")
    )
    garbled = b"\x1b[0m garbled\n" + make_email(subject="Garbled", message_id="<g@x.example>")
    spaced = b" " + make_email(subject="Spaced", message_id="<s@x.example>")
    config = make_config()
    spool_ids = []
    for raw in (utf16, garbled, spaced):
        result = gateway_cli(config, "ingest", stdin=raw)
        assert result.returncode == EX_OK, result.stderr
        spool_ids.append(result.stdout.decode().split("queued as ")[1].strip())
    drained = gateway_cli(config, "worker", "--drain")
    log = drained.stderr.decode()
    assert drained.returncode == 0, log[-2000:]
    for spool_id in spool_ids[1:]:
        assert log.count(f"parse defects in {spool_id} ") == 1, log[-2000:]
    assert f"parse defects in {spool_ids[0]} " not in log  # nothing was lost in that one

    tickets = json.loads(gateway_cli(config, "tickets", "--json").stdout)
    by_subject = {t["subject"]: t for t in tickets}
    assert set(by_subject) == {"UTF-16", "Garbled", "Spaced"}
    assert "parse-defects" in by_subject["Garbled"]["tags"]
    shown = gateway_cli(config, "show", by_subject["Garbled"]["reference"]).stdout.decode()
    assert "PARSE DEFECT headers-repaired (cut before the headers:" in shown
    utf16_shown = gateway_cli(config, "show", by_subject["UTF-16"]["reference"]).stdout.decode()
    assert "Der Server ist down." in utf16_shown and "PARSE DEFECT" not in utf16_shown


# ---- what the pipe path imports ----------------------------------------------------------------

# An MTA starts `gateway ingest` once per message: whatever it imports is paid per message
# (issue 20 outcome 3). The spool needs none of these.
NOT_ON_THE_PIPE_PATH = (
    "sqlalchemy",
    "sklearn",
    "numpy",
    "classifiers",
    "gateway.storage",
    "gateway.stages",
    "gateway.policy",
    "gateway.config.loader",
    "asyncio",
    "logging",
)

MODULES_AFTER_MAIN = """
import json, sys
from gateway.cli.main import main
code = main(sys.argv[1:])
sys.stdout.write("\\n" + json.dumps(sorted(sys.modules)))
sys.exit(code)
"""


def modules_after_ingest(config: Path, *global_args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", MODULES_AFTER_MAIN, *global_args, "ingest", "--quiet"],
        input=make_email(),
        capture_output=True,
        timeout=120,
        cwd=config.parent,
    )
    assert done.returncode == EX_OK, done.stderr.decode()[-2000:]
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("global_args", [("--config", "{config}"), ("-v", "--config={config}")])
def test_ingest_spools_without_importing_the_database_the_classifier_or_the_policy(
    make_config: Callable[..., Path], global_args: tuple[str, ...]
) -> None:
    config = make_config()
    modules = modules_after_ingest(config, *(a.format(config=config) for a in global_args))
    assert "gateway.intake.spool" in modules  # it did spool, through the light path
    assert pending(config) == 1
    loaded = {
        m
        for m in modules
        for banned in NOT_ON_THE_PIPE_PATH
        if m.split(".")[0] == banned or m == banned or m.startswith(banned + ".")
    }
    assert not loaded


def test_an_abbreviated_global_option_takes_the_full_parser_and_still_spools(
    make_config: Callable[..., Path],
) -> None:
    """argparse accepts `--conf` for `--config`; the light path's argument scan does not know
    it, so the full parser runs: slower, never wrong."""
    config = make_config()
    modules = modules_after_ingest(config, "--conf", str(config))
    assert "sqlalchemy" in modules  # the full parser (billing's commands import it)
    assert pending(config) == 1


def test_help_still_lists_ingest_and_ingest_help_its_options(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    assert b"ingest" in gateway_cli(config, "--help").stdout
    assert b"--recipient" in gateway_cli(config, "ingest", "--help").stdout


# ---- then the worker --------------------------------------------------------------------------


def test_worker_drain_turns_a_piped_message_into_a_ticket_with_the_documented_json(
    make_config: Callable[..., Path], database_url: str
) -> None:
    config = make_config(storage__url=database_url)
    assert gateway_cli(config, "ingest", stdin=make_email()).returncode == EX_OK
    drained = gateway_cli(config, "worker", "--drain")
    assert drained.returncode == 0, drained.stderr.decode()[-2000:]
    assert drained.stdout.strip() == b"processed 1 spool entries"
    assert pending(config) == 0

    listed = gateway_cli(config, "tickets", "--json")
    assert listed.returncode == 0, listed.stderr.decode()[-2000:]
    (ticket,) = json.loads(listed.stdout)
    assert set(ticket) >= TICKET_FIELDS
    assert ticket["schema"] == 1
    assert ticket["reference"].startswith("T-")
    assert ticket["status"] == "new"
    assert ticket["channel"] == "pipe"
    assert ticket["subject"] == "Printer offline"
    assert ticket["contact"] == "dana@acme-clinic.example"
    assert ticket["message_count"] == 1
    assert isinstance(ticket["jump_queue"], bool)
    assert isinstance(ticket["explanation"], dict)
    for field in ("created_at", "updated_at", "first_response_due", "resolution_due"):
        if ticket[field] is not None:
            assert datetime.fromisoformat(ticket[field]).utcoffset() is not None, field
    assert ticket["created_at"] is not None


def test_a_worker_scoring_its_model_imports_neither_scikit_learn_nor_scipy(
    make_config: Callable[..., Path],
) -> None:
    """Importing scikit-learn (and through it scipy.stats) cost every worker start about a
    second, most of `worker --drain`'s start (issue 20); scoring a format-5 model needs
    neither. Fitting a model still imports both (classifiers/fitting.py)."""
    config = make_config()
    assert gateway_cli(config, "ingest", stdin=make_email()).returncode == EX_OK
    done = subprocess.run(
        [sys.executable, "-c", MODULES_AFTER_MAIN, "--config", str(config), "worker", "--drain"],
        capture_output=True, timeout=120, cwd=config.parent,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"processed 1 spool entries" in done.stdout
    modules = set(json.loads(done.stdout.splitlines()[-1]))
    assert "classifiers.model" in modules  # it did classify
    assert not {m for m in modules if m.split(".")[0] in ("sklearn", "scipy")}


def test_a_bounce_piped_with_an_empty_sender_is_recorded_but_never_ticketed(
    make_config: Callable[..., Path],
) -> None:
    """Postfix passes `--sender ${sender}`, which is empty for bounces."""
    config = make_config()
    raw = make_email(sender="MAILER-DAEMON@mx.example", subject="Undelivered Mail")
    assert gateway_cli(config, "ingest", "--sender", "", stdin=raw).returncode == EX_OK
    assert gateway_cli(config, "worker", "--drain").returncode == 0
    listed = gateway_cli(config, "tickets", "--json", "--all")
    assert json.loads(listed.stdout) == []


def test_a_message_ingest_accepted_becomes_a_ticket_even_with_oversized_header_values(
    gateway: Gateway,
) -> None:
    """Exit 0 promised the MTA we have it; an overlong Message-ID or display name (spam has
    both) must not make the database refuse the row and quarantine the message."""
    gateway.ingest(make_email(message_id="<" + "a" * 600 + "@spam.example>"), channel="pipe")
    gateway.ingest(
        make_email(
            sender='"' + "N" * 250 + '" <stranger@unknown.example>',
            message_id="<long-name@unknown.example>",
            body="A long display name.",
        ),
        channel="pipe",
    )
    gateway.drain()
    assert [(r.stage, r.error[:160]) for r in gateway.spool.quarantined()] == []
    assert [i.outcome for i in gateway.intakes()] == ["ticket", "ticket"]
