"""Routing: which queue a ticket lands in, and what else its routing rule adds.

Owns the meaning of `routing.toml`: ordered `[[rule]]` tables, each with `[rule.match]`
conditions and what a match does (queue, tags, severity floor, assignee hint, notify addresses).
`check_routing` names every problem (file, key such as `rule[2].match.plan_at_least`, line);
`build_router` turns a valid file into a `Router` once per config load (regexes compiled, plan and
level ranks and calendars resolved); `route` applies it to one ticket's `RoutingFacts` and returns
a `Route` that says which rule routed the ticket and why (DESIGN promise 4).

Semantics (each pinned by tests/test_routing.py):
- Rules are evaluated in file order. A rule matches when every condition it gives holds (AND);
  a list condition holds when any of its values does (OR); a rule without conditions matches
  every ticket.
- The first matching rule ends routing, unless it says `continue_matching = true`: then its
  effects are applied and later rules are still evaluated. Tags and notify addresses add up
  (first occurrence kept, in order); a later match's queue and assignee replace earlier ones;
  the most severe severity floor wins. `Route.rule` is the rule whose queue was taken ("" when
  no matching rule named a queue and the default queue applied); `Route.matched` lists every
  rule that matched, in order.
- Plans compare by their position in plans.toml (`plan_at_least = "growth"`: growth and every
  tier after it), levels by their position in severity.toml (`severity_at_least = "high"`: high
  and everything more severe). Never by name.
- `during`/`outside` ask `calendars.is_open` at the ticket's instant: hours are half-open, so
  08:00 is inside "08:00-18:00" and 18:00 is outside.
- A severity floor only says what routing asks for; `decide` caps the lift at the plan's ceiling.

Must never: read a clock (the instant is in the facts), touch storage or the network, or raise
from `route` (a rule that cannot be evaluated simply does not hold). `check_routing` reads the
file only to find line numbers; everything else is pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gateway.config.errors import ConfigError, ConfigProblem
from gateway.config.schema import RouteMatch, RouteRule, RoutingFile
from gateway.phone import normalise_phone
from gateway.policy.calendars import Calendar, is_open
from gateway.policy.plans import CHANNEL_KIND

FILE = "routing.toml"
_RULE_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
_PHONE_LIKE = re.compile(r"[\d\s+().-]*\d[\d\s+().-]*")


@dataclass(frozen=True)
class RoutingFacts:
    """What routing may look at, gathered by `decide` after entitlement and the plan's rights."""

    channel: str  # channel kind: email, sms, voice, ...
    account_id: str
    plan: str
    sender: str  # lower-cased address, or E.164 phone for SMS/voice
    recipients: tuple[str, ...]
    severity: str
    jump_queue: bool
    emergency: bool
    hits: tuple[str, ...]  # names of classifier rules that fired
    text: str  # subject + body
    at: datetime  # the instant the ticket is routed (aware)

    def __post_init__(self) -> None:
        # Calendars need an aware instant; refusing a naive one here keeps `route` total.
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise ValueError(f"RoutingFacts.at must be timezone-aware, not {self.at!r}")


@dataclass(frozen=True)
class Route:
    """Where a ticket goes and why; recorded on the ticket."""

    queue: str
    rule: str  # the rule whose queue was taken; "" when the default queue applied
    tags: tuple[str, ...]
    severity_floor: str | None  # most severe floor asked for; decide caps it at the ceiling
    assignee: str
    notify: tuple[str, ...]
    matched: tuple[str, ...]  # every rule that matched, in order
    reason: str  # "rule EMERGENCIES (emergency=yes, plan growth >= growth)"


# A condition returns what held, for the explanation ("channel sms"), or None when it fails.
Condition = Callable[[RoutingFacts], str | None]


@dataclass(frozen=True)
class CompiledRule:
    name: str
    queue: str
    tags: tuple[str, ...]
    severity_floor: str | None
    assignee: str
    notify: tuple[str, ...]
    continue_matching: bool
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class Router:
    """routing.toml made ready to apply: built once per config load by `build_router`."""

    default_queue: str
    rules: tuple[CompiledRule, ...]
    levels: tuple[str, ...]

    @property
    def queues(self) -> frozenset[str]:
        """Every queue a route can name: the default and each rule's."""
        return frozenset({self.default_queue, *(r.queue for r in self.rules if r.queue)})


