"""The SMTP listener's fast path for "<local@domain>" answers exactly what aiosmtpd's own address
parser answers, and leaves every other shape to that parser (channels/smtp.py, `plain_path`)."""

from __future__ import annotations

import string
from types import SimpleNamespace

from aiosmtpd.smtp import SMTP
from hypothesis import example, given, settings
from hypothesis import strategies as st

from channels.smtp import plain_path

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
atom = st.text(ATEXT, min_size=1, max_size=12)
dot_atom = st.lists(atom, min_size=1, max_size=4).map(".".join)
rest = st.text(" \t\r\n()=<>@\"\\.,;:[]" + "SIZEBODY8BITMIME0123456789é\x00", max_size=24)


def aiosmtpd_getaddr(arg: str) -> tuple[str | None, str | None]:
    return SMTP._getaddr(SimpleNamespace(local_part_limit=0), arg)  # type: ignore[arg-type]


@settings(max_examples=600, deadline=None)
@given(dot_atom, dot_atom, rest)
@example("dana", "acme-clinic.example", " SIZE=1024 BODY=8BITMIME")
@example("a", "b", "(a comment) SIZE=1")
@example("a", "b", "\t\tX=1")
def test_the_usual_path_is_read_as_aiosmtpd_reads_it(local: str, domain: str, tail: str) -> None:
    arg = f"<{local}@{domain}>{tail}"
    fast = plain_path(arg)
    if fast is not None:
        assert fast == aiosmtpd_getaddr(arg)


@settings(max_examples=600, deadline=None)
@given(st.text(max_size=40))
def test_any_other_argument_is_either_read_the_same_or_left_to_aiosmtpd(arg: str) -> None:
    for candidate in (arg, "<" + arg, "<" + arg + ">", f"<a@b>{arg}"):
        fast = plain_path(candidate)
        if fast is not None:
            assert fast == aiosmtpd_getaddr(candidate)


def test_what_clients_send_takes_the_fast_path() -> None:
    assert plain_path("<dana@acme-clinic.example>") == ("dana@acme-clinic.example", "")
    assert plain_path("<first.last+tag@mail.example.com> SIZE=2048") == (
        "first.last+tag@mail.example.com",
        "SIZE=2048",
    )
    assert plain_path("<>") is None  # the null reverse-path: aiosmtpd's own rule
    assert plain_path('<"quoted local"@example.com>') is None
    assert plain_path("<a@[192.0.2.1]>") is None
    assert plain_path("dana@acme-clinic.example") is None  # no angle brackets


def test_the_listener_keeps_aiosmtpds_local_part_limit_on_the_fast_path() -> None:
    from channels.smtp import ChannelStats, _capped, _Sessions

    listener = _capped(SMTP, _Sessions(), 10, ChannelStats())
    limited = SimpleNamespace(local_part_limit=4)
    assert listener._getaddr(limited, "<dana@acme-clinic.example>") == (
        "dana@acme-clinic.example",
        "",
    )
    assert listener._getaddr(limited, "<danae@acme-clinic.example>") == (None, None)
    assert aiosmtpd_getaddr("<danae@acme-clinic.example>") == ("danae@acme-clinic.example", "")
