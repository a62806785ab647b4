"""Every file of the shared real-world mail corpus through the real CLI: `gateway ingest FILE...`
then one `gateway worker --drain`. Nothing may crash, hang or vanish: each file is refused with a
reason (exit 65) or ends as exactly one recorded outcome, and no message comes near the
per-message time limit. Prints a summary table (run with -s to see it)."""

from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.config.loader import load
from gateway.intake.spool import Spool
from gateway.storage.db import make_engine, session_factory
from gateway.storage.models import Intake
from tests.helpers import gateway_cli

BATCH = 500
FINAL = ("ticket", "follow-up", "duplicate", "discard")
_QUEUED = re.compile(r"^(?P<path>/.+): queued as (?P<id>\S+)$")
_REFUSED = re.compile(r"^(?P<path>/.+?): (?P<reason>.+)$")
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
# One line per finished attempt (worker.step): an outcome, a failed attempt or a quarantine.
_ATTEMPT_END = re.compile(r" gateway\.worker: (\S+ \S+ -> |attempt failed |quarantined )")


def group_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return "/".join(parts[:2]) if parts[0] == "spamassassin" else parts[0]


def attempt_seconds(log: str) -> list[float]:
    """Upper bounds of each attempt's duration: the gap since the previous attempt ended."""
    times = []
    for line in log.splitlines():
        m = _LOG_TIME.match(line)
        if m and (_ATTEMPT_END.search(line) or "alembic" in line):
            times.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"))
    return [(b - a).total_seconds() for a, b in itertools.pairwise(times)]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_every_corpus_file_is_refused_clearly_or_ends_as_one_recorded_outcome(
    shared_mail: Path, make_config: Callable[..., Path]
) -> None:
    # fsync off: this test is about parsing and the pipeline on real mail, not durability (the
    # spool tests cover that); it saves a minute of CI.
    config = make_config(spool__fsync=False)
    settings = load(config)
    files = sorted(p for p in shared_mail.rglob("*") if p.is_file())
    assert len(files) > 6000

    # ---- ingest, 500 files per process ----
    queued: dict[str, Path] = {}  # spool id -> file
    refused: dict[Path, str] = {}  # file -> reason
    for start in range(0, len(files), BATCH):
        batch = files[start : start + BATCH]
        result = gateway_cli(config, "ingest", *map(str, batch), timeout=600)
        out, err = result.stdout.decode(), result.stderr.decode()
        # Several files: 0 when each was spooled or refused with its reason (issue 19 item 10).
        assert result.returncode == 0, err[-3000:]
        assert "Traceback" not in err
        for line in out.splitlines():
            m = _QUEUED.match(line)
            assert m, line
            queued[m["id"]] = Path(m["path"])
        for line in err.splitlines():
            m = _REFUSED.match(line)
            assert m, line
            refused[Path(m["path"])] = m["reason"]
        assert len(out.splitlines()) + len(err.splitlines()) == len(batch)
    assert set(queued.values()) | set(refused) == set(files)
    assert not set(queued.values()) & set(refused)

    # ---- one drain ----
    drained = gateway_cli(config, "worker", "--drain", timeout=1200)
    log = drained.stderr.decode()
    assert drained.returncode == 0, log[-3000:]
    assert "Traceback" not in log

    # ---- where did each spooled message end? ----
    spool = Spool(settings.spool_dir)
    try:
        assert spool.depth() == 0
        quarantined = {r.id: r for r in spool.quarantined()}
    finally:
        spool.close()
    engine = make_engine(settings.database_url)
    try:
        with session_factory(engine)() as session:
            intakes = {i.spool_id: i for i in session.execute(select(Intake)).scalars()}
    finally:
        engine.dispose()
    assert set(intakes) | set(quarantined) == set(queued)
    assert not set(intakes) & set(quarantined)

    table: dict[str, Counter[str]] = defaultdict(Counter)
    for path, reason in refused.items():
        table[group_of(path, shared_mail)]["refused-65"] += 1
        assert reason.strip(), path
    for spool_id, intake in intakes.items():
        table[group_of(queued[spool_id], shared_mail)][intake.outcome] += 1
        assert intake.outcome in FINAL, (queued[spool_id], intake.outcome)
        assert intake.reason, queued[spool_id]
    for spool_id, record in quarantined.items():
        table[group_of(queued[spool_id], shared_mail)]["quarantine"] += 1
        assert record.error, queued[spool_id]

    columns = ["refused-65", *FINAL, "quarantine"]
    totals: Counter[str] = sum(table.values(), Counter())
    lines = [f"{'group':28}" + "".join(f"{c:>12}" for c in columns) + f"{'total':>8}"]
    for group in sorted(table):
        row = table[group]
        lines.append(
            f"{group:28}" + "".join(f"{row[c]:>12}" for c in columns) + f"{sum(row.values()):>8}"
        )
    lines.append(
        f"{'TOTAL':28}"
        + "".join(f"{totals[c]:>12}" for c in columns)
        + f"{sum(totals.values()):>8}"
    )
    slowest = max(attempt_seconds(log), default=0.0)
    print("\n" + "\n".join(lines))
    print(f"refused: {sorted(str(p.relative_to(shared_mail)) for p in refused)}")
    for spool_id, record in quarantined.items():
        print(f"quarantined {queued[spool_id]}: {record.stage}: {record.error[:200]}")
    print(f"slowest attempt <= {slowest:.2f}s; {drained.stdout.decode().strip()}")

    # ---- the promises ----
    assert sum(totals.values()) == len(files)
    assert not [r for r in quarantined.values() if r.stage == "timeout"]
    assert "at timeout" not in log
    limit = settings.gateway.limits.per_message_seconds
    assert slowest < limit, f"an attempt took up to {slowest:.1f}s (limit {limit}s)"
    # Real mail saved from a mailbox (mbox `From ` line first) is always a message.
    assert not [p for p in refused if p.relative_to(shared_mail).parts[0] == "spamassassin"]
    # What is not a message is refused, never spooled.
    for name in (
        "spamscope/tests/mails/mail_outlook_1",
        "spamscope/LICENSE.txt",
        "flanker/LICENSE",
    ):
        assert shared_mail / name in refused, name