# ---- applying the rules -----------------------------------------------------------------------


def route(router: Router, facts: RoutingFacts) -> Route:
    """Route one ticket: see the module docstring for the order and `continue_matching`."""
    queue, rule = router.default_queue, ""
    tags: dict[str, None] = {}
    notify: dict[str, None] = {}
    floor: str | None = None
    assignee = ""
    matched: list[str] = []
    parts: list[str] = []
    for compiled in router.rules:
        held = _holds(compiled, facts)
        if held is None:
            continue
        matched.append(compiled.name)
        parts.append(f"rule {compiled.name} ({', '.join(held) or 'every ticket'})")
        if compiled.queue:
            queue, rule = compiled.queue, compiled.name
        tags.update(dict.fromkeys(compiled.tags))
        notify.update(dict.fromkeys(compiled.notify))
        if compiled.severity_floor is not None and (
            floor is None
            or router.levels.index(compiled.severity_floor) < router.levels.index(floor)
        ):
            floor = compiled.severity_floor
        if compiled.assignee:
            assignee = compiled.assignee
        if not compiled.continue_matching:
            break
    if not matched:
        reason = f"no rule matched: default queue {router.default_queue}"
    elif not rule:
        reason = "; then ".join(parts) + f"; no queue named: default queue {router.default_queue}"
    else:
        reason = "; then ".join(parts)
    return Route(
        queue=queue,
        rule=rule,
        tags=tuple(tags),
        severity_floor=floor,
        assignee=assignee,
        notify=tuple(notify),
        matched=tuple(matched),
        reason=reason,
    )


def _holds(rule: CompiledRule, facts: RoutingFacts) -> list[str] | None:
    held: list[str] = []
    for condition in rule.conditions:
        try:
            why = condition(facts)
        except Exception:  # never let one odd input break routing: the condition fails
            return None
        if why is None:
            return None
        held.append(why)
    return held


# ---- building the router ----------------------------------------------------------------------


def build_router(
    routing: RoutingFile,
    plan_names: Sequence[str],
    levels: Sequence[str],
    calendars: Mapping[str, Calendar],
) -> Router:
    """The Router for a routing.toml; raises ConfigError listing every problem (normally
    `check_routing` has already run at load, so this only fails on a programming error)."""
    problems = check_routing(routing, plan_names, levels, calendars.keys())
    if problems:
        raise ConfigError(problems)
    plan_rank = {name: i for i, name in enumerate(plan_names)}
    level_rank = {name: i for i, name in enumerate(levels)}
    rules = tuple(
        CompiledRule(
            name=r.name,
            queue=r.queue,
            tags=r.tags,
            severity_floor=r.severity_floor,
            assignee=r.assignee,
            notify=tuple(a.strip().lower() for a in r.notify),
            continue_matching=r.continue_matching,
            conditions=_conditions(r.match, plan_rank, level_rank, calendars),
        )
        for r in routing.rule
    )
    return Router(default_queue=routing.default_queue, rules=rules, levels=tuple(levels))


def _conditions(
    m: RouteMatch,
    plan_rank: Mapping[str, int],
    level_rank: Mapping[str, int],
    calendars: Mapping[str, Calendar],
) -> tuple[Condition, ...]:
    out: list[Condition] = []
    if m.channel is not None:
        out.append(_one_of("channel", {c.lower() for c in m.channel}, lambda f: f.channel.lower()))
    if m.account is not None:
        out.append(_one_of("account", set(m.account), lambda f: f.account_id))
    if m.plan is not None:
        out.append(_one_of("plan", set(m.plan), lambda f: f.plan))
    if m.plan_at_least is not None:
        out.append(_at_least("plan", m.plan_at_least, plan_rank, lambda f: f.plan, higher=True))
    if m.sender is not None:
        out.append(_one_of("sender", {_sender_key(s) for s in m.sender}, _fact_sender))
    if m.sender_domain is not None:
        out.append(_sender_domain({d.lower() for d in m.sender_domain}))
    if m.recipient is not None:
        out.append(_recipient({r.strip().lower() for r in m.recipient}))
    if m.severity is not None:
        out.append(_one_of("severity", set(m.severity), lambda f: f.severity))
    if m.severity_at_least is not None:
        out.append(
            _at_least(
                "severity", m.severity_at_least, level_rank, lambda f: f.severity, higher=False
            )
        )
    if m.jump_queue is not None:
        out.append(_flag("jump_queue", m.jump_queue, lambda f: f.jump_queue))
    if m.emergency is not None:
        out.append(_flag("emergency", m.emergency, lambda f: f.emergency))
    if m.hits is not None:
        out.append(_hits(m.hits))
    if m.keywords is not None:
        out.append(_keywords(m.keywords))
    if m.pattern is not None:
        out.append(_pattern(m.pattern))
    if m.during is not None:
        out.append(_hours(m.during, calendars[m.during], inside=True))
    if m.outside is not None:
        out.append(_hours(m.outside, calendars[m.outside], inside=False))
    return tuple(out)


