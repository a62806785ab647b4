"""The reloadable part of the gateway as one immutable value, and the box that swaps it.

Owns reload semantics: `load_runtime` builds a complete new Runtime (config, customer directory,
classifier engine, policy) or raises ConfigError; the box swaps it in one assignment, so a
message is processed entirely under the old or entirely under the new config, never a mix. A bad
reload leaves the old Runtime in place. Never touches listeners or the database URL (those need
a restart, and `reload` says so); the daemon applies `[[imap]]` changes itself, after the swap.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from classifiers.engine import Engine, build_engine
from classifiers.settings import parse_classifier_table
from gateway.config.errors import ConfigError, ConfigProblem
from gateway.config.gateway_schema import INSECURE_WEBHOOKS_WARNING, WebhooksSection
from gateway.config.loader import Settings, load
from gateway.config.schema import Account, CustomersFile
from gateway.emergency.sender_auth import DnsTxtResolver
from gateway.policy.calendars import build_calendars
from gateway.policy.directory import Directory
from gateway.policy.plans import Plans
from gateway.policy.routing import build_router, unknown_hits
from gateway.stages.decide import Policy
from gateway.stages.persist import PersistContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    directory: Directory
    engine: Engine | None
    policy: Policy
    persist: PersistContext
    generation: int
    # DNS TXT lookups for our own DKIM check of mail asking for emergency support
    # (gateway/emergency/rules.py: authenticate); None: no DKIM check. Tests inject a stand-in.
    dkim_resolver: DnsTxtResolver | None = None

    @property
    def reopen_window(self) -> timedelta:
        return timedelta(days=self.settings.gateway.threading.reopen_window_days)

    @property
    def incident_window(self) -> timedelta:
        """An SMS or voicemail this soon after an account's emergency joins its incident."""
        return timedelta(hours=self.settings.emergency.incident_window_hours)


def dns_txt(name: bytes) -> bytes | None:
    """A DNS TXT record through the system resolver (dkimpy's own lookup, via dnspython): what
    the daemon's DKIM check uses. The only network call of the emergency path, made only for
    mail asking for emergency support without a trusted Authentication-Results pass."""
    from dkim import dnsplug

    found: bytes | None = dnsplug.get_txt(name, timeout=5)
    return found


def model_dir(settings: Settings) -> Path:
    return settings.state_dir / "models"


def classifier_problems(settings: Settings) -> tuple[Engine | None, list[ConfigProblem]]:
    csettings, problems = parse_classifier_table(
        settings.severity.classifier, settings.severity.levels, "severity.toml"
    )
    found = [convert_problem(p) for p in problems]
    if csettings is None:
        return None, found
    engine, more = build_engine(settings.rules_dir, csettings, model_dir(settings))
    found.extend(convert_problem(p) for p in more)
    if engine is not None:
        known = engine.hit_names(settings.severity.levels)
        found.extend(unknown_hits(settings.routing, known, settings.directory / "routing.toml"))
    return engine, found


def convert_problem(problem: object) -> ConfigProblem:
    file = str(getattr(problem, "file", "?"))
    rule = getattr(problem, "rule", None)
    key = getattr(problem, "key", None)
    where = f"rule {rule}" + (f".{key}" if key else "") if rule else key
    return ConfigProblem(
        file, where, str(getattr(problem, "message", problem)), getattr(problem, "line", None)
    )


def load_runtime(
    config_dir: Path,
    generation: int = 1,
    *,
    with_classifier: bool = True,
    imported_accounts: Sequence[Account] | None = None,
) -> Runtime:
    """Everything reloadable, validated. `imported_accounts`: customers imported into the
    database (`gateway customers import`), merged after customers.toml's."""
    settings = load(config_dir)
    engine: Engine | None = None
    if with_classifier:
        engine, problems = classifier_problems(settings)
        if problems:
            raise ConfigError(problems)
    g = settings.gateway
    own = tuple(a.lower() for a in (*g.smtp.recipients, g.outbound.from_address) if a)
    calendars = build_calendars(settings.calendars)
    plans = Plans.build(settings.plans)
    router = build_router(
        settings.routing,
        [p.name for p in plans.ordered],
        settings.severity.levels,
        calendars,
    )
    return Runtime(
        settings=settings,
        directory=_directory(settings, imported_accounts or ()),
        engine=engine,
        policy=Policy(
            default_queue=settings.routing.default_queue,
            automated=g.automated,
            plans=plans,
            severity=settings.severity,
            calendars=calendars,
            router=router,
            emergency=settings.emergency,
        ),
        dkim_resolver=dns_txt if settings.emergency.dkim_check else None,
        persist=PersistContext(
            templates=settings.templates,
            company=g.outbound.from_name.removesuffix(" Support") or "Support",
            mail_domain=g.gateway.mail_domain,
            own_addresses=own,
            own_domains=tuple(d.lower() for d in (*g.smtp.domains, g.gateway.mail_domain)),
            per_recipient_limit=g.outbound.per_recipient_limit,
            per_recipient_window=timedelta(minutes=g.outbound.per_recipient_window_minutes),
            levels=settings.severity.levels,
            instance=g.gateway.instance,
        ),
        generation=generation,
    )


