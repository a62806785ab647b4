"""`gateway classify`, `train`, `evaluate` and `explain`: the classifier and the whole decision for
a message, from a terminal. Creates no ticket; may install the default model.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway import clock as business_clock
from gateway.cli.common import (
    open_db_session,
)
from gateway.config.errors import ConfigError
from gateway.config.loader import Settings, load_lenient


def cmd_classify(args: argparse.Namespace) -> int:
    """The verdict for a message, creating nothing (how an admin tests a rule)."""

    from gateway.explain import CLI_CHANNELS, as_spooled
    from gateway.intake.spool import Envelope
    from gateway.service.runtime import load_runtime
    from gateway.stages.classify import classify
    from gateway.stages.identify import identify
    from gateway.stages.parse import parse

    runtime = load_runtime(Path(args.config))
    channel = CLI_CHANNELS[args.channel]
    raw = as_spooled(_read_file(args.file), channel)  # plain text or the spooled JSON form
    envelope = Envelope(channel=channel, received_at=business_clock.now())
    message = parse(raw, envelope, "classify", runtime.settings.gateway.limits.max_attachment_bytes)
    customer = identify(message, runtime.directory)
    verdict = classify(message, customer, runtime.engine, runtime.settings.severity.default)
    if args.json:
        print(json.dumps(verdict.to_json(), indent=2))
    else:
        print(verdict.explain())
    return 0


def _read_file(name: str) -> bytes:
    return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()


def _labels(settings: Settings) -> list[Any]:
    """Agents' severity corrections, as training examples."""
    from sqlalchemy import select

    from classifiers.types import LabelledExample
    from gateway.stages.classify import channel_kind
    from gateway.storage.models import SeverityLabel

    with open_db_session(settings) as session:
        rows = session.execute(select(SeverityLabel).order_by(SeverityLabel.id)).scalars()
        latest: dict[int, SeverityLabel] = {}
        for row in rows:  # the last correction of a ticket is its label
            latest[row.ticket_id] = row
    return [
        LabelledExample(
            subject=r.subject, body=r.text, level=r.level, channel=channel_kind(r.channel)
        )
        for r in latest.values()
    ]


def _classifier_settings(settings: Settings) -> Any:
    from classifiers.settings import parse_classifier_table

    csettings, problems = parse_classifier_table(
        settings.severity.classifier, settings.severity.levels, "severity.toml"
    )
    if csettings is None:
        from gateway.service.runtime import convert_problem

        raise ConfigError([convert_problem(p) for p in problems])
    return csettings


def cmd_train(args: argparse.Namespace) -> int:
    from classifiers.training import train
    from gateway.service.runtime import model_dir

    settings = load_lenient(Path(args.config))[0]
    labels = [] if args.no_labels else _labels(settings)
    print(f"training on the shipped corpus plus {len(labels)} agent label(s)")
    report = train(
        model_dir(settings),
        labels,
        settings=_classifier_settings(settings),
        force=args.force,
        out=sys.stdout,
    )
    print(("installed " if report.installed else "not installed: ") + report.reason)
    if report.installed:
        print("run `gateway reload` to make the running daemon use it")
    return 0 if report.installed or not args.force else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a labelled file (--data), and/or the three honest evaluations (--honest, or no
    --data): the dev set, leave-one-domain-out and the shipped eval.jsonl, per channel."""
    from classifiers.evaluation import LODO_FOLDS, evaluate, honest
    from gateway.service.runtime import model_dir

    settings = load_lenient(Path(args.config))[0]
    csettings = _classifier_settings(settings)
    if args.data:
        evaluate(
            model_dir(settings),
            Path(args.data),
            sys.stdout,
            rules_dir=None if args.model_only else settings.rules_dir,
            settings=csettings,
        )
    if args.honest or not args.data:
        if args.model_only:
            print("--model-only applies to --data; the honest evaluations score the whole engine",
                  file=sys.stderr)
        try:
            honest(
                sys.stdout,
                rules_dir=settings.rules_dir,
                settings=csettings,
                model_dir=model_dir(settings),
                folds=args.folds or LODO_FOLDS,
            )
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


def cmd_explain(args: argparse.Namespace) -> int:

    from gateway.explain import CLI_CHANNELS, as_spooled, explain
    from gateway.service.runtime import load_runtime
    from gateway.storage.customers import load_accounts
    from gateway.storage.db import is_sqlite, make_engine, session_factory

    settings = load_lenient(Path(args.config))[0]
    url = settings.database_url
    sessions = None
    accounts = None
    db_file = Path(url.removeprefix("sqlite:///")) if is_sqlite(url) else None
    if db_file is None or db_file.exists():
        try:
            sessions = session_factory(make_engine(url))
            accounts = load_accounts(sessions)
        except Exception as exc:  # explain works without a database; it says so
            print(
                f"note: database not readable ({type(exc).__name__}); threading and "
                "imported customers not checked",
                file=sys.stderr,
            )
            sessions = None
    runtime = load_runtime(Path(args.config), imported_accounts=accounts)
    at = datetime.fromisoformat(args.at) if args.at else business_clock.now()
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    channel = CLI_CHANNELS[args.channel]
    raw = as_spooled(_read_file(args.file), channel)
    result = explain(runtime, raw, channel=channel, at=at, sender=args.sender, sessions=sessions)
    print("\n".join(result.lines()))
    return 0