def _one_of(label: str, values: set[str], get: Callable[[RoutingFacts], str]) -> Condition:
    def condition(facts: RoutingFacts) -> str | None:
        value = get(facts)
        return f"{label} {value}" if value in values else None

    return condition


def _at_least(
    label: str,
    least: str,
    rank: Mapping[str, int],
    get: Callable[[RoutingFacts], str],
    *,
    higher: bool,
) -> Condition:
    """Plans rank lowest first (higher tiers have larger positions); levels rank most severe
    first (more severe levels have smaller positions)."""
    bound = rank[least]

    def condition(facts: RoutingFacts) -> str | None:
        value = get(facts)
        position = rank.get(value)
        if position is None:
            return None
        ok = position >= bound if higher else position <= bound
        return f"{label} {value} >= {least}" if ok else None

    return condition


def _sender_key(sender: str) -> str:
    """Addresses compare lower-cased; anything that looks like a phone number in E.164."""
    sender = sender.strip().lower()
    if "@" not in sender and _PHONE_LIKE.fullmatch(sender):
        return normalise_phone(sender)
    return sender


def _fact_sender(facts: RoutingFacts) -> str:
    return _sender_key(facts.sender)


def _sender_domain(domains: set[str]) -> Condition:
    def condition(facts: RoutingFacts) -> str | None:
        sender = facts.sender.strip().lower()
        if "@" not in sender:
            return None
        domain = sender.rsplit("@", 1)[1]
        for candidate in sorted(domains):
            if domain == candidate or domain.endswith("." + candidate):
                return f"sender domain {candidate}"
        return None

    return condition


def _recipient(addresses: set[str]) -> Condition:
    def condition(facts: RoutingFacts) -> str | None:
        for recipient in facts.recipients:
            if recipient.strip().lower() in addresses:
                return f"recipient {recipient.strip().lower()}"
        return None

    return condition


def _flag(label: str, want: bool, get: Callable[[RoutingFacts], bool]) -> Condition:
    def condition(facts: RoutingFacts) -> str | None:
        return f"{label}={'yes' if want else 'no'}" if get(facts) == want else None

    return condition


def _hits(names: tuple[str, ...]) -> Condition:
    def condition(facts: RoutingFacts) -> str | None:
        found = [n for n in names if n in facts.hits]
        return "hit " + ",".join(found) if found else None

    return condition


def _keywords(keywords: tuple[str, ...]) -> Condition:
    folded = tuple((k, k.casefold()) for k in keywords)

    def condition(facts: RoutingFacts) -> str | None:
        text = facts.text.casefold()
        for keyword, key in folded:
            if key in text:
                return f"keyword {keyword!r}"
        return None

    return condition


def _pattern(pattern: str) -> Condition:
    compiled = re.compile(pattern, re.IGNORECASE)

    def condition(facts: RoutingFacts) -> str | None:
        found = compiled.search(facts.text)
        return f"pattern {pattern!r} found {found.group(0)!r}" if found else None

    return condition


def _hours(name: str, calendar: Calendar, *, inside: bool) -> Condition:
    def condition(facts: RoutingFacts) -> str | None:
        if is_open(calendar, facts.at) != inside:
            return None
        return f"{'during' if inside else 'outside'} {name} hours"

    return condition


# ---- checking routing.toml --------------------------------------------------------------------


