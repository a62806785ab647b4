"""What every operator's command shares: lenient settings, the spool and a database session
opened and closed for one command, and how a config problem is printed. Never holds business
rules.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config.errors import ConfigError

if TYPE_CHECKING:
    # Only a type here: the loader pulls in policy, routing and calendars, which `gateway
    # ingest` (it imports this module) never needs (issue 20 outcome 3).
    from gateway.config.loader import Settings

STATUSES = ("new", "open", "waiting", "resolved", "closed", "reopened")


def load_settings(args: argparse.Namespace) -> Settings:
    """Settings for operators' commands: only gateway.toml must be valid (see load_lenient)."""
    from gateway.config.loader import load_lenient

    settings, problems = load_lenient(Path(args.config))
    for problem in problems:
        print(f"warning: config problem (run check-config): {problem}", file=sys.stderr)
    return settings


@contextlib.contextmanager
def open_spool(settings: Settings) -> Iterator[Any]:
    """The configured spool for an operator's command, closed afterwards."""
    from gateway.intake.spool import Spool

    spool = Spool(settings.spool_dir)
    try:
        yield spool
    finally:
        spool.close()


def print_config_error(exc: ConfigError) -> None:
    print(f"config is invalid ({len(exc.problems)} problem(s)):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def open_db_session(settings: Settings, *, write: bool = False) -> Any:
    from gateway.storage.db import open_session

    return open_session(settings.database_url, write=write)


# How many rows a listing (`tickets`, `intakes`) shows unless --all or --limit says otherwise.
DEFAULT_PAGE = 100


def print_page_note(noun: str, offset: int, shown: int, total: int, limit: int | None) -> None:
    """On stderr, for a listing cut to a page or started past the first: which rows these are
    and how to ask for the next page (issue 17 item 11: a cut list always says so)."""
    shown_to = offset + shown
    if shown_to >= total and not offset:
        return
    note = f"{noun} {offset + 1 if shown else offset}-{shown_to} of {total}"
    if shown_to < total:
        note += f"; next page: --offset {shown_to} --limit {limit}, or --all for every one"
    print(note, file=sys.stderr)


def missing_database(settings: Settings) -> Path | None:
    """The SQLite file a read-only command found missing (it is not created), else None."""
    from gateway.storage.db import sqlite_file_missing

    return sqlite_file_missing(settings.database_url)
