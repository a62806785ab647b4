"""Trying many patterns in one RE2 pass only saves time: every pattern of a PatternSet matches
a text exactly when Python's `re` says it does, whatever the text (accented words, Python-only
white space, lone surrogates), whatever the pattern (lookarounds, `$`, flags, back-references),
and when RE2 gives up."""

from __future__ import annotations

import functools
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from classifiers import dimensions
from classifiers.pattern_set import PatternSet, widen
from classifiers.rules import RuleSet, load_rules
from classifiers.types import TextInput
from tests.classifiers.conftest import SHIPPED_RULES
from tests.classifiers.mail_corpus import SPAMASSASSIN, corpus

TABLES = dimensions._TABLES.patterns

# Pieces the tables are made of, the characters where RE2 and `re` part ways (an accented
# letter, Python-only white space, a lone surrogate, a curly apostrophe) and line ends.
PIECES = st.lists(st.sampled_from(
    ["down", " down", "down.", "is ", "the ", "system ", "everyone", "nobody ", "can't ",
     "log in", "not loading", "outage", "offline", "or ", "online and ", "turned ", "slow",
     "some ", "users ", "only me", "one user", "and ", "others are fine", "again", "still ",
     "is back", "was fixed", " yesterday's outage", "next week", "maintenance window",
     "payroll", "payments", "not ", "?", "how do i ", "thanks", "hacked", "sometimes", "50%",
     "500 error", "crashed", "all of your ", "é", "ſ", "\x0b", "\x1c", "\ud800", "’", "\n",
     " ", ".", "x" * 30]), max_size=30).map("".join)

TRICKY = {
    "lookbehind": re.compile(r"(?<!not )\bdown\b"),
    "lookahead": re.compile(r"\bone user\b(?! and)"),
    "dollar": re.compile(r"down$"),  # Python's $ also matches before a final newline
    "dollar_multiline": re.compile(r"down\W*$", re.MULTILINE),
    "ignorecase": re.compile(r"\bdown\b", re.IGNORECASE),  # folds ſ and K, RE2 may not
    "backreference": re.compile(r"\b(\w+) \1\b"),  # RE2 has none
    "atomic": re.compile(r"(?>is )down"),  # RE2 has none
    "class_with_parens": re.compile(r"[(?!)]down|\(?!x\)"),  # not lookarounds at all
    "plain": re.compile(r"\b(?:is|was) down\b"),
}


@settings(max_examples=400, deadline=None)
@given(PIECES)
def test_every_table_matches_exactly_where_re_does(text: str) -> None:
    text = text.lower()
    hits = dimensions._TABLES.search(text)
    for name, regex in TABLES.items():
        assert hits.matched(name) == (regex.search(text) is not None), name
    expected = TABLES["past"].search(text)
    found = hits.search("past")
    assert (found and found.span()) == (expected and expected.span())


@settings(max_examples=400, deadline=None)
@given(PIECES)
def test_patterns_re2_cannot_read_exactly_are_still_answered_as_re_does(text: str) -> None:
    hits = PatternSet(TRICKY).search(text)
    for name, regex in TRICKY.items():
        assert hits.matched(name) == (regex.search(text) is not None), name


def test_which_patterns_re2_reads() -> None:
    tricky = PatternSet(TRICKY)
    assert tricky.in_set("plain") and tricky.in_set("class_with_parens")
    assert tricky.in_set("lookbehind") and tricky.in_set("lookahead")  # widened, then confirmed
    assert tricky.in_set("dollar_multiline")
    for left_to_re in ("dollar", "ignorecase", "backreference", "atomic"):
        assert not tricky.in_set(left_to_re), left_to_re
    # Every table of the dimensions is read by RE2.
    assert all(dimensions._TABLES.in_set(name) for name in TABLES)


def test_widening_drops_only_lookarounds() -> None:
    assert widen(r"(?<!\bor )(?<!/)offline|x(?=y(z))") == r"offline|x"
    assert widen(r"[(?!]a\(?!b\)") == r"[(?!]a\(?!b\)"
    assert widen(r"a(?!(?:b|\)|[)]))c") == r"ac"


def test_texts_re2_would_misread_are_left_to_re_whole() -> None:
    tables = dimensions._TABLES
    assert tables.search("the portal is down").by_re2
    assert tables.search("it’s down — again").by_re2  # non-ASCII, but no word character
    assert not tables.search("josé's portal is down").by_re2  # \w and \b differ on é
    assert not tables.search("down\x0bagain").by_re2  # white space to Python only
    assert not tables.search("down \ud800").by_re2  # RE2 reads UTF-8; this has none


def test_a_pass_re2_gives_up_on_falls_back_to_re() -> None:
    # RE2's Set answers "no match" when its automaton runs out of memory mid-text (it cannot
    # be made to on demand, so its answer is replaced here): the sentinel pattern is missing,
    # so `re` answers.
    class GaveUp:
        def Match(self, text: str) -> None:  # RE2 Set's method name
            return None

    tables = PatternSet(TABLES)
    tables._set = GaveUp()  # type: ignore[assignment]
    text = "nobody can log in, the system is down"
    hits = tables.search(text)
    assert not hits.by_re2
    assert hits.matched("everyone") and hits.matched("down") and not hits.matched("past")


def test_a_set_too_big_for_its_memory_leaves_every_pattern_to_re() -> None:
    tables = PatternSet(TABLES, max_mem=1 << 12)
    assert not any(tables.in_set(name) for name in TABLES)
    assert tables.search("nobody can log in, the system is down").matched("down")


def test_dimensions_of_real_mail_are_what_re_alone_reads() -> None:
    read_by_re2 = 0
    texts = [f"{inp.subject}\n{inp.body}".lower()
             for _, inp in corpus("easy-ham-1", "hard-ham-1", "spam-1")]
    assert len(texts) > 1000, SPAMASSASSIN
    for text in texts:
        hits = dimensions._TABLES.search(text)
        read_by_re2 += hits.by_re2
        for name, regex in TABLES.items():
            assert hits.matched(name) == (regex.search(text) is not None), (name, text[:200])
    assert read_by_re2 > len(texts) // 2  # the fast path is the common one


@functools.cache
def shipped_rules() -> RuleSet:
    rules, problems = load_rules(SHIPPED_RULES)
    assert rules is not None, problems
    return rules


@settings(max_examples=300, deadline=None)
@given(PIECES, PIECES)
def test_shipped_rules_fire_as_their_regexes_do_one_by_one(subject: str, body: str) -> None:
    rules = shipped_rules()
    inp = TextInput(subject=subject, body=body)
    fields = {"subject": subject, "body": body, "subject+body": f"{subject}\n{body}"}
    expected = {
        rule.name for rule in rules.pattern_rules
        if any(rule.pattern is not None and rule.pattern.search(
            fields[f].lower() if rule.lowered else fields[f]) for f in rule.fields if f in fields)
    }
    fired = {rule.name for rule in rules.match(inp) if rule.meta is None}
    assert fired == expected

