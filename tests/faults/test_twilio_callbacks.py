"""Twilio's voicemail callbacks out of order, all at once and twice, against the real daemon
with two worker processes on PostgreSQL: transcription before recording, recording before the
keypress, every order there is, all three at the same moment, each callback delivered again (an
exact replay, as Twilio retries), calls in parallel. Each call is one ticket with all three
events on it, the transcript as its subject, the keypress recorded once, and every replay
recorded as a duplicate (DESIGN promise 2). A burst of texts from one phone is one ticket.

Regression: two workers used to open a ticket each for events of one call (or texts of one
phone) processed at the same moment; gateway/pipeline.py now serialises them per call / phone.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults import rig
from tests.faults.ledger import FaultRow, query
from tests.helpers import DaemonProcess, wait_for
from tests.twilio.conftest import (
    GROWTH_PHONE,
    OUR_NUMBER,
    SID,
    FakeTwilioApi,
    path_of,
    signed_post,
    sms_params,
    twiml,
)

VOICE = "twilio voicemail callbacks out of order / at once, each twice"
BURST = "twilio sms burst from one phone, two workers"
SMS_BURST = 24
SMS_MARKER = "fx-burst"
EVENTS = ("gather", "recording", "transcription")


@dataclass(frozen=True)
class Call:
    sid: str
    order: tuple[str, ...]  # the order of the callbacks; () = all three at once

    @property
    def recording_sid(self) -> str:
        return "RE" + self.sid.removeprefix("CA")

    @property
    def transcript(self) -> str:
        return f"Our network is down again {self.sid}"


def _place(port: int, call: Call, answers: dict[str, list[tuple[int, str]]]) -> None:
    """The call as Twilio makes it: the voice webhook, then the callbacks in `call.order`, then
    each callback again in the reverse order (an exact replay: same form, same signature)."""
    base = {"CallSid": call.sid, "AccountSid": SID, "From": GROWTH_PHONE, "To": OUR_NUMBER}
    status, body = signed_post(port, "/twilio/voice", base)
    assert status == 200, body
    voice = twiml(body)
    gather, record = voice.find("Gather"), voice.find("Record")
    assert gather is not None and record is not None
    recording_url = f"https://api.twilio.com/Recordings/{call.recording_sid}"
    common = {"CallSid": call.sid, "AccountSid": SID, "RecordingSid": call.recording_sid}
    requests = {
        "gather": (path_of(gather.get("action", "")), {**base, "Digits": "1"}),
        "recording": (
            path_of(record.get("recordingStatusCallback", "")),
            {
                **common,
                "RecordingUrl": recording_url,
                "RecordingDuration": "35",
                "RecordingStatus": "completed",
            },
        ),
        "transcription": (
            path_of(record.get("transcribeCallback", "")),
            {
                **common,
                "From": GROWTH_PHONE,
                "To": OUR_NUMBER,
                "TranscriptionSid": "TR" + call.sid,
                "TranscriptionText": call.transcript,
                "TranscriptionStatus": "completed",
                "RecordingUrl": recording_url,
            },
        ),
    }

    def post(event: str) -> None:
        path, params = requests[event]
        answers[f"{call.sid}:{event}"].append(signed_post(port, path, params))

    if call.order:
        for event in (*call.order, *reversed(call.order)):
            post(event)
        return
    for _ in range(2):  # all three at once (as Twilio may), then all three again
        threads = [threading.Thread(target=post, args=(event,)) for event in EVENTS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)


def _intakes(url: str) -> list[tuple[str, str, int | None]]:
    """(dedup key, outcome, ticket id) of every Twilio voice intake."""
    sql = "SELECT dedup_key, outcome, ticket_id FROM intakes WHERE channel = 'twilio-voice'"
    return [(str(k), str(o), t) for k, o, t in query(url, sql)]


def _sms_burst(port: int, n: int) -> list[int]:
    """n texts from one phone at once (no NEW): they must thread into one ticket."""
    statuses: list[int] = []

    def text_one(i: int) -> None:
        body = f"Printer still jammed, attempt {i} {SMS_MARKER}"
        statuses.append(signed_post(port, "/twilio/sms", sms_params(body, f"SMfx{i:030d}"))[0])

    threads = [threading.Thread(target=text_one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return statuses


@pytest.mark.slow
def test_voicemail_callbacks_in_any_order_at_once_and_replayed_make_one_ticket_per_call(
    pg_url: str,
    make_config: Callable[..., Path],
    fake_twilio: FakeTwilioApi,
    daemons: list[DaemonProcess],
    record_faults: Callable[[list[FaultRow]], None],
) -> None:
    # Two workers taking one entry at a time: events of one call land in different workers'
    # transactions as often as they can (before the fix, 19 calls of 20 got two tickets).
    config = rig.fault_config(
        make_config,
        relay_port=None,
        twilio_api=fake_twilio.url,
        overrides={"storage__url": pg_url, "workers__processes": 2, "workers__batch_size": 1},
    )
    _, port = rig.ports_of(config)
    daemon = DaemonProcess(config, env=rig.daemon_env())
    daemons.append(daemon.start())
    orders: list[tuple[str, ...]] = [*itertools.permutations(EVENTS), *[()] * 6]
    calls = [Call(f"CAfx{n:030d}", order) for n, order in enumerate(orders, 1)]
    answers: dict[str, list[tuple[int, str]]] = defaultdict(list)
    errors: list[BaseException] = []

    def place(call: Call) -> None:
        try:
            _place(port, call, answers)
        except BaseException as exc:
            errors.append(exc)

    # All calls at once, and a burst of texts from one phone meanwhile.
    threads = [threading.Thread(target=place, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    texts = _sms_burst(port, SMS_BURST)
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert texts == [200] * SMS_BURST
    assert len(answers) == 3 * len(calls)
    for key, pair in answers.items():
        (original, replay) = pair
        assert original[0] == 200 and replay == original, key  # a replay: the same answer

    wait_for(lambda: len(_intakes(pg_url)) == 6 * len(calls), timeout=120, interval=0.3)
    wait_for(lambda: rig.spool_depth(daemon) == 0, timeout=60, interval=0.3)
    daemon.stop()

    by_call: dict[str, list[tuple[str, str, int | None]]] = defaultdict(list)
    for key, outcome, ticket in _intakes(pg_url):
        call_id = key.rsplit(":", 1)[1]
        by_call["CA" + call_id.removeprefix("RE").removeprefix("CA")].append((key, outcome, ticket))
    subjects = {i: str(s) for i, s in query(pg_url, "SELECT id, subject FROM tickets")}
    pressed = "SELECT ticket_id FROM decisions WHERE code = 'emergency-keypress'"
    keypresses = Counter(t for (t,) in query(pg_url, pressed))
    recordings = [
        str(t)
        for (t,) in query(
            pg_url, "SELECT text FROM messages WHERE header_message_id LIKE 'recording.%'"
        )
    ]
    lost = duplicated = ticketed = 0
    problems = []
    for call in calls:
        found = by_call[call.sid]
        first = [f for f in found if f[1] != "duplicate"]
        tickets = {t for _, _, t in found}
        ticketed += bool(tickets - {None})
        if len(tickets) > 1 or len(first) > 3:
            duplicated += 1
            problems.append(f"{call.order or 'at once'}: {found}")
        if len(first) < 3 or None in tickets:
            lost += 1
            problems.append(f"{call.order or 'at once'}: {found}")
        for ticket in tickets - {None}:
            if subjects.get(ticket) != f"Voicemail: {call.transcript}":
                problems.append(f"{call.order}: subject {subjects.get(ticket)!r}")
            if keypresses[ticket] != 1:
                problems.append(f"{call.order}: {keypresses[ticket]} keypress decisions")
    transcribed = sum("Transcription: received" in t for t in recordings)
    sms_tickets = sum(SMS_MARKER in subject for subject in subjects.values())
    sms_intakes = query(
        pg_url, "SELECT outcome, count(*) FROM intakes WHERE channel = 'twilio-sms' GROUP BY 1"
    )
    record_faults(
        [
            FaultRow(
                fault=VOICE,
                sent=len(calls),
                acknowledged=len(calls),
                retried=0,
                unacknowledged=0,
                ticketed=ticketed,
                duplicated=duplicated,
                lost=lost,
                note=(
                    f"{len(calls)} calls x 3 callbacks, in all 6 orders and all at once, "
                    "two workers: each callback replayed and recorded as a duplicate, one "
                    "keypress decision and the transcript as subject per ticket"
                ),
            ),
            FaultRow(
                fault=BURST,
                sent=SMS_BURST,
                acknowledged=texts.count(200),
                retried=0,
                unacknowledged=SMS_BURST - texts.count(200),
                ticketed=SMS_BURST if sms_tickets else 0,
                # Texts from one phone thread into one ticket: a second ticket is a duplicate.
                duplicated=max(0, sms_tickets - 1),
                lost=SMS_BURST - sum(n for outcome, n in sms_intakes if outcome != "duplicate"),
                note=f"one ticket, the rest follow-ups: {dict(sms_intakes)}",
            ),
        ]
    )
    assert not problems, problems
    assert transcribed == len(calls)  # every recording knows its transcript, whatever came first
    assert sms_tickets == 1
