"""Keyword rules from `config/rules.d/*.toml`, SpamAssassin/Rspamd style.

Files load in lexical order; a later file replaces an earlier rule of the same name, or, with an
entry holding only `name` and `score` (and perhaps `description`), changes just its score. Score 0
disables a rule (metas then see it as not fired). Every problem names the file, the rule and, where
found, the line. This module never imports the model, the gateway or the channels.

Rule kinds decide what a hit may do beyond adding its score:
- `content` (default): evidence from what the message says.
- `sender_urgency`: urgency the sender claims (X-Priority, Importance, "URGENT" in the subject). It
  adds to the score but is subtracted before the queue-jump test: a claim alone never jumps.
- `spam_guard`: spam or bulk evidence. Any hit forbids jump_queue, whatever the score.

Meta rules may also name the message's severity dimensions (classifiers/dimensions.py) as
facts: `DIM_STATE_DOWN && DIM_TIME_NOW`, `DIM_SCOPE_EVERYONE`, `DIM_CRITICAL`. What counts as
"down", "everyone" or "a question" is written once, there; the rules say what it is worth.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from classifiers.dimensions import FACT_PREFIX, FACTS
from classifiers.meta import Expr, MetaSyntaxError, evaluate, names_in, parse_meta
from classifiers.pattern_set import Hits, PatternSet
from classifiers.prefilter import plan
from classifiers.types import Problem, TextInput

KINDS = ("content", "sender_urgency", "spam_guard")
PLAIN_FIELDS = ("subject", "body", "subject+body", "sender", "channel")
_NAME = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*$")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext
_KEY_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "fields": list,
    "pattern": str,
    "meta": str,
    "score": (int, float),
    "description": str,
    "kind": str,
    "case_sensitive": bool,
}
MAX_ABS_SCORE = 100.0


# The file the project ships (do not edit); an admin's files come after it in lexical order.
SHIPPED_RULES_FILE = "00-shipped.toml"


@dataclass(frozen=True)
class Rule:
    name: str
    score: float
    description: str
    kind: str
    file: str
    line: int | None
    fields: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None
    meta: Expr | None = None
    # How `pattern` meets text (classifiers.prefilter.plan): on the lower-cased field text
    # (case-insensitive rules, compiled without re.IGNORECASE where that is exact), and only if
    # one of `literals` occurs in that text.
    lowered: bool = False
    literals: tuple[str, ...] | None = None

    @property
    def shipped(self) -> bool:
        """Defined (or last re-scored) by the project's own file, not by an admin's."""
        return Path(self.file).name == SHIPPED_RULES_FILE

    @property
    def enabled(self) -> bool:
        return self.score != 0.0


@dataclass(frozen=True)
class RuleSet:
    """Enabled pattern rules, then meta rules in dependency order. Immutable."""

    pattern_rules: tuple[Rule, ...]
    meta_rules: tuple[Rule, ...]
    files: tuple[str, ...]
    # The pattern rules that read the same text (a field, lower-cased or not), tried together in
    # one pass where there are several (classifiers/pattern_set.py: the same hits, faster).
    _together: dict[tuple[str, bool], PatternSet] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        groups: dict[tuple[str, bool], dict[str, re.Pattern[str]]] = {}
        for rule in self.pattern_rules:
            assert rule.pattern is not None
            for fld in rule.fields:
                groups.setdefault((fld, rule.lowered), {})[rule.name] = rule.pattern
        object.__setattr__(self, "_together", {
            key: PatternSet(patterns) for key, patterns in groups.items() if len(patterns) > 1})

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.pattern_rules + self.meta_rules

    def get(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)

    def match(self, inp: TextInput, body_chars: int = 16384,
              facts: frozenset[str] = frozenset()) -> tuple[Rule, ...]:
        """Rules that fire on `inp`, pattern rules first, then metas, each at most once.
        `facts` are the message's dimension names (`Dimensions.facts()`), which metas may read
        but which are not hits themselves.

        Every field's text is cut to `body_chars` (body_chars_for_rules), headers and
        subject+body included, so no message costs more than that much text per rule."""
        subject = inp.subject[:body_chars]
        body = inp.body[:body_chars]
        texts: dict[str, str] = {
            "subject": subject,
            "body": body,
            "subject+body": f"{subject}\n{body}"[:body_chars],
            "sender": inp.sender[:body_chars],
            "channel": inp.channel[:body_chars],
        }
        lowered: dict[str, str] = {}
        headers: dict[str, list[str]] | None = None
        together: dict[tuple[str, bool], Hits] = {}
        fired: list[Rule] = []
        names: set[str] = set(facts)
        for rule in self.pattern_rules:
            assert rule.pattern is not None
            for fld in rule.fields:
                text = texts.get(fld)
                if text is None:  # header:Name
                    if headers is None:
                        headers = _values_by_name(inp.headers)
                    values = headers.get(fld[7:].lower(), [])
                    text = texts[fld] = "\n".join(values)[:body_chars]
                if not text:
                    continue
                if rule.lowered:
                    low = lowered.get(fld)
                    if low is None:
                        low = lowered[fld] = text.lower()
                    text = low
                group = self._together.get((fld, rule.lowered))
                if group is not None and group.in_set(rule.name):
                    hits = together.get((fld, rule.lowered))
                    if hits is None:
                        hits = together[(fld, rule.lowered)] = group.search(text)
                    matched = hits.matched(rule.name)
                else:
                    literals = rule.literals
                    if literals is not None and not any(map(text.__contains__, literals)):
                        continue  # the regex cannot match without one of them
                    matched = rule.pattern.search(text) is not None
                if matched:
                    fired.append(rule)
                    names.add(rule.name)
                    break
        for rule in self.meta_rules:
            assert rule.meta is not None
            if evaluate(rule.meta, names):
                fired.append(rule)
                names.add(rule.name)
        return tuple(fired)


def _values_by_name(headers: tuple[tuple[str, str], ...]) -> dict[str, list[str]]:
    """Each header's values in order, by lower-cased name: what `TextInput.header_values`
    gives, for every name at once (a dozen header rules each scanned every header)."""
    by_name: dict[str, list[str]] = {}
    for key, value in headers:
        by_name.setdefault(key.lower(), []).append(value)
    return by_name


def _line_of(text: str, name: str) -> int | None:
    pattern = re.compile(r"^\s*name\s*=\s*[\"']" + re.escape(name) + r"[\"']", re.MULTILINE)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else None


def _parse_entry(
    entry: Mapping[str, object], file: str, text: str, index: int, problems: list[Problem]
) -> tuple[str, dict[str, object]] | None:
    """Type-check one `[[rule]]` table; returns (name, entry) or None after recording problems."""
    raw_name = entry.get("name")
    if not isinstance(raw_name, str):
        problems.append(Problem(file, "name", None, f"rule #{index + 1}: `name` (string) missing"))
        return None
    name = raw_name
    line = _line_of(text, name)
    before = len(problems)

    def bad(key: str | None, message: str) -> None:
        problems.append(Problem(file, key, line, message, name))

    if not _NAME.match(name):
        bad("name", "rule names are UPPER_SNAKE (A-Z, 0-9, _)")
    if name.startswith("MODEL_"):
        bad("name", "MODEL_* names are reserved for the model's vote")
    if name.startswith(FACT_PREFIX):
        bad("name", f"{FACT_PREFIX}* names are reserved for the severity dimensions")
    for key, value in entry.items():
        expected = _KEY_TYPES.get(key)
        if expected is None:
            bad(key, f"unknown key (known: {', '.join(sorted(_KEY_TYPES))})")
        elif not isinstance(value, expected) or (key == "score" and isinstance(value, bool)):
            bad(key, f"wrong type {type(value).__name__}")
    if len(problems) > before:
        return None
    score = entry.get("score")
    if isinstance(score, int | float) and not (
        math.isfinite(score) and abs(score) <= MAX_ABS_SCORE
    ):
        bad("score", f"must be a finite number within ±{MAX_ABS_SCORE}")
    kind = entry.get("kind", "content")
    if kind not in KINDS:
        bad("kind", f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    has_pattern, has_meta = "pattern" in entry, "meta" in entry
    if has_pattern and has_meta:
        bad("meta", "a rule has either `pattern` or `meta`, not both")
    if has_meta and "fields" in entry:
        bad("fields", "meta rules have no fields")
    if has_pattern:
        fields = entry.get("fields", ["subject+body"])
        assert isinstance(fields, list)
        if not fields:
            bad("fields", "empty list")
        for fld in fields:
            if not isinstance(fld, str):
                bad("fields", f"field {fld!r} is not a string")
            elif fld.startswith("header:"):
                if not _HEADER_NAME.match(fld[7:]):
                    bad("fields", f"bad header name in {fld!r}")
            elif fld not in PLAIN_FIELDS:
                bad("fields", f"unknown field {fld!r} (known: {', '.join(PLAIN_FIELDS)}, "
                    "header:Name)")
        flags = 0 if entry.get("case_sensitive", False) else re.IGNORECASE
        try:
            compiled = re.compile(str(entry["pattern"]), flags)
        except re.error as exc:
            bad("pattern", f"bad regex: {exc}")
        else:
            if compiled.search(""):
                bad("pattern", "matches the empty string, so it would fire on every message")
    if has_meta:
        try:
            parse_meta(str(entry["meta"]))
        except MetaSyntaxError as exc:
            bad("meta", f"bad meta expression: {exc}")
    if not has_pattern and not has_meta and "score" not in entry:
        bad(None, "needs `pattern` or `meta` (or, to change an earlier rule, just `score`)")
    if (has_pattern or has_meta) and "score" not in entry:
        bad("score", "missing")
    return None if len(problems) > before else (name, dict(entry))


def _build(name: str, entry: Mapping[str, object], file: str, line: int | None) -> Rule:
    fields = entry.get("fields", ["subject+body"]) if "pattern" in entry else []
    assert isinstance(fields, list)
    how = plan(str(entry["pattern"]), bool(entry.get("case_sensitive", False))) \
        if "pattern" in entry else None
    score = entry["score"]
    assert isinstance(score, int | float)
    return Rule(
        name=name,
        score=float(score),
        description=str(entry.get("description", "")),
        kind=str(entry.get("kind", "content")),
        file=file,
        line=line,
        fields=tuple(f if not f.startswith("header:") else "header:" + f[7:].lower()
                     for f in fields),
        pattern=re.compile(str(entry["pattern"]), how.flags) if how is not None else None,
        meta=parse_meta(str(entry["meta"])) if "meta" in entry else None,
        lowered=how is not None and how.lowered,
        literals=how.literals if how is not None else None,
    )


def load_rules(rules_dir: Path) -> tuple[RuleSet | None, list[Problem]]:
    """Load and lint every `*.toml` in `rules_dir`, in lexical order. None if any problem."""
    problems: list[Problem] = []
    if not rules_dir.is_dir():
        return None, [Problem(str(rules_dir), None, None, "rules directory not found")]
    merged: dict[str, Rule] = {}
    files = sorted(p for p in rules_dir.iterdir() if p.suffix == ".toml" and p.is_file())
    for path in files:
        file = str(path)
        try:
            text = path.read_text(encoding="utf-8")
            doc = tomllib.loads(text)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            match = re.search(r"line (\d+)", str(exc))
            problems.append(
                Problem(file, None, int(match.group(1)) if match else None, f"unreadable: {exc}")
            )
            continue
        for key in doc:
            if key != "rule":
                problems.append(Problem(file, key, None, "unknown top-level key (use [[rule]])"))
        entries = doc.get("rule", [])
        if not isinstance(entries, list):
            problems.append(Problem(file, "rule", None, "must be an array of tables [[rule]]"))
            continue
        seen_here: set[str] = set()
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                problems.append(Problem(file, "rule", None, f"rule #{index + 1} is not a table"))
                continue
            parsed = _parse_entry(entry, file, text, index, problems)
            if parsed is None:
                continue
            name, fields = parsed
            line = _line_of(text, name)
            if name in seen_here:
                problems.append(Problem(file, "name", line, "defined twice in one file", name))
                continue
            seen_here.add(name)
            if "pattern" in fields or "meta" in fields:
                merged[name] = _build(name, fields, file, line)
            else:  # score/description override of an earlier rule
                earlier = merged.get(name)
                if earlier is None:
                    problems.append(Problem(file, "score", line,
                                            "overrides a rule no earlier file defines", name))
                    continue
                score = fields["score"]
                assert isinstance(score, int | float)
                merged[name] = Rule(
                    name, float(score), str(fields.get("description", earlier.description)),
                    str(fields.get("kind", earlier.kind)), file, line,
                    earlier.fields, earlier.pattern, earlier.meta, earlier.lowered,
                    earlier.literals,
                )
    # meta references and cycles, across all files
    for rule in merged.values():
        if rule.meta is None:
            continue
        for ref in sorted(set(names_in(rule.meta))):
            if ref.startswith(FACT_PREFIX) and ref not in FACTS:
                problems.append(Problem(rule.file, "meta", rule.line,
                                        f"names unknown dimension {ref} (known: "
                                        f"{', '.join(sorted(FACTS))})", rule.name))
            elif ref not in merged and ref not in FACTS:
                problems.append(Problem(rule.file, "meta", rule.line,
                                        f"names unknown rule {ref}", rule.name))
            elif ref == rule.name:
                problems.append(Problem(rule.file, "meta", rule.line, "refers to itself",
                                        rule.name))
    if problems:
        return None, problems
    ordered_metas: list[Rule] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(rule: Rule, chain: tuple[str, ...]) -> None:
        if state.get(rule.name) == 2:
            return
        if state.get(rule.name) == 1:
            problems.append(Problem(rule.file, "meta", rule.line,
                                    f"meta rules form a cycle: {' -> '.join(chain)}", rule.name))
            return
        state[rule.name] = 1
        assert rule.meta is not None
        for ref in names_in(rule.meta):
            dep = merged.get(ref)  # None: a dimension fact
            if dep is not None and dep.meta is not None:
                visit(dep, (*chain, ref))
        state[rule.name] = 2
        if rule.enabled:
            ordered_metas.append(rule)

    for rule in merged.values():
        if rule.meta is not None:
            visit(rule, (rule.name,))
    if problems:
        return None, problems
    patterns = tuple(r for r in merged.values() if r.pattern is not None and r.enabled)
    return RuleSet(patterns, tuple(ordered_metas), tuple(str(p) for p in files)), []
