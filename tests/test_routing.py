"""Routing rules: ordered, first match wins unless a rule continues, every condition explained,
every config mistake named by file, key and line. Pure functions on explicit instants."""

from __future__ import annotations

import re
import shutil
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.errors import ConfigError
from gateway.config.loader import load
from gateway.config.schema import CalendarsFile, RoutingFile
from gateway.config.validate import build
from gateway.policy.calendars import Calendar, build_calendars
from gateway.policy.routing import Router, RoutingFacts, build_router, check_routing, route
from tests.helpers import ROOT

NY = ZoneInfo("America/New_York")
PLANS = ("none", "basic", "growth", "custom")
LEVELS = ("urgent", "high", "normal", "low")
TUESDAY_10 = datetime(2026, 6, 9, 10, 0, tzinfo=NY)
SATURDAY_03 = datetime(2026, 6, 13, 3, 0, tzinfo=NY)


@pytest.fixture(scope="module")
def calendars() -> dict[str, Calendar]:
    return dict(build_calendars(load(ROOT / "config").calendars))


def routing_file(text: str, path: Path | None = None) -> RoutingFile:
    value, problems = build(RoutingFile, tomllib.loads(text), path or Path("routing.toml"))
    assert value is not None, [str(p) for p in problems]
    return value


def router_of(text: str, calendars: dict[str, Calendar], plans: tuple[str, ...] = PLANS) -> Router:
    return build_router(routing_file(text), plans, LEVELS, calendars)


def facts(**overrides: Any) -> RoutingFacts:
    values: dict[str, Any] = {
        "channel": "email",
        "account_id": "unknown",
        "plan": "none",
        "sender": "someone@stranger.example",
        "recipients": ("support@example.com",),
        "severity": "normal",
        "jump_queue": False,
        "emergency": False,
        "hits": (),
        "text": "How do I export a report?",
        "at": TUESDAY_10,
    }
    values.update(overrides)
    return RoutingFacts(**values)


# ---- order and continue -----------------------------------------------------------------------

TWO_RULES = """
default_queue = "support"
[[rule]]
name = "FIRST"
queue = "one"
[rule.match]
channel = ["sms"]
[[rule]]
name = "SECOND"
queue = "two"
[rule.match]
channel = ["sms", "email"]
"""


def test_the_first_matching_rule_wins(calendars: dict[str, Calendar]) -> None:
    router = router_of(TWO_RULES, calendars)
    sms = route(router, facts(channel="sms"))
    assert (sms.queue, sms.rule, sms.matched) == ("one", "FIRST", ("FIRST",))
    email = route(router, facts(channel="email"))
    assert (email.queue, email.rule, email.matched) == ("two", "SECOND", ("SECOND",))


def test_no_matching_rule_sends_the_ticket_to_the_default_queue_with_no_rule(
    calendars: dict[str, Calendar],
) -> None:
    result = route(router_of(TWO_RULES, calendars), facts(channel="voice"))
    assert (result.queue, result.rule, result.matched, result.tags) == ("support", "", (), ())
    assert result.severity_floor is None and result.notify == () and result.assignee == ""
    assert result.reason == "no rule matched: default queue support"


CONTINUING = """
[[rule]]
name = "TAG_CLINIC"
queue = "clinic"
tags = ["healthcare", "shared"]
notify = ["a@example.com"]
severity_floor = "normal"
assignee = "dana"
continue_matching = true
[rule.match]
account = ["acme-clinic"]
[[rule]]
name = "TAG_SMS"
tags = ["sms", "shared"]
notify = ["a@example.com", "b@example.com"]
severity_floor = "high"
continue_matching = true
[rule.match]
channel = ["sms"]
[[rule]]
name = "OUTAGES"
queue = "incidents"
tags = ["outage"]
severity_floor = "normal"
assignee = "ops"
[rule.match]
hits = ["KW_DOWN"]
[[rule]]
name = "NEVER_AFTER_A_STOP"
queue = "late"
tags = ["late"]
"""


def test_continue_adds_up_tags_and_notify_and_a_later_rule_sets_the_queue(
    calendars: dict[str, Calendar],
) -> None:
    result = route(
        router_of(CONTINUING, calendars),
        facts(channel="sms", account_id="acme-clinic", hits=("KW_DOWN",)),
    )
    assert result.matched == ("TAG_CLINIC", "TAG_SMS", "OUTAGES")
    assert (result.queue, result.rule) == ("incidents", "OUTAGES")
    assert result.tags == ("healthcare", "shared", "sms", "outage")
    assert result.notify == ("a@example.com", "b@example.com")
    # The most severe floor asked for wins; the last assignee named wins.
    assert result.severity_floor == "high"
    assert result.assignee == "ops"


