"""The rule prefilter and lower-cased matching only save time: a rule fires exactly when its
regex, as written, would fire with re.IGNORECASE (or without, when case-sensitive)."""

from __future__ import annotations

import re
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classifiers.prefilter import plan
from tests.classifiers.conftest import SHIPPED_RULES

SHIPPED_PATTERNS = [
    (rule["name"], rule["pattern"])
    for rule in tomllib.loads((SHIPPED_RULES / "00-shipped.toml").read_text())["rule"]
    if "pattern" in rule
]
WORDS = [
    "down",
    "DOWN",
    "is",
    "the",
    "portal",
    "everyone",
    "nobody",
    "can",
    "log in",
    "can't",
    "offline",
    "Outage",
    "not",
    "loading",
    "errors out",
    "today",
    "by",
    "noon",
    "50",
    "502",
    "error",
    "how",
    "do",
    "i",
    "unsubscribe",
    "$$",
    "100%",
    "free",
    "yes",
    "text/html",
    " ",
    "\n",
    ".",
    "ſ",
    "İ",
    "urgent",
    "!!",
    "1",
    "high",
]


def fires_as_planned(pattern: str, text: str, case_sensitive: bool = False) -> bool:
    how = plan(pattern, case_sensitive)
    seen = text.lower() if how.lowered else text
    if how.literals is not None and not any(lit in seen for lit in how.literals):
        return False
    return re.compile(pattern, how.flags).search(seen) is not None


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SHIPPED_PATTERNS), st.lists(st.sampled_from(WORDS), max_size=12))
def test_shipped_rules_fire_exactly_as_their_regex_with_ignorecase(
    rule: tuple[str, str], words: list[str]
) -> None:
    _, pattern = rule
    text = " ".join(words)
    if any(c in text for c in "ſİ"):  # IGNORECASE folds these, str.lower() does not
        return
    assert fires_as_planned(pattern, text) == bool(re.search(pattern, text, re.IGNORECASE))


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        (r"\bpacs\b.{0,40}\b(?:down|not loading)", "Our PACS is DOWN", True),
        (r"\bPACS\b", "pacs viewer", True),  # upper-case letters: keeps IGNORECASE
        (r"(?-i:ABC)", "abc", False),  # inline flags: the regex runs exactly as written
        (r"[A-Z]{3}", "abc", True),
        (r"(?:a|b)+c{2,}", "xxbacc", True),
        (r"(?:total )?outage", "OUTAGE", True),
        (r"x(?=yz)", "xyz", True),
    ],
)
def test_case_insensitive_patterns_keep_their_meaning(
    pattern: str, text: str, expected: bool
) -> None:
    assert bool(re.search(pattern, text, re.IGNORECASE)) == expected
    assert fires_as_planned(pattern, text) == expected


def test_case_sensitive_patterns_are_not_lower_cased() -> None:
    how = plan(r"\bURGENT\b", case_sensitive=True)
    assert not how.lowered and how.literals == ("URGENT",)
    assert not fires_as_planned(r"\bURGENT\b", "urgent", case_sensitive=True)


def test_prefilter_literals_are_ones_every_match_contains() -> None:
    literals = plan(r"\b(?:Is|was) (?:completely )?down\b|offline", False).literals
    assert literals is not None
    assert set(literals) == {
        "is down",
        "was down",
        "is completely down",
        "was completely down",
        "offline",
    }
    assert plan(r"(?:is|was|are)\s+down\b|offline", False).literals == ("offline", "down")
    assert plan(r"\S", False).literals is None
    assert plan(r"^\s*(?:[12]\b|high)", False).literals is None  # "1" is too short to help
