"""Read a config directory into one immutable `Settings` value, or every problem with it.

Owns: which files make a config directory, the order rules files apply in, where secrets come
from (environment or `$CREDENTIALS_DIRECTORY`, never the files), and cross-file checks (a
customer's plan must exist, the default level must be on the scale). Never opens ports, never
touches the database: `check-config` and SIGHUP reload run exactly this and nothing more.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from gateway.config.errors import ConfigError, ConfigProblem, find_line
from gateway.config.gateway_file import read_toml, spool_dir, state_dir
from gateway.config.gateway_schema import GatewayConfig
from gateway.config.schema import (
    CalendarsFile,
    CustomersFile,
    EmergencyFile,
    ForwardingFile,
    PlansFile,
    RoutingFile,
    SeverityFile,
)
from gateway.config.validate import build, build_partial
from gateway.emergency.after_hours import first_uncovered_instant
from gateway.outbound.forwarding import check_forwarding, known_queues
from gateway.policy.calendars import ROUND_THE_CLOCK, build_calendars, check_calendars
from gateway.policy.routing import check_routing

T = TypeVar("T")

REQUIRED_FILES = ("gateway.toml",)
OPTIONAL_FILES = (
    "customers.toml",
    "plans.toml",
    "severity.toml",
    "calendars.toml",
    "routing.toml",
    "emergency.toml",
    "forwarding.toml",
)


@dataclass(frozen=True)
class Templates:
    """Customer-facing texts, by (name, language). Each text starts with a `Subject:` line."""

    texts: tuple[tuple[tuple[str, str], str], ...]

    def get(self, name: str, language: str) -> str | None:
        table = dict(self.texts)
        return table.get((name, language)) or table.get((name, "en"))


@dataclass(frozen=True)
class Settings:
    """Everything the config directory says, validated. Swapped whole on reload."""

    directory: Path
    gateway: GatewayConfig
    customers: CustomersFile
    plans: PlansFile
    severity: SeverityFile
    calendars: CalendarsFile
    routing: RoutingFile
    templates: Templates
    rules_dir: Path
    # emergency.toml: emergency (billable) support (gateway/emergency/rules.py).
    emergency: EmergencyFile = field(default_factory=EmergencyFile)
    # forwarding.toml: outbound webhooks into help desks (gateway/outbound/forwarding.py).
    forwarding: ForwardingFile = field(default_factory=ForwardingFile)

    @property
    def state_dir(self) -> Path:
        return state_dir(self.directory, self.gateway)

    @property
    def spool_dir(self) -> Path:
        return spool_dir(self.directory, self.gateway)

    @property
    def database_url(self) -> str:
        url = os.environ.get("GATEWAY_DATABASE_URL") or self.gateway.storage.url
        if not url:
            return f"sqlite:///{self.state_dir / 'gateway.db'}"
        password = secret("database-password", "GATEWAY_DATABASE_PASSWORD")
        if password and "@" in url and ":" not in url.split("://", 1)[1].split("@", 1)[0]:
            scheme, rest = url.split("://", 1)
            user, host = rest.split("@", 1)
            url = f"{scheme}://{user}:{password}@{host}"
        return url


def secret(credential: str, env: str) -> str | None:
    """A secret from the environment, else from systemd's credentials directory."""
    value = os.environ.get(env)
    if value:
        return value
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / credential
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    return None


def sms_outbound_missing(gateway: GatewayConfig) -> list[str]:
    """What outbound SMS still lacks: [webhooks] account_sid, from_number, the auth token.
    Empty when Twilio can send; SMS outbox rows wait while anything is listed."""
    hooks = gateway.webhooks
    missing = [f"[webhooks] {k}" for k in ("account_sid", "from_number") if not getattr(hooks, k)]
    if not secret("twilio-auth-token", "GATEWAY_TWILIO_AUTH_TOKEN"):
        missing.append(
            "the Twilio auth token ($GATEWAY_TWILIO_AUTH_TOKEN or credential twilio-auth-token)"
        )
    return missing


