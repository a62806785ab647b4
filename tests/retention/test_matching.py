"""Who a person is in the data: every formatting of their number, their address but never the
tail of a longer one, their own lines but never the text they quote, a stable pseudonym."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.privacy.identity import (
    ERASED,
    ErasureError,
    Matcher,
    Person,
    fragments_of,
    install_salt,
    parse_contact,
    pseudonym,
)

SALT = b"s" * 32
ROSA = Person("email", "rosa.quintero@quokka-vet.example", "erased:aaaaaaaaaaaaaaaa")
PHONE = Person("phone", "+16175550177", "erased:bbbbbbbbbbbbbbbb")
UK = Person("phone", "+447700900123", "erased:cccccccccccccccc")


@pytest.mark.parametrize(
    "written",
    [
        "+16175550177",
        "+1 617 555 0177",
        "+1 (617) 555-0177",
        "1-617-555-0177",
        "(617) 555-0177",
        "617.555.0177",
        "617-555-0177",
        "6175550177",
        "tel:+1-617-555-0177",
        "0016175550177",
    ],
)
def test_every_common_formatting_of_a_number_is_found_and_replaced_whole(written: str) -> None:
    text = f"Call me on {written}, thanks"
    scrubbed, count = Matcher([PHONE]).scrub(text, related=False)
    assert count == 1
    assert scrubbed.startswith("Call me on ") and scrubbed.endswith(", thanks")
    assert PHONE.pseudonym in scrubbed and "617" not in scrubbed and "0177" not in scrubbed
    assert Matcher([PHONE]).bytes_hits(text.encode()) == 1


@pytest.mark.parametrize(
    "written", ["+447700900123", "+44 7700 900123", "+44 (0)7700 900123", "07700 900123"]
)
def test_numbers_outside_north_america_are_found_with_trunk_zero_and_country_code(
    written: str,
) -> None:
    assert Matcher([UK]).scrub(f"ring {written} now", related=False) == (
        f"ring {UK.pseudonym} now",
        1,
    )


@pytest.mark.parametrize("other", ["+16175550178", "61755501770", "+4416175550177", "617555017"])
def test_other_numbers_are_left_alone(other: str) -> None:
    assert Matcher([PHONE]).scrub(f"call {other} now", related=False) == (f"call {other} now", 0)


@given(
    groups=st.sampled_from([(3, 3, 4), (3, 7), (10,), (6, 4), (2, 2, 2, 2, 2)]),
    separator=st.sampled_from(["", " ", "-", ".", "/", "\u00a0"]),
    prefix=st.sampled_from(["", "+1 ", "+1", "1-", "001 ", "("]),
)
def test_any_grouping_of_the_digits_is_found(
    groups: tuple[int, ...], separator: str, prefix: str
) -> None:
    digits, parts, at = "6175550177", [], 0
    for size in groups:
        parts.append(digits[at : at + size])
        at += size
    written = prefix + separator.join(parts)
    if prefix == "(":
        written = "(" + parts[0] + ")" + separator + separator.join(parts[1:])
    assert Matcher([PHONE]).scrub(f"x {written} y", related=False)[1] == 1, written


@pytest.mark.parametrize(
    ("text", "hits"),
    [
        ("From: ROSA.QUINTERO@QUOKKA-VET.EXAMPLE", 1),
        ("mailto:rosa.quintero%40quokka-vet.example", 1),
        ("write to rosa.quintero@quokka-vet.example.", 1),
        ("<rosa.quintero@quokka-vet.example>", 1),
        ("jim.rosa.quintero@quokka-vet.example", 0),
        ("rosa.quintero@quokka-vet.example.org", 0),
        ("rosa.quintero@quokka-vet.examples", 0),
    ],
)
def test_an_address_is_found_in_any_case_but_never_inside_a_longer_one(
    text: str, hits: int
) -> None:
    scrubbed, count = Matcher([ROSA]).scrub(text, related=False)
    assert count == hits
    assert (ROSA.pseudonym in scrubbed) == bool(hits)
    assert Matcher([ROSA]).bytes_hits(text.encode()) == hits


def test_a_persons_own_lines_are_theirs_but_quoted_text_is_not() -> None:
    text = (
        "Hello,\n"
        "the quokka printer in room 7B is jammed again.\n"
        "> We have opened ticket T-000001 for your message.\n"
        "Thanks\n"
        "On Mon, 23 Nov 2026 at 10:00, Support <support@example.com> wrote:\n"
        "Please keep the reference in the subject of any reply.\n"
    )
    assert fragments_of(text) == {"the quokka printer in room 7B is jammed again."}
    assert fragments_of("Printer smoking") == {"Printer smoking"}  # a one-line text
    assert fragments_of("ok") == set()


def test_their_words_and_name_are_replaced_only_in_rows_about_them_also_json_escaped() -> None:
    matcher = Matcher([ROSA], {"the quokka printer in room 7B is jammed again."}, {"Rosa Quintero"})
    quoted = "Dear ROSA QUINTERO,\n> the quokka printer in room 7B\n> is jammed again.\n"
    assert matcher.scrub(quoted, related=True) == (f"Dear {ERASED},\n> {ERASED}\n", 2)
    assert matcher.scrub(quoted, related=False) == (quoted, 0)
    body = json.dumps({"text": "Grüße: the quokka printer in room 7B is jammed again."})
    scrubbed, count = matcher.scrub(body, related=True)
    assert count == 1 and json.loads(scrubbed) == {"text": f"Grüße: {ERASED}"}
    value = {"contact": [ROSA.value.upper()], ROSA.value: {"n": 1}}
    assert matcher.scrub_value(value, related=False) == (
        {"contact": [ROSA.pseudonym], ROSA.pseudonym: {"n": 1}},
        2,
    )


def test_a_contact_is_an_address_or_a_number_in_any_formatting() -> None:
    assert parse_contact(" Rosa.Quintero@Quokka-Vet.Example ") == ("email", ROSA.value)
    assert parse_contact("mailto:<rosa.quintero@quokka-vet.example>") == ("email", ROSA.value)
    assert parse_contact("+1 (617) 555-0177") == ("phone", "+16175550177")
    assert parse_contact("617.555.0177") == ("phone", "+16175550177")
    for bad in ("", "rosa", "rosa@", "@x.example", "12", "+0 123", "call 617 555 0177"):
        with pytest.raises(ErasureError):
            parse_contact(bad)


def test_the_salt_is_made_once_private_and_pseudonyms_are_stable(tmp_path: Path) -> None:
    salt = install_salt(tmp_path)
    assert install_salt(tmp_path) == salt and len(salt) == 32
    assert stat.S_IMODE(os.stat(tmp_path / "erasure-salt").st_mode) == 0o600
    first = pseudonym(salt, "email", ROSA.value)
    assert first == pseudonym(salt, "email", ROSA.value)
    assert first.startswith("erased:") and len(first) == len("erased:") + 16
    assert first != pseudonym(salt, "phone", ROSA.value) != pseudonym(SALT, "email", ROSA.value)
    (tmp_path / "erasure-salt").write_bytes(b"short")
    with pytest.raises(ErasureError, match="damaged"):
        install_salt(tmp_path)


def test_identifiers_and_words_at_a_line_start_inside_json_text_are_found() -> None:
    body = json.dumps({"text": "Hi\nrosa.quintero@quokka-vet.example\n6175550177\nPrinter smoking"})
    matcher = Matcher([ROSA, PHONE], {"Printer smoking"})
    scrubbed, count = matcher.scrub(body, related=True)
    assert count == 3
    assert json.loads(scrubbed) == {"text": f"Hi\n{ROSA.pseudonym}\n{PHONE.pseudonym}\n{ERASED}"}
    assert matcher.bytes_hits(body.encode()) == 2
