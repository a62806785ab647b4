"""The webhooks answer a signature exactly as Twilio's own `RequestValidator.validate` does,
though they compute one HMAC instead of two for a request signed as Twilio signs it; and they
read the path and query it signs straight from the ASGI scope, exactly as Starlette's
`request.url` gives them. A difference either way would refuse Twilio or admit a forger."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from twilio.request_validator import RequestValidator

from channels.twilio import path_and_query, signature_matches, url_path

TOKEN = "12345678901234567890123456789012"
URLS = st.sampled_from([
    "https://gw.example.test/twilio/sms",
    "https://gw.example.test:443/twilio/sms",
    "https://gw.example.test:8443/twilio/voice/recording?caller=%2B16175550100",
    "http://gw.example.test/twilio/sms?x=1&x=2",
    "http://gw.example.test:80/twilio/sms?bodySHA256=abc",
    "https://GW.example.test/twilio/sms?",
])
FIELDS = st.dictionaries(st.sampled_from(["Body", "From", "To", "MessageSid", "a", ""]),
                         st.text(max_size=12), max_size=5)


def signatures(url: str, fields: dict[str, str]) -> st.SearchStrategy[str]:
    """Signatures a request may carry: Twilio's over the URL with or without its port, one
    over other fields, a truncated one, garbage."""
    v = RequestValidator(TOKEN)
    without = url.replace(":443/", "/").replace(":8443/", "/").replace(":80/", "/")
    with_port = without.replace(".test/", ".test:443/" if url.startswith("https") else ".test:80/")
    good = [v.compute_signature(u, fields) for u in (url, without, with_port)]
    return st.sampled_from([*good, good[0][:-2], v.compute_signature(url, {"Body": "forged"}),
                            "", "not base64 ✓"])


@settings(max_examples=400, deadline=None)
@given(st.data(), URLS, FIELDS)
def test_a_signature_is_accepted_exactly_when_twilios_validator_accepts_it(
    data: st.DataObject, url: str, fields: dict[str, str]
) -> None:
    signature = data.draw(signatures(url, fields))
    expected = RequestValidator(TOKEN).validate(url, fields, signature)
    assert signature_matches(TOKEN, url, fields, signature) is expected


def test_a_forged_signature_and_a_wrong_token_are_refused() -> None:
    url = "https://gw.example.test/twilio/sms"
    fields = {"Body": "down", "MessageSid": "SM1"}
    good = RequestValidator(TOKEN).compute_signature(url, fields)
    assert signature_matches(TOKEN, url, fields, good)
    assert not signature_matches("another-token", url, fields, good)
    assert not signature_matches(TOKEN, url, {**fields, "Body": "up"}, good)
    assert not signature_matches(TOKEN, url + "?caller=x", fields, good)


PATHS = st.lists(st.sampled_from(["/", "twilio", "sms", "?", "#", "\\", "%3F", "%", "é", " ",
                                  "voice", "//", ";", "+"]), max_size=8).map(
    lambda parts: "/" + "".join(parts))
QUERIES = st.lists(st.sampled_from(["caller=", "%2B1617", "&", "=", "+", "é", "a", "%zz", "?"]),
                   max_size=6).map(lambda parts: "".join(parts).encode())


@settings(max_examples=400, deadline=None)
@given(PATHS, QUERIES)
def test_the_signed_path_and_query_are_starlettes(path: str, query: bytes) -> None:
    scope = {"type": "http", "method": "POST", "path": path, "query_string": query,
             "headers": [(b"host", b"127.0.0.1:8080")], "scheme": "http",
             "server": ("127.0.0.1", 8080)}
    url = Request(scope).url
    expected = url.path + (f"?{url.query}" if url.query else "")
    assert path_and_query(scope) == expected
    assert url_path(scope) == url.path