def config_warnings(settings: Settings) -> list[ConfigProblem]:
    """Valid but probably not meant: printed by `check-config` and logged by `run`, never
    fatal. A plan that sells SMS with outbound SMS unconfigured: replies by SMS (the
    acknowledgement, agents' replies) wait in the outbox and never leave (issue 17 item 9)."""
    warnings: list[ConfigProblem] = []
    selling = [p.name for p in settings.plans.plan if "sms" in p.channels]
    missing = sms_outbound_missing(settings.gateway)
    if selling and missing:
        path = settings.directory / "gateway.toml"
        warnings.append(
            ConfigProblem(
                "gateway.toml",
                "webhooks",
                f"plan(s) {', '.join(selling)} sell SMS but outbound SMS is not configured "
                f"(missing {', '.join(missing)}): SMS replies wait in the outbox unsent",
                find_line(path, "webhooks.account_sid"),
            )
        )
    return warnings


def _load_file(directory: Path, name: str, cls: type[T], problems: list[ConfigProblem]) -> T | None:
    path = directory / name
    if name not in REQUIRED_FILES and not path.exists():
        return cls()
    table = read_toml(path, problems)
    if table is None:
        return None
    value, found = build(cls, table, path)
    problems.extend(found)
    return value


def _load_partial(
    directory: Path, name: str, cls: type[T], problems: list[ConfigProblem]
) -> tuple[T | None, frozenset[str]]:
    """A file for `load`: its problems, and a value good enough for the cross-file checks even
    when some of its keys are wrong (their defaults stand in), so one type error does not hide
    every cross-reference problem. `load` raises when there is any problem: a partial value is
    only ever checked, never run."""
    path = directory / name
    if name not in REQUIRED_FILES and not path.exists():
        return cls(), frozenset()
    table = read_toml(path, problems)
    if table is None:
        return None, frozenset()
    value, found, defaulted = build_partial(cls, table, path)
    problems.extend(found)
    return value, defaulted


def _load_templates(directory: Path, problems: list[ConfigProblem]) -> Templates:
    texts: list[tuple[tuple[str, str], str]] = []
    tdir = directory / "templates"
    if tdir.is_dir():
        for path in sorted(tdir.glob("*.txt")):
            parts = path.name.split(".")
            if len(parts) != 3:
                problems.append(
                    ConfigProblem(
                        f"templates/{path.name}", None, "name must be <template>.<language>.txt"
                    )
                )
                continue
            text = path.read_text(encoding="utf-8")
            if not text.startswith("Subject:"):
                problems.append(
                    ConfigProblem(
                        f"templates/{path.name}", None, "must start with a Subject: line", 1
                    )
                )
                continue
            texts.append(((parts[0], parts[1]), text))
    return Templates(tuple(texts))


def _cross_check(
    directory: Path,
    customers: CustomersFile | None,
    plans: PlansFile | None,
    severity: SeverityFile | None,
    templates: Templates,
    problems: list[ConfigProblem],
) -> None:
    """Checks across files, each run when the files it needs are themselves valid."""
    if severity is not None:
        _check_severity(directory, severity, problems)
    if templates.get("acknowledgement", "en") is None:
        problems.append(ConfigProblem("templates/acknowledgement.en.txt", None, "file is missing"))
    if customers is None or plans is None:
        return
    plan_names = [p.name for p in plans.plan] or ["none"]
    if len(set(plan_names)) != len(plan_names):
        problems.append(ConfigProblem("plans.toml", "plan", "plan names must be unique"))
    seen: set[str] = set()
    cpath = directory / "customers.toml"
    for i, account in enumerate(customers.account):
        key = f"account[{i}]"
        if account.id in seen:
            problems.append(
                ConfigProblem(
                    "customers.toml",
                    f"{key}.id",
                    f"duplicate account id {account.id!r}",
                    find_line(cpath, f"{key}.id"),
                )
            )
        seen.add(account.id)
        if account.plan not in plan_names:
            problems.append(
                ConfigProblem(
                    "customers.toml",
                    f"{key}.plan",
                    f"unknown plan {account.plan!r} (plans: {', '.join(plan_names)})",
                    find_line(cpath, f"{key}.plan"),
                )
            )