def test_a_continuing_rule_keeps_its_queue_when_no_later_rule_names_one(
    calendars: dict[str, Calendar],
) -> None:
    router = router_of(CONTINUING.split('[[rule]]\nname = "NEVER_AFTER_A_STOP"')[0], calendars)
    result = route(router, facts(channel="sms", account_id="acme-clinic"))
    assert (result.queue, result.rule) == ("clinic", "TAG_CLINIC")
    assert result.matched == ("TAG_CLINIC", "TAG_SMS")


def test_a_rule_without_a_queue_leaves_the_default_and_the_reason_says_so(
    calendars: dict[str, Calendar],
) -> None:
    router = router_of(CONTINUING.split('[[rule]]\nname = "OUTAGES"')[0], calendars)
    result = route(router, facts(channel="sms"))
    assert (result.queue, result.rule, result.matched) == ("support", "", ("TAG_SMS",))
    assert result.reason == "rule TAG_SMS (channel sms); no queue named: default queue support"


def test_a_rule_that_does_not_continue_stops_routing(calendars: dict[str, Calendar]) -> None:
    result = route(router_of(CONTINUING, calendars), facts(hits=("KW_DOWN",)))
    assert result.matched == ("OUTAGES",)
    assert "late" not in result.tags


def test_a_rule_without_conditions_matches_every_ticket(calendars: dict[str, Calendar]) -> None:
    result = route(router_of(CONTINUING, calendars), facts())
    assert (result.queue, result.rule) == ("late", "NEVER_AFTER_A_STOP")
    assert result.reason == "rule NEVER_AFTER_A_STOP (every ticket)"


# ---- each condition alone ---------------------------------------------------------------------

# (condition in [rule.match], facts that satisfy it, facts that do not, explanation when held)
CONDITIONS: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ('channel = ["sms", "voice"]', {"channel": "voice"}, {"channel": "email"}, "channel voice"),
    (
        'account = ["acme-clinic"]',
        {"account_id": "acme-clinic"},
        {"account_id": "bluebird"},
        "account acme-clinic",
    ),
    ('plan = ["basic"]', {"plan": "basic"}, {"plan": "growth"}, "plan basic"),
    ('plan_at_least = "growth"', {"plan": "custom"}, {"plan": "basic"}, "plan custom >= growth"),
    (
        'sender = ["Dana@Acme-Clinic.example"]',
        {"sender": "dana@acme-clinic.example"},
        {"sender": "frontdesk@acme-clinic.example"},
        "sender dana@acme-clinic.example",
    ),
    (
        'sender = ["+1 (617) 555-0100"]',
        {"channel": "sms", "sender": "+16175550100"},
        {"channel": "sms", "sender": "+16175550199"},
        "sender +16175550100",
    ),
    (
        'sender_domain = ["acme-clinic.example"]',
        {"sender": "dana@mail.acme-clinic.example"},
        {"sender": "dana@notacme-clinic.example"},
        "sender domain acme-clinic.example",
    ),
    (
        'recipient = ["emergency@example.com"]',
        {"recipients": ("support@example.com", "Emergency@Example.com")},
        {"recipients": ("support@example.com",)},
        "recipient emergency@example.com",
    ),
    ('severity = ["urgent"]', {"severity": "urgent"}, {"severity": "high"}, "severity urgent"),
    (
        'severity_at_least = "high"',
        {"severity": "urgent"},
        {"severity": "normal"},
        "severity urgent >= high",
    ),
    ("jump_queue = true", {"jump_queue": True}, {"jump_queue": False}, "jump_queue=yes"),
    ("jump_queue = false", {"jump_queue": False}, {"jump_queue": True}, "jump_queue=no"),
    ("emergency = true", {"emergency": True}, {"emergency": False}, "emergency=yes"),
    (
        'hits = ["KW_DOWN", "KW_OUTAGE"]',
        {"hits": ("SLOW", "KW_OUTAGE")},
        {"hits": ("SLOW",)},
        "hit KW_OUTAGE",
    ),
    (
        'keywords = ["fax", "e-prescri"]',
        {"text": "Our E-Prescribing link fails"},
        {"text": "Our printer fails"},
        "keyword 'e-prescri'",
    ),
    (
        "pattern = '\\binvoice\\b'",
        {"text": "Where is my INVOICE?"},
        {"text": "invoices are fine"},
        "pattern '\\\\binvoice\\\\b' found 'INVOICE'",
    ),
    ('during = "business"', {"at": TUESDAY_10}, {"at": SATURDAY_03}, "during business hours"),
    ('outside = "business"', {"at": SATURDAY_03}, {"at": TUESDAY_10}, "outside business hours"),
]


