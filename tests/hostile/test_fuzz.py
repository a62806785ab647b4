"""Mutation fuzzing seeded from the real corpus (../shared/data/mail): byte flips, truncation,
duplicated headers, damaged MIME boundaries, swapped and bogus charsets, mixed CRLF/LF/CR, junk
bytes. Bounded and reproducible (hypothesis derandomized with a fixed example count; a seeded
generator for the CLI sample); pytest-timeout is the hang guard, never a speed assertion.

In-process, parse must never raise and must hand the database only what it can store. Through the
real CLI (`gateway ingest FILE...`, then `gateway worker --drain`) on SQLite and PostgreSQL, each
mutant is refused clearly (exit 65 with a reason) or ends as exactly one recorded outcome or a
quarantine with a reason — nothing crashes, hangs or vanishes."""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.loader import load
from gateway.intake.rawmail import looks_like_message
from gateway.intake.spool import Envelope, Spool
from gateway.stages.parse import parse
from tests.helpers import gateway_cli
from tests.hostile.kit import (
    assert_ended_clearly,
    corpus_seeds,
    endings,
    mutate,
    seeded_mutants,
)

MAX_ATTACHMENT = 30 * 1024 * 1024
ENVELOPE = Envelope(
    channel="smtp",
    received_at=datetime(2026, 11, 23, 15, 0, tzinfo=UTC),
    mail_from="fuzz@hostile.example",
    recipients=("support@example.com",),
)
_QUEUED = re.compile(r"^(?P<path>/.+): queued as (?P<id>\S+)$")
_REFUSED = re.compile(r"^(?P<path>/.+?): (?P<reason>.+)$")


@functools.cache
def seeds_from(shared_mail: Path) -> list[bytes]:
    return corpus_seeds(shared_mail)


def check_parsed(raw: bytes) -> None:
    """What the database and the outbox rely on, whatever the bytes."""
    looks_like_message(raw)
    message = parse(raw, ENVELOPE, "fuzz-1", MAX_ATTACHMENT)
    assert message.dedup_key.startswith(("email:", "email-nomid:"))
    assert len(message.dedup_key) <= 512  # intakes.dedup_key
    assert message.raw_size == len(raw)
    assert len(message.subject) <= 998
    for value in (message.subject, message.sender, message.sender_name, message.text):
        assert "\x00" not in value  # PostgreSQL TEXT refuses NUL
        value.encode("utf-8")  # no lone surrogates: every driver must be able to send it
    if message.message_id is not None:  # echoed as In-Reply-To: one token, no line break
        assert message.message_id and message.message_id.split() == [message.message_id]
    for att in message.attachments:
        assert att.filename not in ("", ".", "..")
        assert "/" not in att.filename and "\\" not in att.filename
        assert "\x00" not in att.filename and "\x00" not in att.content_type
        assert len(att.filename) <= 255


@pytest.mark.timeout(600)
@settings(
    max_examples=300,
    deadline=None,  # a loaded CI machine is not a bug; the pytest timeout catches hangs
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # the corpus path never changes between examples
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_parse_of_mutated_real_mail_never_raises_and_yields_storable_values(
    shared_mail: Path, data: st.DataObject
) -> None:
    seeds = seeds_from(shared_mail)
    seed = seeds[data.draw(st.integers(0, len(seeds) - 1), label="seed")]

    def pick(n: int) -> int:
        return data.draw(st.integers(0, max(0, n - 1)))

    raw = mutate(seed, pick, data.draw(st.integers(1, 4), label="rounds"))
    check_parsed(raw)


def test_the_fuzz_seeds_spread_over_the_corpus(shared_mail: Path) -> None:
    seeds = seeds_from(shared_mail)
    assert len(seeds) >= 30
    assert len(set(seeds)) == len(seeds)
    mutants = seeded_mutants(seeds, 50, seed=7)
    assert mutants == seeded_mutants(seeds, 50, seed=7)  # reproducible
    assert len({m for m in mutants} - set(seeds)) >= 45  # and actually mutated


@pytest.mark.timeout(600)
def test_mutants_through_ingest_and_the_worker_each_end_clearly(
    shared_mail: Path,
    make_config: Callable[..., Path],
    database_url: str,
    tmp_path: Path,
) -> None:
    mutants = seeded_mutants(seeds_from(shared_mail), 80, seed=2026)
    files = []
    for i, raw in enumerate(mutants):
        path = tmp_path / "mutants" / f"m{i:03d}.eml"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(raw)
        files.append(path)
    config = make_config(storage__url=database_url, spool__fsync=False)
    settings_ = load(config)

    result = gateway_cli(config, "ingest", *map(str, files), timeout=300)
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode in (0, 65), err[-3000:]
    assert "Traceback" not in err
    queued = {m["id"]: Path(m["path"]) for line in out.splitlines() if (m := _QUEUED.match(line))}
    refused = {
        Path(m["path"]): m["reason"] for line in err.splitlines() if (m := _REFUSED.match(line))
    }
    assert len(queued) + len(refused) == len(files)
    assert set(queued.values()) | set(refused) == set(files)
    assert all(reason.strip() for reason in refused.values())

    drained = gateway_cli(config, "worker", "--drain", timeout=300)
    log = drained.stderr.decode()
    assert drained.returncode == 0, log[-3000:]
    assert "Traceback" not in log
    spool = Spool(settings_.spool_dir)
    try:
        assert spool.depth() == 0
    finally:
        spool.close()
    ended = endings(settings_.database_url, settings_.spool_dir)
    for spool_id, path in queued.items():
        assert spool_id in ended, f"{path.name} was spooled and never ended"
        assert_ended_clearly(ended[spool_id], path.name)
    table = Counter(ended[i].outcome for i in queued)
    table["refused-65"] = len(refused)
    print(f"\n{len(files)} mutants: {dict(sorted(table.items()))}")
    quarantined = {
        p.name: ended[i].reason for i, p in queued.items() if ended[i].outcome == "quarantine"
    }
    assert quarantined == {}, quarantined  # the bounded run finds no crash
