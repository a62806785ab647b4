"""Health and metrics over real HTTP from the running daemon: /healthz, /readyz, /metrics with
the right values after a scripted scenario."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.helpers import DaemonProcess, make_email, wait_for


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
        if got == want:
            return float(m.group(3))
    return float("nan")


def test_metrics_and_health_tell_the_truth_after_a_scripted_scenario(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    daemon = DaemonProcess(config).start()
    try:
        base = f"http://{daemon.status()['listeners']['api']}"
        assert get(base + "/healthz") == (200, "ok\n")
        status, body = get(base + "/readyz")
        assert status == 200, body
        assert json.loads(body)["checks"]["database"] == "ok"
        # Scenario: two new tickets, one duplicate, one auto-reply.
        daemon.send(make_email(subject="Printer down", message_id="<m1@x>"))
        daemon.send(make_email(subject="Printer down", message_id="<m1@x>"))
        daemon.send(make_email(subject="Scanner", body="Scanner is slow.", message_id="<m2@x>"))
        daemon.send(make_email(subject="Away", message_id="<m3@x>", Auto_Submitted="auto-replied"))
        wait_for(lambda: sum(w["processed"] for w in daemon.worker_status()) >= 4)

        def scrape() -> str:
            return get(base + "/metrics")[1]

        text = wait_for(
            lambda: (
                (t := scrape())
                and metric(t, "gateway_intake_total", channel="smtp", outcome="ticket") == 2
                and t
            )
        )
        assert metric(text, "gateway_intake_total", channel="smtp", outcome="duplicate") == 1
        assert metric(text, "gateway_intake_total", channel="smtp", outcome="discard") == 1
        assert metric(text, "gateway_spool_depth") == 0
        assert metric(text, "gateway_database_up") == 1
        assert metric(text, "gateway_channel_accepted_total", channel="smtp") == 4
        assert metric(text, "gateway_outbox", status="pending") == 2  # two acknowledgements
        assert "gateway_stage_seconds_total" in text
        # All four messages pass classify (the duplicate and the auto-reply too): a real
        # histogram, one observation a message (the worker's status lags by up to a second).
        text = wait_for(
            lambda: (
                (t := scrape())
                and metric(t, "gateway_stage_latency_seconds_count", stage="classify") == 4
                and t
            )
        )
        assert (
            metric(text, "gateway_stage_latency_seconds_bucket", stage="classify", le="+Inf") == 4
        )
    finally:
        daemon.stop()