@pytest.mark.parametrize(
    ("condition", "holds", "fails", "explained"), CONDITIONS, ids=[c[0] for c in CONDITIONS]
)
def test_each_condition_alone_matches_and_fails(
    calendars: dict[str, Calendar],
    condition: str,
    holds: dict[str, Any],
    fails: dict[str, Any],
    explained: str,
) -> None:
    router = router_of(
        f'[[rule]]\nname = "ONLY"\nqueue = "q"\n[rule.match]\n{condition}\n', calendars
    )
    matched = route(router, facts(**holds))
    assert (matched.queue, matched.rule) == ("q", "ONLY")
    assert matched.reason == f"rule ONLY ({explained})"
    missed = route(router, facts(**fails))
    assert (missed.queue, missed.rule) == ("support", "")


def test_all_conditions_of_a_rule_must_hold(calendars: dict[str, Calendar]) -> None:
    router = router_of(
        '[[rule]]\nname = "BOTH"\nqueue = "q"\n[rule.match]\nchannel = ["sms"]\n'
        'plan_at_least = "growth"\n',
        calendars,
    )
    assert route(router, facts(channel="sms", plan="growth")).rule == "BOTH"
    assert route(router, facts(channel="sms", plan="basic")).rule == ""
    assert route(router, facts(channel="email", plan="growth")).rule == ""


def test_plan_at_least_compares_by_plan_order_not_by_name(calendars: dict[str, Calendar]) -> None:
    text = '[[rule]]\nname = "UP"\nqueue = "q"\n[rule.match]\nplan_at_least = "growth"\n'
    shipped = router_of(text, calendars)
    # "custom" sorts before "growth" by name but is the higher tier.
    assert [route(shipped, facts(plan=p)).rule for p in PLANS] == ["", "", "UP", "UP"]
    # The same rule over a reordered plans.toml follows the new order.
    reordered = router_of(text, calendars, plans=("custom", "growth", "basic", "none"))
    assert [route(reordered, facts(plan=p)).rule for p in PLANS] == ["UP", "UP", "UP", ""]
    # A plan the router does not know (a stale customer record) never satisfies "at least".
    assert route(shipped, facts(plan="platinum")).rule == ""


def test_severity_at_least_compares_by_level_order(calendars: dict[str, Calendar]) -> None:
    text = '[[rule]]\nname = "HOT"\nqueue = "q"\n[rule.match]\nseverity_at_least = "high"\n'
    router = router_of(text, calendars)
    assert [route(router, facts(severity=s)).rule for s in LEVELS] == ["HOT", "HOT", "", ""]


# ---- business hours ---------------------------------------------------------------------------

HOURS = [
    (datetime(2026, 6, 9, 7, 59, tzinfo=NY), False),
    (datetime(2026, 6, 9, 8, 0, tzinfo=NY), True),
    (datetime(2026, 6, 9, 17, 59, tzinfo=NY), True),
    (datetime(2026, 6, 9, 18, 0, tzinfo=NY), False),
    (datetime(2026, 6, 13, 10, 0, tzinfo=NY), False),  # Saturday
    (datetime(2026, 7, 3, 10, 0, tzinfo=NY), False),  # Independence Day (observed), a Friday
    # 12:00 UTC is 08:00 in New York in summer (EDT): the calendar's zone decides, not UTC's.
    (datetime(2026, 6, 9, 12, 0, tzinfo=UTC), True),
    (datetime(2026, 6, 9, 11, 59, tzinfo=UTC), False),
]


@pytest.mark.parametrize(("at", "open_"), HOURS, ids=[f"{a.isoformat()}" for a, _ in HOURS])
def test_during_and_outside_follow_the_business_calendar_in_new_york(
    calendars: dict[str, Calendar], at: datetime, open_: bool
) -> None:
    router = router_of(
        '[[rule]]\nname = "OPEN"\nqueue = "day"\n[rule.match]\nduring = "business"\n'
        '[[rule]]\nname = "CLOSED"\nqueue = "night"\n[rule.match]\noutside = "business"\n',
        calendars,
    )
    assert route(router, facts(at=at)).rule == ("OPEN" if open_ else "CLOSED")


