"""How a rule's regex meets text: on the lower-cased text, behind a cheap `in` prefilter.

`plan(pattern, case_sensitive)` decides, once when rules load:
- whether a case-insensitive pattern can run *without* re.IGNORECASE on the lower-cased text
  (about 3x faster: CPython's `re` cannot use its literal/charset scans under IGNORECASE). It
  can unless the pattern names upper-case characters or sets inline flags; then it keeps
  IGNORECASE.
- the literals any match must contain: a walk over the parsed regex finds strings of which every
  match contains at least one (for `\\b(?:is|was) down\\b|offline`: " down", "offline"), or
  None when it cannot tell (`\\S`, or `^\\s*yes` with an optional start) or when the set is
  too weak or too large to be cheaper than the regex. A rule whose literals are all absent
  skips its regex (`in` is a memchr-speed scan); the regex still decides every hit, so the
  prefilter only saves time, never changes a verdict.

Uses the standard library's own regex parser (`re._parser`): private, but it is what
`re.compile` runs, so it cannot disagree with the regex. Anything the walk does not recognise
gives no prefilter, never a wrong one. Owns nothing else; never imports the model or gateway.
"""

from __future__ import annotations

import importlib
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# The standard library's regex parser, which classifiers/pattern_set.py reads patterns with too.
sre_parser: Any = importlib.import_module("re._parser")  # no stub; `sre_parse` warns on import

_REPEATS = (sre_parser.MAX_REPEAT, sre_parser.MIN_REPEAT,
            getattr(sre_parser, "POSSESSIVE_REPEAT", None))
# An exact set larger than this is not worth expanding (products of alternations grow fast).
MAX_EXACT = 16
# More literals than this cost more scans than the regex they would spare.
MAX_LITERALS = 24
# Fewer than this many characters in the shortest literal is too weak to be worth checking.
MIN_LITERAL = 3


def _exact(items: Any) -> set[str] | None:
    """The finite set of strings a parsed sequence matches exactly, or None if unbounded/big."""
    out = {""}
    for op, av in items:
        if op is sre_parser.LITERAL:
            part: set[str] | None = {chr(av)}
        elif op is sre_parser.SUBPATTERN:
            part = _exact(av[3])
        elif op is sre_parser.BRANCH:
            part = set()
            for branch in av[1]:
                got = _exact(branch)
                if got is None:
                    return None
                part |= got
        elif op is sre_parser.IN and all(o is sre_parser.LITERAL for o, _ in av) and len(av) <= 4:
            part = {chr(a) for _, a in av}
        elif op in (sre_parser.MAX_REPEAT, sre_parser.MIN_REPEAT) and av[0] == 0 and av[1] == 1:
            got = _exact(av[2])
            part = None if got is None else got | {""}
        elif op is sre_parser.AT:
            continue  # zero-width: \b, ^, $ add no characters
        else:
            return None
        if part is None:
            return None
        out = {a + b for a, b in itertools.product(out, part)}
        if len(out) > MAX_EXACT:
            return None
    return out


def _strength(options: frozenset[str]) -> tuple[bool, int, int]:
    # Each literal costs one scan of the text: prefer few literals, as long as none is so short
    # (under 4 characters) that it occurs in nearly every message.
    shortest = min(len(s) for s in options)
    return (shortest >= 4, -len(options), shortest)


def _required(items: Any) -> frozenset[str] | None:
    """Strings of which every match of the parsed sequence contains at least one."""
    candidates: list[frozenset[str]] = []
    run: set[str] = {""}  # exact strings of the current run of fixed-content elements

    def close_run() -> None:
        nonlocal run
        kept = frozenset(s for s in run if s)
        if kept and len(kept) == len(run):
            candidates.append(kept)
        run = {""}

    for op, av in items:
        exact = _exact([(op, av)])
        if op is sre_parser.AT:
            continue
        if exact is not None and "" not in exact:
            grown = {a + b for a, b in itertools.product(run, exact)}
            if len(grown) <= MAX_EXACT:
                run = grown
                continue
            close_run()
            run = set(exact)
            continue
        close_run()
        found: frozenset[str] | None = None
        if op is sre_parser.SUBPATTERN:
            found = _required(av[3])
        elif op is sre_parser.BRANCH:
            union: set[str] = set()
            for branch in av[1]:
                got = _required(branch)
                if got is None:
                    union = set()
                    break
                union |= got
            found = frozenset(union) or None
        elif op in _REPEATS and av[0] >= 1:
            found = _required(av[2])
        if found:
            candidates.append(found)
    close_run()
    if not candidates:
        return None
    return max(candidates, key=_strength)


def items_of(parsed: Any) -> Iterator[tuple[Any, Any]]:
    """Every (op, argument) in a parsed regex, nested ones included."""
    for op, av in parsed:
        yield op, av
        yield from _nested(av)


def _nested(av: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(av, sre_parser.SubPattern):
        yield from items_of(av)
    elif isinstance(av, tuple | list):
        for x in av:
            yield from _nested(x)


def _names_upper_case(parsed: Any) -> bool:
    def upper(code: int) -> bool:
        return chr(code).lower() != chr(code)

    for op, av in items_of(parsed):
        if op in (sre_parser.LITERAL, sre_parser.NOT_LITERAL) and upper(av):
            return True
        if op is sre_parser.IN:
            for item, arg in av:
                if item is sre_parser.LITERAL and upper(arg):
                    return True
                if item is sre_parser.RANGE and any(upper(c) for c in range(arg[0], arg[1] + 1)):
                    return True
    return False


def _sets_flags(parsed: Any) -> bool:
    if parsed.state.flags & ~sre_parser.SRE_FLAG_UNICODE:
        return True
    return any(op is sre_parser.SUBPATTERN and (av[1] or av[2]) for op, av in items_of(parsed))


@dataclass(frozen=True)
class MatchPlan:
    flags: int  # for re.compile
    lowered: bool  # the regex meets the lower-cased text
    literals: tuple[str, ...] | None  # skip the regex unless one occurs in that text


def plan(pattern: str, case_sensitive: bool) -> MatchPlan:
    """How to run `pattern` so that it fires exactly when `re.search(pattern, text, re.I)`
    would (or without re.I when case_sensitive), only faster."""
    keep = MatchPlan(0 if case_sensitive else re.IGNORECASE, False, None)
    try:
        parsed = sre_parser.parse(pattern, 0)
    except Exception:  # re.compile reports bad patterns; nothing to plan
        return keep
    if _sets_flags(parsed):  # (?i), (?-i:...), (?x): keep the regex exactly as written
        return keep
    if case_sensitive:
        return MatchPlan(0, False, required_literals(parsed, lowered=False))
    flags = re.IGNORECASE if _names_upper_case(parsed) else 0
    return MatchPlan(flags, True, required_literals(parsed, lowered=True))


def required_literals(parsed: Any, *, lowered: bool) -> tuple[str, ...] | None:
    """Literals any match of the parsed regex contains (lower-cased when the text it meets is),
    longest first; None if there is no useful set or the regex is beyond this analysis."""
    try:
        found = _required(list(parsed))
    except (TypeError, ValueError, IndexError):  # a construct this walk does not know
        return None
    if not found:
        return None
    options = {s.lower() for s in found} if lowered else set(found)
    # A literal containing another is redundant: the shorter one already passes the text.
    minimal = {s for s in options if not any(o != s and o in s for o in options)}
    if min(len(s) for s in minimal) < MIN_LITERAL or len(minimal) > MAX_LITERALS:
        return None
    return tuple(sorted(minimal, key=lambda s: (-len(s), s)))