def _directory(settings: Settings, imported_accounts: Sequence[Account]) -> Directory:
    """customers.toml's accounts, then those imported into the database."""
    accounts = tuple(settings.customers.account) + tuple(imported_accounts)
    return Directory.build(CustomersFile(account=accounts), settings.plans)


def with_imported_accounts(runtime: Runtime, imported_accounts: Sequence[Account]) -> Runtime:
    """`runtime` with the customers imported into the database added: what load_runtime would
    build from the same files, without reading them or building the classifier again (a
    worker's start, once its database is up)."""
    return dataclasses.replace(runtime,
                               directory=_directory(runtime.settings, imported_accounts))


RESTART_ONLY = ("smtp", "storage", "webhooks", "api", "gateway", "workers")
# Keys of those sections that a reload applies at once, so the log must not say "restart" for
# them (issue 17 item 10): the API reads its tokens, and the Twilio webhooks and the SMS sender
# read every [webhooks] key but the listener's own, from the current Runtime on every request.
APPLIED_AT_ONCE = {
    "api": frozenset({"tokens"}),
    "webhooks": frozenset(
        f.name
        for f in dataclasses.fields(WebhooksSection)
        if f.name not in {"enabled", "host", "port"}
    ),
}


def changed_keys(old: object, new: object, section: str) -> tuple[list[str], list[str]]:
    """The keys of `[section]` that differ between two gateway.toml values: (in effect now,
    after a restart)."""
    live = APPLIED_AT_ONCE.get(section, frozenset())
    old_section, new_section = getattr(old, section), getattr(new, section)
    changed = [
        f.name
        for f in dataclasses.fields(old_section)
        if getattr(old_section, f.name) != getattr(new_section, f.name)
    ]
    return [k for k in changed if k in live], [k for k in changed if k not in live]


class RuntimeBox:
    """Holds the current Runtime. Readers take `box.current` once per message."""

    def __init__(
        self,
        config_dir: Path,
        runtime: Runtime,
        imported_accounts: Callable[[], Sequence[Account]] | None = None,
    ) -> None:
        self.config_dir = config_dir
        self.current = runtime
        # Reads customers imported into the database; re-read on every reload.
        self.imported_accounts = imported_accounts
        self.last_error: str | None = None
        self._lock = threading.Lock()

    def reload(self) -> bool:
        """Re-read everything; swap on success, keep the old Runtime and say why on failure."""
        with self._lock:
            old = self.current
            try:
                accounts = self.imported_accounts() if self.imported_accounts else None
                new = load_runtime(self.config_dir, old.generation + 1, imported_accounts=accounts)
            except ConfigError as exc:
                self.last_error = str(exc)
                log.error("reload rejected, keeping the running config:\n%s", exc)
                return False
            except Exception as exc:  # a reload must never take the daemon down
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("reload failed, keeping the running config")
                return False
            for section in RESTART_ONLY:
                now, later = changed_keys(old.settings.gateway, new.settings.gateway, section)
                if now:
                    log.info(
                        "[%s] %s changed in gateway.toml: in effect now", section, ", ".join(now)
                    )
                if later:
                    log.warning(
                        "[%s] %s changed in gateway.toml: takes effect after a restart",
                        section,
                        ", ".join(later),
                    )
            if (
                new.settings.gateway.webhooks.insecure_skip_signature
                and not old.settings.gateway.webhooks.insecure_skip_signature
            ):
                # As loud as at start: a reload must not open the webhooks quietly.
                log.critical(INSECURE_WEBHOOKS_WARNING)
            self.current = new
            self.last_error = None
            log.info("config reloaded (generation %d)", new.generation)
            return True
