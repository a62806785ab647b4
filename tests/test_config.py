"""Admins' config: every problem named by file, key and line; a bad reload keeps the old config."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config.errors import ConfigError
from gateway.config.loader import load
from gateway.service.runtime import RuntimeBox, load_runtime
from tests.helpers import ROOT, DaemonProcess, gateway_cli, make_email, wait_for


def problems_of(config: Path) -> list[str]:
    try:
        load(config)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_the_shipped_sample_config_is_valid() -> None:
    out = gateway_cli(ROOT / "config", "check-config")
    assert out.returncode == 0, out.stderr.decode()


def test_a_typoed_key_is_named_with_file_section_and_line(make_config: Callable[..., Path]) -> None:
    config = make_config()
    path = config / "gateway.toml"
    path.write_text(path.read_text().replace("max_sessions = 200", "max_sesions = 200"))
    out = gateway_cli(config, "check-config")
    assert out.returncode == 1
    err = out.stderr.decode()
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "max_sesions" in t)
    assert f"gateway.toml:{line}: smtp.max_sesions: unknown key" in err


def test_a_wrong_type_is_named_with_file_and_key(make_config: Callable[..., Path]) -> None:
    config = make_config()
    path = config / "gateway.toml"
    path.write_text(re.sub(r"(?m)^max_attempts = 3$", 'max_attempts = "three"', path.read_text()))
    assert any(
        "gateway.toml" in p and "spool.max_attempts: must be an integer" in p
        for p in problems_of(config)
    )


def test_a_missing_required_file_is_named(make_config: Callable[..., Path]) -> None:
    config = make_config()
    (config / "gateway.toml").unlink()
    out = gateway_cli(config, "check-config")
    assert out.returncode == 1
    assert "gateway.toml: file is missing" in out.stderr.decode()


def test_check_config_prints_every_problem_at_once(make_config: Callable[..., Path]) -> None:
    config = make_config()
    (config / "customers.toml").write_text(
        '[[account]]\nid = "a"\nplan = "platinum"\ncolour = "red"\n'
    )
    (config / "severity.toml").write_text('levels = ["p1", "p2"]\ndefault = "normal"\n')
    found = problems_of(config)
    assert any("account[0].colour: unknown key" in p for p in found)
    assert any("severity.toml" in p and "default" in p for p in found)


def test_a_customer_on_an_unknown_plan_is_named(make_config: Callable[..., Path]) -> None:
    config = make_config()
    (config / "customers.toml").write_text('[[account]]\nid = "a"\nplan = "platinum"\n')
    (problem,) = problems_of(config)
    assert problem == (
        "customers.toml:3: account[0].plan: unknown plan 'platinum' "
        "(plans: none, basic, growth, custom)"
    )


def test_invalid_toml_names_the_file_and_line(make_config: Callable[..., Path]) -> None:
    config = make_config()
    (config / "plans.toml").write_text('[[plan]]\nname = "basic\n')
    (problem,) = problems_of(config)
    assert problem.startswith("plans.toml:2: not valid TOML")


def test_a_bad_file_on_reload_keeps_the_running_config(make_config: Callable[..., Path]) -> None:
    config = make_config()
    box = RuntimeBox(config, load_runtime(config))
    before = box.current
    (config / "routing.toml").write_text("default_queue = 42\n")
    assert box.reload() is False
    assert box.current is before
    assert box.last_error and "routing.toml" in box.last_error
    (config / "routing.toml").write_text('default_queue = "tier2"\n')
    assert box.reload() is True
    assert box.current.policy.default_queue == "tier2"
    assert box.current.generation == before.generation + 1


def test_sighup_applies_a_good_change_and_survives_a_bad_one(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    daemon = DaemonProcess(config).start()
    try:
        (config / "routing.toml").write_text('default_queue = "night-shift"\n')
        daemon.sighup()
        wait_for(lambda: daemon.status()["config_generation"] == 2)
        wait_for(lambda: all(w["config_generation"] == 2 for w in daemon.worker_status()))
        (config / "routing.toml").write_text("default_queue = [\n")  # broken
        daemon.sighup()
        wait_for(lambda: daemon.status()["config_error"])
        assert "routing.toml" in daemon.status()["config_error"]
        assert daemon.send(make_email()) == {}

        def queue() -> object:
            out = gateway_cli(config, "tickets", "--json")
            data = json.loads(out.stdout) if out.returncode == 0 else []
            return data[0]["queue"] if data else None

        assert wait_for(queue) == "night-shift"  # the good config, still in force
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        daemon.stop()


def _line_of(path: Path, text: str, occurrence: int = 0) -> int:
    lines = [i for i, t in enumerate(path.read_text().splitlines(), 1) if t.strip() == text]
    return lines[occurrence]


def test_an_unknown_plan_in_a_later_account_points_at_that_accounts_line(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    path = config / "customers.toml"
    path.write_text(path.read_text().replace('plan = "basic"', 'plan = "gold"'))
    line = _line_of(path, 'plan = "gold"')
    out = gateway_cli(config, "check-config")
    assert out.returncode == 1
    assert f"customers.toml:{line}: account[1].plan: unknown plan 'gold'" in out.stderr.decode()


def test_an_unknown_level_in_a_later_plan_points_at_that_plans_line(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    path = config / "plans.toml"
    path.write_text(path.read_text().replace('ceiling = "high"', 'ceiling = "severe"'))
    line = _line_of(path, 'ceiling = "severe"')
    assert f"plans.toml:{line}: plan[1].ceiling: 'severe' is not one of the levels" in "\n".join(
        problems_of(config)
    )


def test_a_type_error_does_not_hide_the_cross_reference_problems(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    customers = config / "customers.toml"
    text = customers.read_text().replace('plan = "basic"', 'plan = "gold"')
    text = text.replace("emergency_authorised = true", 'emergency_authorised = "yes"')
    customers.write_text(text)
    plans = config / "plans.toml"
    plans.write_text(plans.read_text().replace('ceiling = "high"', 'ceiling = "severe"'))
    out = gateway_cli(config, "check-config")
    err = out.stderr.decode()
    assert out.returncode == 1
    assert "config is invalid (3 problem(s))" in err, err
    assert "account[0].contacts[0].emergency_authorised: must be true or false" in err
    assert "account[1].plan: unknown plan 'gold'" in err
    assert "plan[1].ceiling: 'severe' is not one of the levels" in err


def test_reloading_new_api_tokens_says_they_apply_at_once_not_after_a_restart(
    make_config: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config()
    box = RuntimeBox(config, load_runtime(config))
    path = config / "gateway.toml"
    path.write_text(
        path.read_text()
        + '\n[[api.tokens]]\nname = "kim"\nsha256 = "'
        + "a" * 64
        + '"\nscopes = ["read"]\n'
    )
    with caplog.at_level(logging.INFO):
        assert box.reload()
    text = caplog.text
    assert "[api] tokens changed in gateway.toml: in effect now" in text
    assert "after a restart" not in text


def test_reloading_webhook_wording_says_it_applies_at_once_and_a_new_port_needs_a_restart(
    make_config: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The webhooks read their greeting, receipt and signature settings per request: a reload
    that changes them says "in effect now"; only the listener's own address needs a restart."""
    config = make_config()
    box = RuntimeBox(config, load_runtime(config))
    path = config / "gateway.toml"
    text = path.read_text()
    text = text.replace(
        'greeting = "Thank you for calling support."', 'greeting = "Hello from support."'
    )
    text = re.sub(r"(\[webhooks\][^\[]*?\nport = )\d+", r"\g<1>18090", text)
    path.write_text(text)
    with caplog.at_level(logging.INFO):
        assert box.reload()
    assert "[webhooks] greeting changed in gateway.toml: in effect now" in caplog.text
    assert "[webhooks] port changed in gateway.toml: takes effect after a restart" in caplog.text
    assert "INSECURE" not in caplog.text