def test_routing_facts_refuse_a_naive_instant() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        facts(at=datetime(2026, 6, 9, 10, 0))


# ---- explanations -----------------------------------------------------------------------------


def test_the_reason_names_the_rule_and_the_conditions_that_held(
    calendars: dict[str, Calendar],
) -> None:
    router = router_of(
        '[[rule]]\nname = "EMERGENCIES"\nqueue = "emergency"\n[rule.match]\n'
        'emergency = true\nplan_at_least = "growth"\n',
        calendars,
    )
    result = route(router, facts(emergency=True, plan="growth"))
    assert result.reason == "rule EMERGENCIES (plan growth >= growth, emergency=yes)"


def test_the_reason_lists_every_matched_rule_in_order(calendars: dict[str, Calendar]) -> None:
    result = route(
        router_of(CONTINUING, calendars),
        facts(channel="sms", account_id="acme-clinic", hits=("KW_DOWN",)),
    )
    assert result.reason == (
        "rule TAG_CLINIC (account acme-clinic); then rule TAG_SMS (channel sms); "
        "then rule OUTAGES (hit KW_DOWN)"
    )


# ---- validation -------------------------------------------------------------------------------


def copy_config(tmp_path: Path, routing: str) -> Path:
    config = tmp_path / "config"
    shutil.copytree(ROOT / "config", config)
    (config / "routing.toml").write_text(routing)
    return config


def problems_of(config: Path) -> list[str]:
    try:
        load(config)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


BROKEN = """\
default_queue = "support"

[[rule]]
name = "FINE"
queue = "one"
[rule.match]
plan = ["growth"]

[[rule]]
name = "BROKEN"
queue = "two"
severity_floor = "critical"
[rule.match]
plan_at_least = "gold"
severity_at_least = "p1"
during = "office"
"""


def test_unknown_plan_level_and_calendar_are_named_with_file_key_and_line(
    tmp_path: Path,
) -> None:
    found = problems_of(copy_config(tmp_path, BROKEN))
    assert found == [
        "routing.toml:12: rule[1].severity_floor: unknown level 'critical' "
        "(levels: urgent, high, normal, low)",
        "routing.toml:14: rule[1].match.plan_at_least: unknown plan 'gold' "
        "(plans, lowest first: none, basic, growth, custom)",
        "routing.toml:15: rule[1].match.severity_at_least: unknown level 'p1' "
        "(levels, most severe first: urgent, high, normal, low)",
        "routing.toml:16: rule[1].match.during: unknown calendar 'office' "
        "(calendars.toml has business, always)",
    ]


def test_a_duplicate_rule_name_is_named(tmp_path: Path) -> None:
    text = BROKEN.replace('name = "BROKEN"', 'name = "FINE"').split("severity_floor")[0]
    assert problems_of(copy_config(tmp_path, text)) == [
        "routing.toml:10: rule[1].name: duplicate rule name 'FINE' (also rule[0])"
    ]


def test_an_unknown_key_in_match_is_named_with_its_line(tmp_path: Path) -> None:
    text = BROKEN.split('[[rule]]\nname = "BROKEN"')[0] + 'colour = "red"\n'
    (problem,) = problems_of(copy_config(tmp_path, text))
    assert problem.startswith("routing.toml:9: rule[0].match.colour: unknown key (known keys here:")


def test_continue_is_spelled_continue_matching_and_the_error_says_which_keys_exist(
    tmp_path: Path,
) -> None:
    text = '[[rule]]\nname = "A"\nqueue = "q"\ncontinue = true\n'
    (problem,) = problems_of(copy_config(tmp_path, text))
    assert problem.startswith("routing.toml:4: rule[0].continue: unknown key")
    assert "continue_matching" in problem


def test_a_wrong_type_is_named_with_file_and_key(tmp_path: Path) -> None:
    text = BROKEN.split('[[rule]]\nname = "BROKEN"')[0].replace(
        'plan = ["growth"]', 'plan = "growth"'
    )
    assert problems_of(copy_config(tmp_path, text)) == [
        "routing.toml:7: rule[0].match.plan: must be a list, not 'growth'"
    ]


