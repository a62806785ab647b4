"""Admins tune the classifier in files: a local rule changes the verdict after SIGHUP, and a
broken rules file is rejected while the old rules keep working."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.helpers import DaemonProcess, gateway_cli, make_email, wait_for

LOCAL_RULE = """
[[rule]]
name = "LOCAL_FAX_BROKEN"
fields = ["subject+body"]
pattern = 'zebra-fax'
score = 6.0
description = "our customers' fax integration"
"""


def severity_of(config: Path, ref: str) -> str | None:
    out = gateway_cli(config, "show", ref, "--json")
    if out.returncode != 0:
        return None
    data: dict[str, str] = json.loads(out.stdout)
    return data["severity"]


def test_check_config_names_the_rules_file_and_rule_of_a_bad_regex(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    (config / "rules.d" / "50-local.toml").write_text(
        '[[rule]]\nname = "BROKEN_RE"\npattern = "(unclosed"\nscore = 1.0\n'
    )
    out = gateway_cli(config, "check-config")
    assert out.returncode == 1
    err = out.stderr.decode()
    assert "50-local.toml" in err and "BROKEN_RE" in err


def test_a_local_rule_changes_the_verdict_after_sighup_and_a_broken_file_keeps_the_old(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    daemon = DaemonProcess(config).start()
    try:
        body = "The zebra-fax integration keeps dropping pages."
        daemon.send(make_email(subject="fax", body=body, message_id="<f1@x>"))
        before = wait_for(lambda: severity_of(config, "T-000001"))
        local = config / "rules.d" / "50-local.toml"
        local.write_text(local.read_text() + LOCAL_RULE)
        daemon.sighup()
        wait_for(lambda: all(w["config_generation"] == 2 for w in daemon.worker_status()))
        daemon.send(make_email(subject="fax", body=body, message_id="<f2@x>"))
        after = wait_for(lambda: severity_of(config, "T-000002"))
        shown = json.loads(gateway_cli(config, "show", "T-000002", "--json").stdout)
        hits = [h["name"] for h in shown["explanation"]["classifier"]["hits"]]
        assert "LOCAL_FAX_BROKEN" in hits
        levels = ["urgent", "high", "normal", "low"]
        assert levels.index(after) < levels.index(before)
        # A broken rules file: rejected, the daemon keeps the rules it has.
        local.write_text(local.read_text() + '\n[[rule]]\nname = "BAD"\npattern = "("\n')
        daemon.sighup()
        wait_for(lambda: all(w["config_error"] for w in daemon.worker_status()))
        daemon.send(make_email(subject="fax", body=body, message_id="<f3@x>"))
        assert wait_for(lambda: severity_of(config, "T-000003")) == after
    finally:
        daemon.stop()