def test_a_reload_that_turns_off_webhook_signatures_is_as_loud_as_a_start(
    make_config: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config()
    box = RuntimeBox(config, load_runtime(config))
    path = config / "gateway.toml"
    path.write_text(
        path.read_text().replace(
            "insecure_skip_signature = false", "insecure_skip_signature = true"
        )
    )
    with caplog.at_level(logging.INFO):
        assert box.reload()
    (record,) = [r for r in caplog.records if "INSECURE" in r.getMessage()]
    assert record.levelno == logging.CRITICAL
    assert box.current.settings.gateway.webhooks.insecure_skip_signature


def test_a_routing_rule_naming_a_classifier_rule_that_does_not_exist_is_named(
    make_config: Callable[..., Path],
) -> None:
    """A `hits` condition on a rule renamed or removed from rules.d/ could never hold: routing
    would quietly stop sending outages to their queue. check-config names the rule and line."""
    config = make_config()
    path = config / "routing.toml"
    text = path.read_text()
    assert 'hits = ["KW_DOWN", "OUTAGE_STOPS_WORK"]' in text
    path.write_text(text.replace('"OUTAGE_STOPS_WORK"]', '"KW_OUTAGE", "MATRIX_URGENT"]'))
    out = gateway_cli(config, "check-config")
    assert out.returncode == 1
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "KW_OUTAGE" in t)
    err = out.stderr.decode()
    assert f"routing.toml:{line}:" in err and "hits: KW_OUTAGE: no classifier rule" in err
    assert "MATRIX_URGENT" not in err.split("KW_OUTAGE", 1)[1].split("\n", 1)[0]
