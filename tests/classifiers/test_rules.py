from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from classifiers.dimensions import extract
from classifiers.rules import load_rules
from classifiers.types import TextInput
from tests.classifiers.conftest import SHIPPED_RULES

RulesDir = Callable[..., Path]


def test_shipped_rules_lint_clean() -> None:
    rules, problems = load_rules(SHIPPED_RULES)
    assert problems == []
    assert rules is not None and len(rules.rules) > 10


def test_lint_names_file_rule_and_line_for_a_bad_regex(rules_dir: RulesDir) -> None:
    path = rules_dir(
        **{
            "50_local.toml": (
                '# local\n\n[[rule]]\nname = "LOCAL_BAD"\npattern = "(unclosed"\nscore = 1.0\n'
            )
        }
    )
    rules, problems = load_rules(path)
    assert rules is None
    [problem] = problems
    assert problem.file.endswith("50-local.toml")
    assert problem.rule == "LOCAL_BAD" and problem.key == "pattern" and problem.line == 4
    assert "regex" in problem.message


def test_lint_reports_an_unknown_field(rules_dir: RulesDir) -> None:
    path = rules_dir(
        **{
            "50_local.toml": (
                '[[rule]]\nname = "LOCAL_X"\nfields = ["subjekt"]\npattern = "x"\nscore = 1\n'
            )
        }
    )
    _, problems = load_rules(path)
    assert [(p.rule, p.key) for p in problems] == [("LOCAL_X", "fields")]
    assert "subjekt" in problems[0].message and problems[0].file.endswith("50-local.toml")


def test_lint_reports_a_meta_naming_an_unknown_rule(rules_dir: RulesDir) -> None:
    path = rules_dir(
        **{
            "50_local.toml": (
                '[[rule]]\nname = "LOCAL_META"\nmeta = "KW_DOWN && NO_SUCH_RULE"\nscore = 1\n'
            )
        }
    )
    _, problems = load_rules(path)
    assert [(p.rule, p.key, p.line) for p in problems] == [("LOCAL_META", "meta", 2)]
    assert "NO_SUCH_RULE" in problems[0].message


def test_lint_reports_unknown_keys_wrong_types_and_bad_names(rules_dir: RulesDir) -> None:
    path = rules_dir(
        shipped=False,
        **{
            "10_a.toml": (
                '[[rule]]\nname = "A_RULE"\npattern = "x"\nscore = "high"\n'
                '[[rule]]\nname = "B_RULE"\npattern = "x"\nscore = 1\nweight = 2\n'
                '[[rule]]\nname = "lower_case"\npattern = "x"\nscore = 1\n'
                '[[rule]]\nname = "C_RULE"\npattern = "x"\nscore = 1\nkind = "command"\n'
            )
        },
    )
    _, problems = load_rules(path)
    assert {(p.rule, p.key) for p in problems} == {
        ("A_RULE", "score"),
        ("B_RULE", "weight"),
        ("lower_case", "name"),
        ("C_RULE", "kind"),
    }


def test_lint_reports_a_toml_syntax_error_with_its_line(rules_dir: RulesDir) -> None:
    path = rules_dir(**{"50_local.toml": '[[rule]]\nname = "X"\nscore = = 1\n'})
    _, problems = load_rules(path)
    assert problems[0].line == 3 and problems[0].file.endswith("50-local.toml")


def test_lint_reports_meta_cycles(rules_dir: RulesDir) -> None:
    path = rules_dir(
        shipped=False,
        **{
            "10_a.toml": (
                '[[rule]]\nname = "M_ONE"\nmeta = "M_TWO"\nscore = 1\n'
                '[[rule]]\nname = "M_TWO"\nmeta = "!M_ONE"\nscore = 1\n'
            )
        },
    )
    _, problems = load_rules(path)
    assert problems and "cycle" in problems[0].message


