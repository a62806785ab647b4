"""config/emergency.toml and the prices in plans.toml: validated with errors naming file, key
and line, and reloaded (SIGHUP) with the rest of the config."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config.errors import ConfigError
from gateway.config.loader import load
from gateway.service.runtime import RuntimeBox, load_runtime
from tests.helpers import ROOT


def test_the_sample_config_offers_emergency_support_with_prices() -> None:
    settings = load(ROOT / "config")
    assert settings.emergency.addresses == ("emergency@example.com",)
    assert settings.emergency.terms_version == "2026-11"
    growth = next(p for p in settings.plans.plan if p.name == "growth")
    assert (growth.emergency_price, growth.after_hours_surcharge, growth.currency) == (
        "250.00",
        "100.00",
        "USD",
    )


def test_bad_emergency_settings_are_errors_naming_file_key_and_line(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    (config / "emergency.toml").write_text(
        'terms_version = "2026-11"\n'
        "hold_timeout_minutes = 0\n"
        'after_hours_calendar = "nights"\n'
        'review_at_or_below = "critical"\n'
        'sms_keyword = " "\n'
        "refund_policy = true\n"
    )
    plans = (config / "plans.toml").read_text()
    plans = plans.replace('emergency_price = "250.00"', 'emergency_price = "250,00"')
    plans = plans.replace('currency = "USD"', 'currency = "dollars"', 1)
    (config / "plans.toml").write_text(plans)
    with pytest.raises(ConfigError) as caught:
        load(config)
    problems = [str(p) for p in caught.value.problems]
    expected = [
        r"emergency\.toml:2: hold_timeout_minutes: must be from 1 to 10080 minutes",
        r"emergency\.toml:5: sms_keyword: must not be empty",
        r"emergency\.toml:6: refund_policy: unknown key \(known keys here: .*addresses",
        r"plans\.toml:\d+: plan\[2\]\.emergency_price: must be an amount as a quoted decimal",
        r"plans\.toml:\d+: plan\[2\]\.currency: must be an ISO 4217 code",
    ]
    for pattern in expected:
        assert any(re.match(pattern, p) for p in problems), (pattern, problems)
    # Cross-file checks run when each file is valid on its own.
    (config / "emergency.toml").write_text(
        'after_hours_calendar = "nights"\nreview_at_or_below = "critical"\n'
    )
    sample = (ROOT / "config" / "plans.toml").read_text()
    (config / "plans.toml").write_text(sample.replace('emergency_price = "400.00"', ""))
    with pytest.raises(ConfigError) as caught:
        load(config)
    lines = sample.splitlines()
    custom = lines.index("emergency = true", lines.index('name = "custom"')) + 1
    assert [str(p) for p in caught.value.problems] == [
        "emergency.toml:1: after_hours_calendar: unknown calendar 'nights' (calendars.toml has "
        "always, business)",
        "emergency.toml:2: review_at_or_below: 'critical' is not one of the levels "
        "['urgent', 'high', 'normal', 'low']",
        f"plans.toml:{custom}: plan[3].emergency_price: plan 'custom' offers emergency support, "
        'so it must state its price (e.g. emergency_price = "250.00")',
    ]


def test_a_plan_offering_emergency_support_needs_the_emergency_templates(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    (config / "templates" / "confirm-charge.en.txt").unlink()
    with pytest.raises(ConfigError) as caught:
        load(config)
    assert [str(p) for p in caught.value.problems] == [
        "templates/confirm-charge.en.txt: file is missing (emergency support)"
    ]


def test_emergency_settings_reload_with_the_rest_and_a_bad_edit_keeps_the_running_ones(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    box = RuntimeBox(config, load_runtime(config, with_classifier=False))
    path = config / "emergency.toml"
    path.write_text(path.read_text().replace('sms_keyword = "EMERGENCY"', 'sms_keyword = "SOS"'))
    assert box.reload()  # what SIGHUP does in the daemon and in every worker
    assert box.current.policy.emergency.sms_keyword == "SOS"
    assert box.current.settings.emergency.sms_keyword == "SOS"
    path.write_text(
        path.read_text().replace("hold_timeout_minutes = 240", "hold_timeout_minutes = -1")
    )
    assert not box.reload()
    assert box.current.policy.emergency.hold_timeout_minutes == 240
    assert "emergency.toml" in (box.last_error or "")


def test_a_response_calendar_closed_after_hours_is_rejected_when_a_plan_sells_emergencies(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    path = config / "emergency.toml"
    path.write_text(path.read_text().replace('"24/7"\n', '"business"\n'))
    with pytest.raises(ConfigError) as caught:
        load(config)
    (problem,) = [str(p) for p in caught.value.problems]
    line = path.read_text().splitlines().index('response_calendar = "business"') + 1
    assert problem.startswith(
        f"emergency.toml:{line}: response_calendar: plan(s) growth, custom sell emergency "
        "support after hours, but calendar 'business' is closed after hours"
    ), problem
    path.write_text(path.read_text().replace('"business"\n', '"always"\n', 1))
    load(config)  # a 24/7 calendar from calendars.toml is fine too


def test_the_response_clock_defaults_to_a_built_in_24_7_calendar_and_60_minutes(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    path = config / "emergency.toml"
    text = path.read_text().replace('response_calendar = "24/7"\n', "")
    path.write_text(text.replace("first_response_minutes = 60\n", ""))
    settings = load(config)
    assert (settings.emergency.response_calendar, settings.emergency.first_response_minutes) == (
        "24/7",
        60,
    )