def check_routing(
    routing: RoutingFile,
    plan_names: Sequence[str],
    levels: Sequence[str],
    calendar_names: Collection[str],
    path: Path | None = None,
) -> list[ConfigProblem]:
    """Every problem with routing.toml beyond what the schema's types catch: names that do not
    exist in plans.toml, severity.toml or calendars.toml, duplicate or badly formed rule names,
    bad regular expressions, conditions that can never hold, unreachable rules. `path` is read
    only to find line numbers. Empty means `build_router` will succeed."""
    lines = _read_lines(path)
    problems: list[ConfigProblem] = []

    def problem(index: int | None, leaf: str, message: str, in_match: bool = False) -> None:
        if index is None:
            key, line = leaf, _top_line(lines, leaf)
        else:
            key = f"rule[{index}].{'match.' if in_match else ''}{leaf}"
            line = _rule_line(lines, index, leaf, in_match)
        problems.append(ConfigProblem(FILE, key, message, line))

    if not routing.default_queue.strip():
        problem(None, "default_queue", "must name a queue")
    seen: dict[str, int] = {}
    stopper: tuple[int, str] | None = None  # an earlier rule that matches everything and stops
    for i, rule in enumerate(routing.rule):
        if not _RULE_NAME.fullmatch(rule.name):
            problem(i, "name", f"{rule.name!r}: rule names are UPPER_SNAKE (A-Z, 0-9, _)")
        elif rule.name in seen:
            problem(i, "name", f"duplicate rule name {rule.name!r} (also rule[{seen[rule.name]}])")
        else:
            seen[rule.name] = i
        if stopper is not None:
            problem(
                i,
                "name",
                f"rule {rule.name} is never reached: rule[{stopper[0]}] {stopper[1]} matches "
                "every ticket and does not continue",
            )
        if rule.match == RouteMatch() and not rule.continue_matching and stopper is None:
            stopper = (i, rule.name)
        _check_actions(i, rule, levels, problem)
        _check_match(i, rule.match, plan_names, levels, calendar_names, problem)
    return problems


def unknown_hits(
    routing: RoutingFile, known: Collection[str], path: Path | None = None
) -> list[ConfigProblem]:
    """`hits` that name nothing the classifier can report (a rule renamed, removed or never
    written): such a condition silently never holds. Checked once the rules are loaded, since
    they live in rules.d/, not in routing.toml."""
    lines = _read_lines(path)
    problems: list[ConfigProblem] = []
    for i, rule in enumerate(routing.rule):
        missing = [name for name in rule.match.hits or () if name not in known]
        if missing:
            problems.append(
                ConfigProblem(
                    FILE,
                    f"rule[{i}].match.hits",
                    f"{_ls(missing)}: no classifier rule of that name (rules.d/, the severity "
                    "matrix MATRIX_* and the model's MODEL_* votes), so this could never match",
                    _rule_line(lines, i, "hits", True),
                )
            )
    return problems


ProblemFn = Callable[..., None]


def _check_actions(i: int, rule: RouteRule, levels: Sequence[str], problem: ProblemFn) -> None:
    if rule.queue != rule.queue.strip():
        problem(i, "queue", f"{rule.queue!r} has leading or trailing spaces")
    if rule.severity_floor is not None and rule.severity_floor not in levels:
        problem(
            i, "severity_floor", f"unknown level {rule.severity_floor!r} (levels: {_ls(levels)})"
        )
    for tag in rule.tags:
        if not tag.strip():
            problem(i, "tags", "a tag must not be empty")
    for address in rule.notify:
        if "@" not in address.strip()[1:-1]:
            problem(i, "notify", f"{address!r} is not a mail address")