# The only hosts an [[imap]] mailbox may reach with tls = "plain" (channels/imap.py checks again).
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _check_imap(directory: Path, gateway: GatewayConfig, problems: list[ConfigProblem]) -> None:
    """[[imap]] mailboxes: unique names, plaintext only to this host and only when asked for,
    and no folder that would make the poller take its own processed or quarantined mail."""
    gpath = directory / "gateway.toml"
    seen: set[str] = set()
    for i, box in enumerate(gateway.imap):
        key = f"imap[{i}]"

        def problem(leaf: str, message: str, key: str = key) -> None:
            problems.append(
                ConfigProblem(
                    "gateway.toml", f"{key}.{leaf}", message, find_line(gpath, f"{key}.{leaf}")
                )
            )

        if box.name in seen:
            problem("name", f"duplicate mailbox name {box.name!r}")
        seen.add(box.name)
        if box.tls == "plain" and box.host.lower() not in LOCAL_HOSTS:
            problem(
                "tls",
                f'"plain" sends the password in clear text; it is only allowed to localhost, '
                f'not {box.host!r} (use "implicit" or "starttls")',
            )
        elif box.tls == "plain" and not box.allow_plaintext:
            problem("tls", '"plain" also needs allow_plaintext = true')
        if box.after_intake == "move" and box.processed_folder == box.folder:
            problem("processed_folder", "must differ from folder")
        if box.quarantine_folder == box.folder:
            problem("quarantine_folder", "must differ from folder")


def _check_api_tokens(
    directory: Path, gateway: GatewayConfig, problems: list[ConfigProblem]
) -> None:
    """[[api.tokens]]: names are unique (they name actors in the audit log) and no two entries
    share a hash (one token would be two people). Messages never show a hash."""
    gpath = directory / "gateway.toml"
    names: set[str] = set()
    digests: dict[str, str] = {}
    for i, token in enumerate(gateway.api.tokens):
        if token.name in names:
            problems.append(
                ConfigProblem(
                    "gateway.toml",
                    f"api.tokens[{i}].name",
                    f"duplicate token name {token.name!r}",
                    find_line(gpath, f"api.tokens[{i}].name"),
                )
            )
        names.add(token.name)
        if token.sha256 in digests:
            problems.append(
                ConfigProblem(
                    "gateway.toml",
                    f"api.tokens[{i}].sha256",
                    f"the same token as {digests[token.sha256]!r}: give each holder their own",
                    find_line(gpath, f"api.tokens[{i}].sha256"),
                )
            )
        digests.setdefault(token.sha256, token.name)


def _check_levels_and_plans(
    directory: Path,
    plans: PlansFile | None,
    severity: SeverityFile | None,
    calendars: CalendarsFile | None,
    problems: list[ConfigProblem],
) -> None:
    """Level names and calendar names used by plans.toml and severity.toml must exist."""
    if severity is None:
        return
    levels = list(severity.levels)
    known_calendars = set(calendars.calendar) if calendars is not None else None
    spath = directory / "severity.toml"
    for name, level in severity.level.items():
        if name not in levels:
            problems.append(
                ConfigProblem(
                    "severity.toml",
                    f"level.{name}",
                    f"not one of the levels {levels}",
                    find_line(spath, name),
                )
            )
        if known_calendars is not None and level.calendar not in known_calendars:
            problems.append(
                ConfigProblem(
                    "severity.toml",
                    f"level.{name}.calendar",
                    f"unknown calendar {level.calendar!r} (calendars.toml has "
                    f"{', '.join(sorted(known_calendars)) or 'none'})",
                    find_line(spath, "calendar"),
                )
            )
    if plans is None:
        return
    ppath = directory / "plans.toml"
    for i, plan in enumerate(plans.plan):
        if plan.ceiling and plan.ceiling not in levels:
            problems.append(
                ConfigProblem(
                    "plans.toml",
                    f"plan[{i}].ceiling",
                    f"{plan.ceiling!r} is not one of the levels {levels}",
                    find_line(ppath, f"plan[{i}].ceiling"),
                )
            )
        for lvl, target in plan.sla.items():
            if lvl not in levels:
                problems.append(
                    ConfigProblem(
                        "plans.toml",
                        f"plan[{i}].sla.{lvl}",
                        f"not one of the levels {levels}",
                        find_line(ppath, f"plan[{i}].sla.{lvl}"),
                    )
                )
            if (
                target.calendar
                and known_calendars is not None
                and target.calendar not in known_calendars
            ):
                problems.append(
                    ConfigProblem(
                        "plans.toml",
                        f"plan[{i}].sla.{lvl}.calendar",
                        f"unknown calendar {target.calendar!r}",
                        find_line(ppath, f"plan[{i}].sla.{lvl}.calendar"),
                    )
                )


