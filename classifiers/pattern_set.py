"""Many named regexes tried against one text in one pass: Python `re`'s answers at RE2's speed.

`PatternSet(patterns).search(text)` gives `Hits`, whose `matched(name)` and `search(name)` are
exactly what `patterns[name].search(text)` would say. The severity dimensions try up to sixteen
patterns on every message; one by one, CPython's `re` cost about 100 µs a message, a third of the
classifier's budget (issue 20 outcome 1), because a pattern that opens with `\\b(?:...)` gives it
no literal to skip ahead to, so it runs its matcher at every position of the text. RE2 (Google's
automaton-based engine, the `google-re2` package) reads the text once for all of them.

How the answer stays Python's:
- Each pattern's *widening*, the pattern with its lookarounds removed, goes into one RE2 Set.
  Removing an assertion can only let more texts match, so a pattern whose widening RE2 does not
  find cannot match. A pattern with no lookaround is its own widening: when RE2 finds it, it
  matches. The others are confirmed by `re`, and only on texts where their widening matched.
  The widening is checked when the set is built: its parsed form must be the pattern's parsed
  form without its assertions, or the pattern is left to `re` alone.
- RE2's `\\w`, `\\b`, `\\d` and `\\s` are ASCII. A text with a word character outside ASCII (an
  accented name), with one of the ASCII characters Python alone calls white space (`\\v`,
  `\\x1c`-`\\x1f`) or with a lone surrogate is read by `re` alone, every pattern of it.
- A pattern RE2 cannot compile (back-references, atomic groups, `\\Z`), one with any flag but
  MULTILINE (case folding differs at the edges of Unicode), or one with `$` outside MULTILINE
  (Python's also matches before a final newline, RE2's does not) is always left to `re`.
- An RE2 Set that runs out of memory mid-text reports no match at all, and says nothing to
  Python: a sentinel pattern that matches every text tells a failed pass from an empty one, and
  a failed pass falls back to `re`.

Owns nothing but the matching; never imports the model, the rules or the gateway.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import re2

from classifiers.prefilter import items_of, sre_parser

_ASSERTIONS = (sre_parser.ASSERT, sre_parser.ASSERT_NOT)
_LOOKAROUNDS = ("(?=", "(?!", "(?<=", "(?<!")
# Where RE2 and Python's `re` read a text differently (see the module docstring).
_PYTHON_SPACE = re.compile(r"[\x0b\x1c-\x1f]")  # one class: `re` scans for it in C
_RE_ONLY_TEXT = re.compile(r"[^\W\x00-\x7f]|[\x0b\x1c-\x1f\ud800-\udfff]")
SET_MAX_MEM = 64 << 20  # RE2's default 8 MiB is for one pattern, not a table of them


def widen(pattern: str) -> str:
    """`pattern` with every lookaround group removed (`(?=`, `(?!`, `(?<=`, `(?<!`)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            out.append(pattern[i:i + 2])
            i += 2
        elif pattern[i] == "[":
            end = _class_end(pattern, i)
            out.append(pattern[i:end])
            i = end
        elif pattern.startswith(_LOOKAROUNDS, i):
            i = _group_end(pattern, i)
        else:
            out.append(pattern[i])
            i += 1
    return "".join(out)


def _class_end(pattern: str, start: int) -> int:
    """The index just past the character class that opens at `start`."""
    i = start + 1
    if pattern.startswith("^", i):
        i += 1
    if pattern.startswith("]", i):  # a leading ] is a literal
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1


def _group_end(pattern: str, start: int) -> int:
    """The index just past the group that opens at `start`."""
    depth, i = 0, start
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if char == "[":
            i = _class_end(pattern, i)
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def _shape(parsed: Any) -> Any:
    """A parsed regex as nested tuples, its assertions dropped: what its widening must parse to."""
    if isinstance(parsed, sre_parser.SubPattern):
        return tuple(_shape(item) for item in parsed.data if item[0] not in _ASSERTIONS)
    if isinstance(parsed, tuple | list):
        return tuple(_shape(item) for item in parsed)
    return parsed


