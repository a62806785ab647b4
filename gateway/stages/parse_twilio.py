"""Stage 1 for Twilio events: a spooled webhook (JSON) -> ParsedMessage. Never raises.

Owns how an SMS, a call, a keypress, a recording and a transcription read as a message: the
sender is the caller's E.164 number, MMS media stay *references* (URLs in the text and the
headers, never fetched here: parse makes no network calls), and every event of one call carries
the same thread identity (`<kind>.<CallSid>@twilio.invalid` as its Message-ID, its siblings'
ids as In-Reply-To) so the thread stage joins them into one ticket whatever their order.
The spool payload is written by `channels/twilio.py: spool_payload`. Every voice event but a
transcription with text is the gateway's own note (`ParsedMessage.gateway_text`): only the
caller's transcribed words are classified.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Final

from gateway.intake.spool import Envelope
from gateway.message import TRANSCRIPTION_PENDING_LINE, TRANSCRIPTION_UNAVAILABLE, ParsedMessage
from gateway.phone import normalise_phone

VOICE_EVENTS: Final = ("call", "gather", "recording", "transcription")
# Twilio transcribes recordings of 2 to 120 seconds only (<Record transcribe> docs).
TRANSCRIBE_MIN_SECONDS: Final = 2
TRANSCRIBE_MAX_SECONDS: Final = 120


def call_message_id(kind: str, call_sid: str) -> str:
    """The Message-ID a voice event of one call is stored under (the call's thread identity)."""
    return f"{kind}.{call_sid.lower()}@twilio.invalid"


def _first_line(text: str, limit: int = 60) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    # NUL never reaches stored text (PostgreSQL refuses it: the event would be quarantined).
    return {str(k): str(v).replace("\x00", "") for k, v in value.items()}


def _int(value: str | None) -> int:
    """A count or duration as Twilio sends it; anything that is no number is 0, so an odd
    value never makes parse raise (tests/hostile/test_twilio_abuse.py)."""
    try:
        return int(float(value or 0))
    except (ValueError, OverflowError):
        return 0


def parse_twilio(raw: bytes, envelope: Envelope, spool_id: str) -> ParsedMessage:
    defects: list[str] = []
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except (UnicodeDecodeError, ValueError):
        data = {}
        defects.append("TwilioPayloadUnreadable")
    event = str(data.get("event", "")) or "unknown"
    params = _str_map(data.get("params"))
    query = _str_map(data.get("query"))
    caller = params.get("From") or query.get("caller") or envelope.mail_from or ""
    sender = normalise_phone(caller) if caller else ""
    headers: list[tuple[str, str]] = [("x-twilio-event", event)]
    for name in ("MessageSid", "CallSid", "RecordingSid", "Digits", "To", "AccountSid"):
        if params.get(name):
            headers.append((f"x-twilio-{name.lower()}", params[name]))
    if event == "gather" and query.get("at"):
        headers.append(("x-twilio-prompted-at", query["at"]))
    if event == "gather" and query.get("prompt"):
        # The exact words the caller heard before pressing (the billing evidence quotes them).
        headers.append(("x-twilio-prompt", query["prompt"]))
    message_id: str | None = None
    in_reply_to: tuple[str, ...] = ()
    gateway_text = ""
    if event == "sms":
        subject, text = _sms(params, headers)
    elif event in VOICE_EVENTS:
        call_sid = params.get("CallSid", "")
        if call_sid:
            message_id = call_message_id(event, call_sid)
            in_reply_to = tuple(call_message_id(k, call_sid) for k in VOICE_EVENTS if k != event)
        else:
            defects.append("TwilioNoCallSid")
        said = data.get("said")
        said = said if isinstance(said, str) else ""
        subject, text = _voice(event, sender, params, envelope, said)
        if event != "transcription" or text.startswith(TRANSCRIPTION_UNAVAILABLE):
            # Our own note about the call, not the caller's words (issue 18 item 2).
            gateway_text = f"the gateway's note on a call's {event} event"
    else:
        subject, text = "", json.dumps(params, sort_keys=True)
        defects.append("TwilioUnknownEvent")
    return ParsedMessage(
        spool_id=spool_id,
        channel=envelope.channel,
        received_at=envelope.received_at,
        envelope_from=sender,
        recipients=envelope.recipients or ((params["To"],) if params.get("To") else ()),
        message_id=message_id,
        in_reply_to=in_reply_to,
        references=(),
        sender=sender,
        sender_name="",
        subject=subject[:998],
        date=envelope.received_at,
        text=text,
        headers=tuple(headers),
        attachments=(),
        raw_sha256=hashlib.sha256(raw).hexdigest(),
        raw_size=len(raw),
        dedup_key=envelope.channel_key or f"twilio:{event}:{hashlib.sha256(raw).hexdigest()[:40]}",
        defects=tuple(defects),
        gateway_text=gateway_text,
    )


def _sms(params: Mapping[str, str], headers: list[tuple[str, str]]) -> tuple[str, str]:
    body = params.get("Body", "")
    media: list[str] = []
    for i in range(min(_int(params.get("NumMedia")), 10)):
        url = params.get(f"MediaUrl{i}")
        if url:
            media.append(f"{url} ({params.get(f'MediaContentType{i}', 'unknown type')})")
            headers.append(("x-twilio-media-url", url))
    text = body
    if media:
        text += "\n\nMMS media (kept at Twilio, not downloaded):\n" + "\n".join(media)
    return _first_line(body), text


def _voice(
    event: str, caller: str, params: Mapping[str, str], envelope: Envelope, said: str = ""
) -> tuple[str, str]:
    call_sid = params.get("CallSid", "?")
    at = envelope.received_at.isoformat().replace("+00:00", "Z")
    if event == "call":
        heard = (
            f'the caller heard "{said.replace(chr(0), "")}" and the call ended.'
            if said
            else "the caller was told which channels the plan includes and the call ended."
        )
        return (
            f"Phone call from {caller}",
            f"Call {call_sid} from {caller} at {at}; the plan does not include voice, so {heard}",
        )
    if event == "gather":
        digit = params.get("Digits", "")
        meaning = {"1": "emergency", "2": "normal priority"}.get(digit, "no valid choice")
        return (
            f"Voicemail from {caller}",
            f"Caller {caller} pressed {digit or 'nothing'} ({meaning}) on call {call_sid} at "
            f"{at}, after hearing that emergency support is billed per incident.",
        )
    if event == "recording":
        url = params.get("RecordingUrl", "")
        duration = _int(params.get("RecordingDuration"))
        status = params.get("RecordingStatus", "completed")
        lines = [
            f"Voicemail from {caller}, {duration} s (call {call_sid}, recording "
            f"{params.get('RecordingSid', '?')}, status {status}).",
            f"Recording: {url}",
        ]
        if TRANSCRIBE_MIN_SECONDS <= duration <= TRANSCRIBE_MAX_SECONDS and status == "completed":
            lines.append(TRANSCRIPTION_PENDING_LINE)
        else:
            lines.append(
                f"{TRANSCRIPTION_UNAVAILABLE}: a {duration} s recording is outside Twilio's "
                f"{TRANSCRIBE_MIN_SECONDS}-{TRANSCRIBE_MAX_SECONDS} s transcription range."
            )
        return f"Voicemail from {caller}", "\n".join(lines)
    # transcription
    text = params.get("TranscriptionText", "").strip()
    status = params.get("TranscriptionStatus", "completed")
    if status == "completed" and text:
        return f"Voicemail: {_first_line(text)}", text
    return (
        f"Voicemail from {caller}",
        f"{TRANSCRIPTION_UNAVAILABLE}: Twilio reported {status!r}.\n"
        f"Recording: {params.get('RecordingUrl', '')}",
    )
