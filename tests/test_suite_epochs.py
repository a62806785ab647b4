"""The suite's clock switch: GATEWAY_TEST_EPOCH starts every test at its instant, and several
instants run every test once at each, in one session (tests/conftest.py; .ci/test uses it for the
time-dependent tests at four named instants)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway import clock

ROOT = Path(__file__).resolve().parents[1]
SATURDAY_NIGHT = "2026-12-12T08:00:00Z"
YEAR_END = "2026-12-31T23:59:30Z"


def test_a_test_starts_at_its_suite_instant_or_at_the_wall_clock(suite_instant: str | None) -> None:
    start = clock.parse_instant(suite_instant) if suite_instant else datetime.now(UTC)
    assert abs(clock.now() - start) < timedelta(minutes=1)


def test_several_instants_run_each_test_once_at_each_in_one_session() -> None:
    env = {**os.environ, "GATEWAY_TEST_EPOCH": f"{SATURDAY_NIGHT}, {YEAR_END}"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA",
         f"{Path(__file__).relative_to(ROOT)}::test_a_test_starts_at_its_suite_instant_or_at_the_wall_clock"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    passed = sorted(line for line in run.stdout.splitlines() if line.startswith("PASSED"))
    assert [line.rsplit("@", 1)[1].rstrip("]") for line in passed] == [SATURDAY_NIGHT, YEAR_END]
    assert f"GATEWAY_TEST_EPOCH={SATURDAY_NIGHT} {YEAR_END}" in run.stdout


def test_an_instant_that_does_not_parse_stops_the_session_before_any_test() -> None:
    env = {**os.environ, "GATEWAY_TEST_EPOCH": f"{SATURDAY_NIGHT} next-tuesday"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         str(Path(__file__).relative_to(ROOT))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode != 0
    assert "GATEWAY_TEST_EPOCH" in run.stdout + run.stderr
    assert " passed" not in run.stdout