def _plan(regex: re.Pattern[str]) -> str | None:
    """The RE2 pattern whose matches include all of `regex`'s, or None to leave it to `re`."""
    flags = regex.flags & ~re.UNICODE
    if flags & ~re.MULTILINE:
        return None
    try:
        parsed = sre_parser.parse(regex.pattern, regex.flags)
        wide = widen(regex.pattern)
        if _shape(sre_parser.parse(wide, regex.flags)) != _shape(parsed):
            return None
    except re.error:
        return None
    if not flags & re.MULTILINE and any(
            op is sre_parser.AT and arg is sre_parser.AT_END for op, arg in items_of(parsed)):
        return None
    return f"(?m){wide}" if flags & re.MULTILINE else wide


@dataclass(frozen=True)
class _Entry:
    regex: re.Pattern[str]
    in_set: bool  # RE2 reads its widening: RE2 not finding it is a no
    exact: bool  # ... and the widening is the pattern: RE2 finding it is a yes


class PatternSet:
    """Named patterns, matched together. Immutable after construction."""

    __slots__ = ("_entries", "_names", "_set")

    def __init__(self, patterns: Mapping[str, re.Pattern[str]],
                 max_mem: int = SET_MAX_MEM) -> None:
        options = re2.Options()
        options.max_mem = max_mem
        options.log_errors = False
        rset = re2.Set.SearchSet(options)
        rset.Add("")  # the sentinel, index 0: matches every text a pass completes on
        names: list[str] = [""]
        entries: dict[str, _Entry] = {}
        for name, regex in patterns.items():
            wide = _plan(regex)
            if wide is not None:
                try:
                    rset.Add(wide)
                except re2.error:
                    wide = None
                else:
                    names.append(name)
            entries[name] = _Entry(regex, wide is not None,
                                   wide is not None and wide.removeprefix("(?m)") == regex.pattern)
        try:
            rset.Compile()
        except re2.error:  # over max_mem: `re` reads every pattern
            entries = {name: _Entry(e.regex, False, False) for name, e in entries.items()}
            names = [""]
        self._set = rset
        self._names = tuple(names)
        self._entries = entries

    @property
    def patterns(self) -> dict[str, re.Pattern[str]]:
        return {name: entry.regex for name, entry in self._entries.items()}

    def in_set(self, name: str) -> bool:
        """Whether RE2 reads `name` (else `re` always does)."""
        return self._entries[name].in_set

    def search(self, text: str) -> Hits:
        # Only the sentinel named: RE2 reads none of the patterns, or its Set did not compile.
        if len(self._names) > 1 and (_PYTHON_SPACE.search(text) is None if text.isascii()
                                     else _RE_ONLY_TEXT.search(text) is None):
            found = self._set.Match(text)
            if found:  # the sentinel at least, or the pass failed
                return Hits(self, text, frozenset(self._names[i] for i in found))
        return Hits(self, text, None)


class Hits:
    """Which patterns of a PatternSet match one text, asked pattern by pattern."""

    __slots__ = ("_found", "_patterns", "text")

    def __init__(self, patterns: PatternSet, text: str, found: frozenset[str] | None) -> None:
        self._patterns = patterns
        self.text = text
        self._found = found  # the names whose widening RE2 found; None: `re` reads every one

    @property
    def by_re2(self) -> bool:
        """Whether RE2 read this text (False: it was left to `re` whole)."""
        return self._found is not None

    def matched(self, name: str) -> bool:
        entry = self._patterns._entries[name]
        if self._found is not None and entry.in_set:
            if name not in self._found:
                return False
            if entry.exact:
                return True
        return entry.regex.search(self.text) is not None

    def search(self, name: str) -> re.Match[str] | None:
        """`re`'s match object for `name`, where the position is needed."""
        entry = self._patterns._entries[name]
        if self._found is not None and entry.in_set and name not in self._found:
            return None
        return entry.regex.search(self.text)
