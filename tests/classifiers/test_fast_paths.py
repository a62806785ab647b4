"""The cheap checks that let normalisation and model_text skip a regex never change what they
return (issue 20 outcome 1): each is compared with the plain substitution it guards, on text
with the characters case-insensitive regexes treat specially (long s, dotless i, Kelvin sign)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from classifiers.dimensions import _DOWN, _DOWN_AT_LINE_END, _TABLES, _is_down
from classifiers.model import _CLAIMS, model_text
from classifiers.normalise import _CONTRACTIONS, _WORD, _contractions, _squeeze

TRICKY = st.sampled_from(["ſ", "ı", "İ", "K", "\t", "  ", " ,", " .", " !", " ?", "!!", ",,",
                          ". ,", "\n \n", "\n\n\n", "cant", "CANT", "Im", "im", "iſnt", "wont",
                          "URGENT", "urgently", "aſap", "Important", "hıgh priority", " "])
TEXTS = st.lists(TRICKY | st.text(max_size=8), max_size=40).map("".join)


def _reference_squeeze(text: str) -> str:
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" +([,.!?])", r"\1", text)
    text = re.sub(r"([,.!?])(?:\s*[,.])+", r"\1", text)
    text = re.sub(r"\n\s*\n+", "\n", text)
    return text.strip(" \n,")


def _reference_contractions(text: str) -> tuple[str, list[str]]:
    def fix(match: re.Match[str]) -> str:
        word = match.group(0)
        repl = _CONTRACTIONS.get(word.lower())
        if repl is None or (word.lower() == "im" and word != "im"):
            return word
        return repl

    fixed = _WORD.sub(fix, text)
    return fixed, (["contractions"] if fixed != text else [])


@settings(max_examples=400, deadline=None)
@given(TEXTS)
def test_squeeze_is_the_four_substitutions(text: str) -> None:
    assert _squeeze(text) == _reference_squeeze(text)


@settings(max_examples=400, deadline=None)
@given(TEXTS)
def test_contractions_skipped_only_where_the_substitution_changes_nothing(text: str) -> None:
    steps: list[str] = []
    assert (_contractions(text, steps), steps) == _reference_contractions(text)


@settings(max_examples=400, deadline=None)
@given(TEXTS, TEXTS)
def test_model_text_removes_claims_as_the_regex_alone_did(subject: str, body: str) -> None:
    text = f"{subject[:256]}\n{body[:2048]}"
    assert model_text(subject, body, "email") == "__email__ " + _CLAIMS.sub(" ", text)


# Words the ways of saying "down" are made of, and the look-behinds' exceptions.
DOWN_WORDS = st.lists(st.sampled_from(
    ["down", "Down", " down", "down.", "down!!", "turned ", "shut ", "slow ", "payment ",
     "system ", "is ", "the ", "offline", "or ", "\n", " ", "x" * 30, "again", "for", ",",
     "can't ", "log in", "not loading", "outage", "500 error", "é"]), max_size=30).map("".join)


@settings(max_examples=500, deadline=None)
@given(DOWN_WORDS)
def test_down_is_the_one_table_it_was_before_its_line_end_branch_moved_out(text: str) -> None:
    # The table as one pattern: _DOWN's alternatives with _DOWN_AT_LINE_END's among them.
    whole = re.compile(_DOWN.pattern[:-1] + "|" + _DOWN_AT_LINE_END.pattern[len(r"\b(?:"):],
                       re.MULTILINE)
    assert _is_down(_TABLES.search(text)) == (whole.search(text) is not None)