def test_a_bad_regular_expression_is_named(tmp_path: Path) -> None:
    text = '[[rule]]\nname = "A"\nqueue = "q"\n[rule.match]\npattern = "(unclosed"\n'
    (problem,) = problems_of(copy_config(tmp_path, text))
    assert problem.startswith(
        "routing.toml:5: rule[0].match.pattern: not a valid regular expression: missing )"
    )


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            'name = "lower"\nqueue = "q"',
            "rule[0].name: 'lower': rule names are UPPER_SNAKE (A-Z, 0-9, _)",
        ),
        (
            'name = "A"\n[rule.match]\nplan = ["growth"]\nplan_at_least = "basic"',
            "rule[0].match.plan_at_least: give plan or plan_at_least, not both",
        ),
        (
            'name = "A"\n[rule.match]\nchannel = []',
            "rule[0].match.channel: is empty, so the rule could never match; leave the key out "
            "to match any",
        ),
        (
            'name = "A"\n[rule.match]\nchannel = ["smtp"]',
            "rule[0].match.channel: 'smtp' is a transport; use the channel kind 'email' "
            "(as plans.toml does)",
        ),
        (
            'name = "A"\n[rule.match]\nsender_domain = ["@acme.example"]',
            "rule[0].match.sender_domain: '@acme.example' is not a domain (write it without '@')",
        ),
        (
            'name = "A"\nnotify = ["oncall"]',
            "rule[0].notify: 'oncall' is not a mail address",
        ),
        (
            'name = "A"\n[rule.match]\nduring = "business"\noutside = "business"',
            "rule[0].match.outside: during and outside the same calendar 'business' can never "
            "both hold",
        ),
        (
            'name = "A"\nqueue = "q"\n[[rule]]\nname = "B"\nqueue = "r"',
            "rule[1].name: rule B is never reached: rule[0] A matches every ticket and does "
            "not continue",
        ),
    ],
)
def test_rules_that_could_never_work_are_named(rule: str, expected: str) -> None:
    found = check_routing(
        routing_file(f"[[rule]]\n{rule}\n"), PLANS, LEVELS, {"business", "always"}
    )
    assert [f"{p.key}: {p.message}" for p in found] == [expected]


def test_a_broken_plans_file_is_reported_and_hides_none_of_routings_problems(
    tmp_path: Path,
) -> None:
    """Issue 17: every problem at once. The plans file's own type error is named at its line,
    and routing is still checked (against the plans that file does define: only "basic")."""
    config = copy_config(tmp_path, BROKEN)
    (config / "plans.toml").write_text('[[plan]]\nname = "basic"\nchannels = "email"\n')
    found = problems_of(config)
    assert "plans.toml:3: plan[0].channels: must be a list, not 'email'" in found
    routing = [p for p in found if p.startswith("routing.toml")]
    assert [p.split(":")[1] for p in routing] == ["7", "12", "14", "15", "16"]
    assert (
        "routing.toml:7: rule[0].match.plan: unknown plan 'growth' (plans, lowest first: basic)"
        in routing
    )


def test_build_router_refuses_names_it_cannot_resolve(calendars: dict[str, Calendar]) -> None:
    with pytest.raises(ConfigError, match="unknown calendar 'office'"):
        router_of('[[rule]]\nname = "A"\n[rule.match]\nduring = "office"\n', calendars)


# ---- the shipped sample -----------------------------------------------------------------------

SAMPLE = ROOT / "config" / "routing.toml"
# Each row is a line of the sample's header comment, with the facts that situation means.
SAMPLE_TABLE: list[tuple[str, dict[str, Any]]] = [
    (
        "an SMS from acme-clinic about a fax outage, Tue 10:00 New York -> queue integrations, "
        "tags healthcare, fax",
        {
            "channel": "sms",
            "account_id": "acme-clinic",
            "plan": "growth",
            "sender": "+16175550100",
            "text": "our fax is down since this morning",
            "hits": ("KW_DOWN",),
            "at": TUESDAY_10,
        },
    ),
    (
        'an urgent email from acme-clinic "server down", Sat 03:00 New York -> queue on-call, '
        "tags healthcare, after-hours",
        {
            "account_id": "acme-clinic",
            "plan": "growth",
            "sender": "dana@acme-clinic.example",
            "severity": "urgent",
            "text": "server down\nNobody can log in.",
            "hits": ("KW_DOWN",),
            "at": SATURDAY_03,
        },
    ),
    (
        "the same email on Tue 10:00 New York -> queue incidents, tags healthcare, outage",
        {
            "account_id": "acme-clinic",
            "plan": "growth",
            "sender": "dana@acme-clinic.example",
            "severity": "urgent",
            "text": "server down\nNobody can log in.",
            "hits": ("KW_DOWN",),
            "at": TUESDAY_10,
        },
    ),
    (
        'an urgent email from bluebird "printer down", Sat 03:00 New York -> queue incidents, '
        "tags outage",
        {
            "account_id": "bluebird",
            "plan": "basic",
            "sender": "sam@bluebird.example",
            "severity": "urgent",
            "text": "printer down",
            "hits": ("KW_DOWN",),
            "at": SATURDAY_03,
        },
    ),
    (
        "an email from bluebird about an invoice -> queue billing, tags billing",
        {
            "account_id": "bluebird",
            "plan": "basic",
            "sender": "sam@bluebird.example",
            "text": "Question about invoice 2026-114",
        },
    ),
    (
        "a voice call from an unknown number -> queue phone, tags phone",
        {"channel": "voice", "sender": "+15555550123", "text": "(voicemail, no transcript)"},
    ),
    ("a how-to question by email from a stranger -> queue support, tags (none)", {}),
]