def test_local_file_overrides_shipped_rule_by_name(rules_dir: RulesDir) -> None:
    path = rules_dir(
        **{
            "50_local.toml": (
                '[[rule]]\nname = "WORK_STOPPED"\npattern = "\\\\bkaput\\\\b"\nscore = 7.5\n'
                'description = "local outage word"\n'
            )
        }
    )
    rules, problems = load_rules(path)
    assert rules is not None, problems
    rule = rules.get("WORK_STOPPED")
    assert rule is not None and rule.score == 7.5 and rule.file.endswith("50-local.toml")
    names = {r.name for r in rules.match(TextInput("", "the till is kaput"))}
    assert "WORK_STOPPED" in names
    assert "WORK_STOPPED" not in {r.name for r in rules.match(TextInput("", "staff sit idle"))}


def test_score_only_entry_changes_just_the_score(rules_dir: RulesDir) -> None:
    path = rules_dir(**{"50_local.toml": '[[rule]]\nname = "WORK_STOPPED"\nscore = 0.25\n'})
    rules, problems = load_rules(path)
    assert rules is not None, problems
    [hit] = [r for r in rules.match(TextInput("", "staff sit idle")) if r.name == "WORK_STOPPED"]
    assert hit.score == 0.25


def _facts(text: TextInput) -> frozenset[str]:
    return extract(f"{text.subject}\n{text.body}").facts()


def test_score_zero_disables_a_rule_and_metas_see_it_unfired(rules_dir: RulesDir) -> None:
    text = TextInput("", "The portal is down and all our staff are sitting idle.")
    rules, _ = load_rules(rules_dir())
    assert rules is not None
    assert {"WORK_STOPPED", "OUTAGE_STOPS_WORK"} <= {
        r.name for r in rules.match(text, facts=_facts(text))}
    rules, problems = load_rules(
        rules_dir(**{"50_local.toml": '[[rule]]\nname = "WORK_STOPPED"\nscore = 0\n'})
    )
    assert rules is not None, problems
    fired = {r.name for r in rules.match(text, facts=_facts(text))}
    assert "WORK_STOPPED" not in fired and "OUTAGE_STOPS_WORK" not in fired


def test_metas_read_the_severity_dimensions_as_facts_which_are_not_hits(
    rules_dir: RulesDir,
) -> None:
    local = ('[[rule]]\nname = "LOCAL_OUTAGE_FOR_ALL"\n'
             'meta = "DIM_STATE_DOWN && DIM_SCOPE_EVERYONE && DIM_TIME_NOW"\nscore = 3\n')
    rules, problems = load_rules(rules_dir(**{"50_local.toml": local}))
    assert rules is not None, problems
    now = TextInput("", "The portal is down for everyone since 9am.")
    past = TextInput("", "Thanks for fixing yesterday's outage, the portal is back up now.")
    fired_now = {r.name for r in rules.match(now, facts=_facts(now))}
    assert {"KW_DOWN", "LOCAL_OUTAGE_FOR_ALL"} <= fired_now
    assert not {n for n in fired_now if n.startswith("DIM_")}
    assert not {"KW_DOWN", "LOCAL_OUTAGE_FOR_ALL"} & {
        r.name for r in rules.match(past, facts=_facts(past))}


def test_lint_reports_an_unknown_dimension_and_a_rule_named_like_one(
    rules_dir: RulesDir,
) -> None:
    local = ('[[rule]]\nname = "LOCAL_X"\nmeta = "DIM_STATE_BROKEN"\nscore = 1\n\n'
             '[[rule]]\nname = "DIM_MINE"\npattern = "x"\nscore = 1\n')
    _, problems = load_rules(rules_dir(**{"50_local.toml": local}))
    assert sorted((p.rule, p.key) for p in problems) == [("DIM_MINE", "name"), ("LOCAL_X", "meta")]
    assert any("DIM_STATE_DOWN" in p.message for p in problems)


def test_override_of_a_rule_nobody_defined_is_a_problem(rules_dir: RulesDir) -> None:
    _, problems = load_rules(rules_dir(**{"50_local.toml": '[[rule]]\nname = "NOPE"\nscore = 1\n'}))
    assert [(p.rule, p.line) for p in problems] == [("NOPE", 2)]


def test_header_rules_match_lower_cased_header_names(rules_dir: RulesDir) -> None:
    rules, _ = load_rules(rules_dir())
    assert rules is not None
    fired = rules.match(TextInput("hi", "", (("x-priority", "1 (Highest)"),)))
    assert "SENDER_X_PRIORITY" in {r.name for r in fired}