def _check_severity(directory: Path, severity: SeverityFile, problems: list[ConfigProblem]) -> None:
    spath = directory / "severity.toml"
    if not severity.levels:
        problems.append(ConfigProblem("severity.toml", "levels", "must name at least one level"))
    elif severity.default not in severity.levels:
        problems.append(
            ConfigProblem(
                "severity.toml",
                "default",
                f"{severity.default!r} is not one of the levels {list(severity.levels)}",
                find_line(spath, "default"),
            )
        )


# Templates emergency support sends (gateway/emergency/rules.py); each needs an English text.
EMERGENCY_TEMPLATES = (
    "emergency-unavailable",
    "confirm-charge",
    "emergency-accepted",
    "emergency-released",
)


def _check_emergency(
    directory: Path,
    emergency: EmergencyFile | None,
    plans: PlansFile | None,
    severity: SeverityFile | None,
    calendars: CalendarsFile | None,
    templates: Templates,
    problems: list[ConfigProblem],
) -> None:
    """emergency.toml against the other files: its calendar and level exist; every plan offering
    emergency support states its price (a charge must say what was quoted); its texts exist."""
    epath = directory / "emergency.toml"
    if emergency is not None:
        if (
            emergency.after_hours_calendar
            and calendars is not None
            and emergency.after_hours_calendar not in calendars.calendar
        ):
            problems.append(
                ConfigProblem(
                    "emergency.toml",
                    "after_hours_calendar",
                    f"unknown calendar {emergency.after_hours_calendar!r} (calendars.toml has "
                    f"{', '.join(sorted(calendars.calendar)) or 'none'})",
                    find_line(epath, "after_hours_calendar"),
                )
            )
        if (
            emergency.review_at_or_below
            and severity is not None
            and emergency.review_at_or_below not in severity.levels
        ):
            problems.append(
                ConfigProblem(
                    "emergency.toml",
                    "review_at_or_below",
                    f"{emergency.review_at_or_below!r} is not one of the levels "
                    f"{list(severity.levels)}",
                    find_line(epath, "review_at_or_below"),
                )
            )
        _check_response_calendar(directory, emergency, plans, calendars, problems)
    if plans is None:
        return
    offered = False
    ppath = directory / "plans.toml"
    for i, plan in enumerate(plans.plan):
        offered = offered or plan.emergency
        if plan.emergency and not plan.emergency_price:
            problems.append(
                ConfigProblem(
                    "plans.toml",
                    f"plan[{i}].emergency_price",
                    f"plan {plan.name!r} offers emergency support, so it must state its price "
                    '(e.g. emergency_price = "250.00")',
                    find_line(ppath, f"plan[{i}].emergency"),
                )
            )
    if offered:
        for name in EMERGENCY_TEMPLATES:
            if templates.get(name, "en") is None:
                problems.append(
                    ConfigProblem(
                        f"templates/{name}.en.txt", None, "file is missing (emergency support)"
                    )
                )


def _check_response_calendar(
    directory: Path,
    emergency: EmergencyFile,
    plans: PlansFile | None,
    calendars: CalendarsFile | None,
    problems: list[ConfigProblem],
) -> None:
    """response_calendar exists, and when a plan sells emergency support it is open whenever
    after_hours_calendar is closed: the surcharge buys an after-hours response (issue 17)."""
    if calendars is None:
        return
    epath = directory / "emergency.toml"
    name = emergency.response_calendar
    if name not in calendars.calendar and name != ROUND_THE_CLOCK:
        problems.append(
            ConfigProblem(
                "emergency.toml",
                "response_calendar",
                f"unknown calendar {name!r} (calendars.toml has "
                f"{', '.join(sorted(calendars.calendar)) or 'none'}; {ROUND_THE_CLOCK!r} is "
                "built in)",
                find_line(epath, "response_calendar"),
            )
        )
        return
    selling = [p.name for p in plans.plan if p.emergency] if plans is not None else []
    business_name = emergency.after_hours_calendar
    if not selling or business_name not in calendars.calendar:
        return
    try:
        built = build_calendars(calendars)
    except ConfigError:
        return  # calendars.toml's own problems are listed already
    uncovered = first_uncovered_instant(built[name], built[business_name])
    if uncovered is not None:
        local = uncovered.astimezone(built[business_name].zone)
        problems.append(
            ConfigProblem(
                "emergency.toml",
                "response_calendar",
                f"plan(s) {', '.join(selling)} sell emergency support after hours, but calendar "
                f"{name!r} is closed after hours (e.g. {local:%a %H:%M} {local.tzname()}); "
                f'use a calendar open whenever {business_name!r} is closed, such as "24/7"',
                find_line(epath, "response_calendar"),
            )
        )


