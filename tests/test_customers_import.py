"""`gateway customers import`: thousands of accounts from CSV into the database, with a per-row
error report; the worker knows them after a reload."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

from gateway.storage.customers import COLUMNS
from tests.helpers import Gateway, gateway_cli, make_email

HEADER = list(COLUMNS)  # the documented column order


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


def test_an_import_reports_bad_rows_by_line_and_imports_the_rest(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = make_config()
    rows = [
        [
            f"acct{i}",
            f"Account {i}",
            "growth",
            "en",
            f"a{i}.example",
            "Pat",
            f"pat@a{i}.example",
            f"+1617555{i:04d}",
            "yes",
        ]
        for i in range(2500)
    ]
    rows.append(["acctX", "", "platinum", "en", "", "", "x@x.example", "", ""])
    rows.append(["acctY", "", "basic", "en", "", "", "not-an-address", "", ""])
    rows.append(["acctZ", "", "basic", "en", "", "", "", "12", ""])
    out = gateway_cli(config, "customers", "import", str(write_csv(tmp_path / "c.csv", rows)))
    assert out.returncode == 1  # some rows were rejected
    err = out.stderr.decode()
    assert "c.csv:2502: unknown plan 'platinum'" in err
    assert "c.csv:2503: email 'not-an-address' is not an address" in err
    assert "c.csv:2504: phone '12' is not a phone number" in err
    text = out.stdout.decode()
    assert "1000 rows read" in text and "2000 rows read" in text
    assert "2503 rows: 2500 accounts, 2500 contacts imported, 3 rows rejected" in text
    # Importing the same file again changes nothing (accounts are replaced, not added).
    again = gateway_cli(config, "customers", "import", str(tmp_path / "c.csv"))
    assert "2500 accounts, 2500 contacts imported" in again.stdout.decode()


def test_imported_customers_are_identified_by_address_domain_and_phone(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = make_config()
    csv_path = write_csv(
        tmp_path / "c.csv",
        [
            [
                "delta",
                "Delta Dental",
                "custom",
                "en",
                "delta-dental.example",
                "Ray",
                "ray@delta-dental.example",
                "(617) 555-0199",
                "true",
            ],
        ],
    )
    assert gateway_cli(config, "customers", "import", str(csv_path)).returncode == 0
    gw = Gateway(config)
    try:
        from gateway.service.runtime import load_runtime
        from gateway.storage.customers import load_accounts

        gw.box.current = load_runtime(config, imported_accounts=load_accounts(gw.worker.sessions))
        directory = gw.box.current.directory
        assert directory.identify("ray@delta-dental.example", "smtp").plan == "custom"
        assert directory.identify("x@delta-dental.example", "smtp").matched_by == "domain"
        by_phone = directory.identify("+16175550199", "twilio-sms")
        assert (by_phone.account_id, by_phone.emergency_authorised) == ("delta", True)
        gw.ingest(make_email(sender="ray@delta-dental.example", message_id="<r@x>"))
        gw.drain()
        (ticket,) = gw.tickets()
        assert (ticket.account_id, ticket.plan) == ("delta", "custom")
    finally:
        gw.close()


def test_a_worker_started_after_an_import_tickets_the_imported_customer_on_its_plan(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    """`gateway worker` adds the database's customers once it is up, as a reload does."""
    config = make_config()
    row = ["delta", "Delta Dental", "custom", "en", "delta-dental.example", "Ray",
           "ray@delta-dental.example", "", "true"]
    imported = gateway_cli(config, "customers", "import", str(write_csv(tmp_path / "c.csv", [row])))
    assert imported.returncode == 0, imported.stderr.decode()
    mail = make_email(sender="ray@delta-dental.example", message_id="<r@x>")
    assert gateway_cli(config, "ingest", stdin=mail).returncode == 0
    drained = gateway_cli(config, "worker", "--drain")
    assert drained.returncode == 0, drained.stderr.decode()[-2000:]
    (ticket,) = json.loads(gateway_cli(config, "tickets", "--json").stdout)
    assert (ticket["account"], ticket["plan"]) == ("delta", "custom")


def test_a_csv_with_unknown_columns_is_refused_whole(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = make_config()
    path = tmp_path / "bad.csv"
    path.write_text("account,plan,colour\na,basic,red\n")
    out = gateway_cli(config, "customers", "import", str(path))
    assert out.returncode == 1
    assert b"unknown column(s) colour" in out.stderr
