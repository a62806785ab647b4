"""The webhooks read Twilio's urlencoded forms without Starlette's form parser, and must read
every body exactly as it does: the signature is checked over these fields, so a field read
differently would refuse a genuine request or sign a different message than the one spooled."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from channels.twilio import FORM, form_fields, sms_twiml
from tests.twilio.conftest import twiml

PIECES = st.lists(st.sampled_from(
    ["Body", "MessageSid", "a", "=", "==", "&", "&&", ";", "+", "%", "%2", "%20", "%2B", "%26",
     "%3D", "%E2%9C%93", "%C3%28", "%zz", "%00", "\xe9", "\x00", " ", "\n", "SM123", "+1617"]),
    max_size=25).map(lambda parts: "".join(parts).encode("latin-1"))


def request(body: bytes, content_type: str) -> Request:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/twilio/sms", "query_string": b"",
             "headers": [(b"content-type", content_type.encode())]}
    return Request(scope, receive)


async def starlettes_reading(body: bytes, content_type: str) -> dict[str, str]:
    form = await request(body, content_type).form()
    return {k: v for k, v in form.multi_items() if isinstance(v, str)}


@settings(max_examples=500, deadline=None)
@given(PIECES, st.sampled_from([FORM, "Application/X-WWW-Form-Urlencoded; charset=utf-8"]))
def test_an_urlencoded_body_reads_as_starlettes_form_parser_reads_it(
    body: bytes, content_type: str
) -> None:
    ours = asyncio.run(form_fields(request(body, content_type)))
    assert ours == asyncio.run(starlettes_reading(body, content_type))


def test_any_other_body_is_left_to_starlettes_form_parser() -> None:
    body = (b"--b\r\nContent-Disposition: form-data; name=\"Body\"\r\n\r\nprinter down\r\n"
            b"--b--\r\n")
    assert asyncio.run(form_fields(request(body, "multipart/form-data; boundary=b"))) == {
        "Body": "printer down"}
    assert asyncio.run(form_fields(request(b"Body=x", "text/plain"))) == {}


def test_the_sms_answer_carries_the_receipt_or_nothing() -> None:
    assert twiml(sms_twiml("Got it & thanks")).findtext("Message") == "Got it & thanks"
    assert twiml(sms_twiml("")).find("Message") is None