def load_lenient(directory: Path) -> tuple[Settings, list[ConfigProblem]]:
    """For operators' read commands (`tickets`, `show`, `spool`): only gateway.toml must be
    valid; a broken policy file falls back to defaults and is returned as a warning, so an admin
    can still look at the queue while fixing a typo. Never used by the daemon."""
    try:
        return load(directory), []
    except ConfigError as exc:
        if not directory.is_dir() or any(p.file == "gateway.toml" for p in exc.problems):
            raise  # nothing to fall back on: "config directory does not exist" (issue 17 item 5)
        problems = exc.problems
        gateway = _load_file(directory, "gateway.toml", GatewayConfig, [])
        if gateway is None:
            raise
    severity = _load_file(directory, "severity.toml", SeverityFile, []) or SeverityFile()
    settings = Settings(
        directory=directory.absolute(),
        gateway=gateway,
        customers=CustomersFile(),
        plans=PlansFile(),
        severity=severity,
        calendars=CalendarsFile(),
        routing=RoutingFile(),
        templates=Templates(()),
        rules_dir=directory.absolute() / "rules.d",
    )
    return settings, problems


def load(directory: Path) -> Settings:
    """Load and validate the whole directory; raise ConfigError listing every problem."""
    problems: list[ConfigProblem] = []
    if not directory.is_dir():
        # The absolute path: a relative default ("./config") says nothing about where it looked.
        raise ConfigError(
            [
                ConfigProblem(
                    str(directory.absolute()),
                    None,
                    "config directory does not exist (give --config DIR or $GATEWAY_CONFIG)",
                )
            ]
        )
    gateway, _ = _load_partial(directory, "gateway.toml", GatewayConfig, problems)
    customers, _ = _load_partial(directory, "customers.toml", CustomersFile, problems)
    plans, _ = _load_partial(directory, "plans.toml", PlansFile, problems)
    severity, bad_severity = _load_partial(directory, "severity.toml", SeverityFile, problems)
    if bad_severity & {"levels", "default"}:
        # Every other file's levels are checked against the scale: a defaulted scale would
        # report levels as unknown that are not. The scale's own problem is already listed.
        severity = None
    calendars, _ = _load_partial(directory, "calendars.toml", CalendarsFile, problems)
    if calendars is not None:
        problems.extend(check_calendars(calendars, directory / "calendars.toml"))
    routing, _ = _load_partial(directory, "routing.toml", RoutingFile, problems)
    templates = _load_templates(directory, problems)
    _cross_check(directory, customers, plans, severity, templates, problems)
    _check_levels_and_plans(directory, plans, severity, calendars, problems)
    if routing is not None and plans is not None and severity is not None and calendars is not None:
        names = [p.name for p in plans.plan] or ["none"]  # routing names plans, levels, calendars
        rpath = directory / "routing.toml"
        problems.extend(check_routing(routing, names, severity.levels, calendars.calendar, rpath))
    if gateway is not None:
        _check_imap(directory, gateway, problems)
        _check_api_tokens(directory, gateway, problems)
    emergency, _ = _load_partial(directory, "emergency.toml", EmergencyFile, problems)
    _check_emergency(directory, emergency, plans, severity, calendars, templates, problems)
    forwarding, _ = _load_partial(directory, "forwarding.toml", ForwardingFile, problems)
    if forwarding is not None:
        problems.extend(
            check_forwarding(
                forwarding,
                known_queues(routing) if routing is not None else None,
                directory / "forwarding.toml",
            )
        )
    if problems:
        raise ConfigError(problems)
    assert gateway and customers and plans and severity and calendars and routing and emergency
    return Settings(
        directory=directory.absolute(),
        gateway=gateway,
        customers=customers,
        plans=plans,
        severity=severity,
        calendars=calendars,
        routing=routing,
        templates=templates,
        rules_dir=directory.absolute() / "rules.d",
        emergency=emergency,
        forwarding=forwarding or ForwardingFile(),
    )