def _check_match(
    i: int,
    m: RouteMatch,
    plan_names: Sequence[str],
    levels: Sequence[str],
    calendar_names: Collection[str],
    problem: ProblemFn,
) -> None:
    def bad(leaf: str, message: str) -> None:
        problem(i, leaf, message, True)

    lists = {
        "channel": m.channel,
        "account": m.account,
        "plan": m.plan,
        "sender": m.sender,
        "sender_domain": m.sender_domain,
        "recipient": m.recipient,
        "severity": m.severity,
        "hits": m.hits,
        "keywords": m.keywords,
    }
    for leaf, values in lists.items():
        if values is not None and not values:
            bad(leaf, "is empty, so the rule could never match; leave the key out to match any")
        for value in values or ():
            if not value.strip():
                bad(leaf, "an empty value would match everything or nothing; remove it")
    for channel in m.channel or ():
        if channel in CHANNEL_KIND and CHANNEL_KIND[channel] != channel:
            bad(
                "channel",
                f"{channel!r} is a transport; use the channel kind "
                f"{CHANNEL_KIND[channel]!r} (as plans.toml does)",
            )
    for plan in m.plan or ():
        if plan not in plan_names:
            bad("plan", f"unknown plan {plan!r} (plans, lowest first: {_ls(plan_names)})")
    if m.plan_at_least is not None and m.plan_at_least not in plan_names:
        bad(
            "plan_at_least",
            f"unknown plan {m.plan_at_least!r} (plans, lowest first: {_ls(plan_names)})",
        )
    if m.plan is not None and m.plan_at_least is not None:
        bad("plan_at_least", "give plan or plan_at_least, not both")
    for level in m.severity or ():
        if level not in levels:
            bad("severity", f"unknown level {level!r} (levels, most severe first: {_ls(levels)})")
    if m.severity_at_least is not None and m.severity_at_least not in levels:
        bad(
            "severity_at_least",
            f"unknown level {m.severity_at_least!r} (levels, most severe first: {_ls(levels)})",
        )
    if m.severity is not None and m.severity_at_least is not None:
        bad("severity_at_least", "give severity or severity_at_least, not both")
    for domain in m.sender_domain or ():
        if not _DOMAIN.fullmatch(domain.lower()):
            bad("sender_domain", f"{domain!r} is not a domain (write it without '@')")
    for name in m.hits or ():
        if not _RULE_NAME.fullmatch(name):
            bad("hits", f"{name!r}: classifier rule names are UPPER_SNAKE (A-Z, 0-9, _)")
    if m.pattern is not None:
        if not m.pattern:
            bad("pattern", "an empty pattern matches everything; remove the key instead")
        else:
            try:
                re.compile(m.pattern)
            except re.error as exc:
                bad("pattern", f"not a valid regular expression: {exc}")
    for leaf, calendar in (("during", m.during), ("outside", m.outside)):
        if calendar is not None and calendar not in calendar_names:
            bad(leaf, f"unknown calendar {calendar!r} (calendars.toml has {_ls(calendar_names)})")
    if m.during is not None and m.during == m.outside:
        bad("outside", f"during and outside the same calendar {m.during!r} can never both hold")


def _ls(names: Collection[str]) -> str:
    return ", ".join(names) or "none"


# ---- line numbers -----------------------------------------------------------------------------
# errors.find_line finds a key after the first table of its name; with several [[rule]] tables
# that is the wrong rule, so these count [[rule]] headers to reach rule[i].

_RULE_HEADER = re.compile(r"^\s*\[\[\s*rule\s*\]\]")
_MATCH_HEADER = re.compile(r"^\s*\[\s*rule\s*\.\s*match\s*\]")
_ANY_HEADER = re.compile(r"^\s*\[")


def _read_lines(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def _key_line(lines: list[str], leaf: str, start: int, end: int) -> int | None:
    pattern = re.compile(rf"^\s*\"?{re.escape(leaf)}\"?\s*=")
    for n in range(start, end):
        if pattern.match(lines[n]):
            return n + 1
    return None


def _top_line(lines: list[str], leaf: str) -> int | None:
    end = next((n for n, text in enumerate(lines) if _ANY_HEADER.match(text)), len(lines))
    return _key_line(lines, leaf, 0, end)


def _rule_line(lines: list[str], index: int, leaf: str, in_match: bool) -> int | None:
    headers = [n for n, text in enumerate(lines) if _RULE_HEADER.match(text)]
    if index >= len(headers):
        return None
    start = headers[index]
    end = headers[index + 1] if index + 1 < len(headers) else len(lines)
    match_at = next((n for n in range(start, end) if _MATCH_HEADER.match(lines[n])), None)
    if in_match:
        if match_at is None:  # an inline table: match = { ... } on one line
            return _key_line(lines, "match", start, end)
        return _key_line(lines, leaf, match_at, end) or match_at + 1
    return _key_line(lines, leaf, start, match_at if match_at is not None else end)