def test_the_shipped_sample_is_valid() -> None:
    settings_ = load(ROOT / "config")
    assert settings_.routing.rule, "the sample should show rules"


@pytest.mark.parametrize(("row", "situation"), SAMPLE_TABLE, ids=[r[:40] for r, _ in SAMPLE_TABLE])
def test_the_shipped_sample_routes_as_its_header_comment_says(
    calendars: dict[str, Calendar], row: str, situation: dict[str, Any]
) -> None:
    assert f"#   {row}\n" in SAMPLE.read_text(), "the sample's header table changed"
    found = re.fullmatch(r".* -> queue (\S+), tags (.*)", row)
    assert found
    queue, tags = found.group(1), found.group(2)
    sample = load(ROOT / "config")
    router = build_router(
        sample.routing,
        [p.name for p in sample.plans.plan],
        sample.severity.levels,
        calendars,
    )
    result = route(router, facts(**situation))
    assert result.queue == queue
    assert result.tags == (() if tags == "(none)" else tuple(tags.split(", ")))


def test_every_row_of_the_samples_header_table_is_tested() -> None:
    header = SAMPLE.read_text().split("\ndefault_queue = ")[0]
    rows = [line[4:] for line in header.splitlines() if " -> queue " in line]
    assert rows == [row for row, _ in SAMPLE_TABLE]


# ---- properties -------------------------------------------------------------------------------

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_@.+0123456789", max_size=24)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.timezones()
)
arbitrary_facts = st.builds(
    RoutingFacts,
    channel=st.one_of(st.sampled_from(["email", "sms", "voice", "slack"]), names),
    account_id=st.one_of(st.sampled_from(["acme-clinic", "bluebird", "unknown"]), names),
    plan=st.one_of(st.sampled_from(PLANS), names),
    sender=st.one_of(
        st.sampled_from(["dana@acme-clinic.example", "+16175550100", ""]), names, st.text()
    ),
    recipients=st.lists(st.one_of(st.just("emergency@example.com"), names), max_size=3).map(tuple),
    severity=st.one_of(st.sampled_from(LEVELS), names),
    jump_queue=st.booleans(),
    emergency=st.booleans(),
    hits=st.lists(
        st.one_of(st.sampled_from(["KW_DOWN", "KW_OUTAGE", "SLOW"]), names), max_size=4
    ).map(tuple),
    text=st.text(max_size=300),
    at=instants,
)


@settings(max_examples=300, deadline=None)
@given(situation=arbitrary_facts)
def test_route_never_raises_and_always_names_a_known_queue(situation: RoutingFacts) -> None:
    sample = load_sample_router()
    result = route(sample, situation)
    assert result.queue in sample.queues
    rule_queues = {r.name: r.queue for r in sample.rules}
    if result.rule:
        assert result.rule in result.matched
        assert result.queue == rule_queues[result.rule]
    else:
        assert result.queue == sample.default_queue
    assert set(result.matched) <= set(rule_queues)
    assert result.reason


_SAMPLE_ROUTER: list[Router] = []


def load_sample_router() -> Router:
    if not _SAMPLE_ROUTER:
        sample = load(ROOT / "config")
        _SAMPLE_ROUTER.append(
            build_router(
                sample.routing,
                [p.name for p in sample.plans.plan],
                sample.severity.levels,
                build_calendars(sample.calendars),
            )
        )
    return _SAMPLE_ROUTER[0]


def test_an_empty_routing_file_routes_everything_to_the_default_queue() -> None:
    router = build_router(RoutingFile(), PLANS, LEVELS, build_calendars(CalendarsFile()))
    assert route(router, facts()).queue == "support"
