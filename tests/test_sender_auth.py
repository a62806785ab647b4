"""Specification of sender authentication for email (gateway/emergency/sender_auth.py).

A forged `From:` must never create a charge: the sender counts as authenticated only by an
aligned pass from our own receiving MTA (`Authentication-Results` with a trusted authserv-id) or
by a DKIM signature the gateway verifies itself. DNS is a dict served through the injected
resolver, and the keys are made here, so nothing leaves the machine.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.emergency.sender_auth import (
    DnsTxtResolver,
    SenderAuth,
    aligned,
    authenticate_sender,
    organizational_domain,
)

OUR_MTA = "mx.support.example.com"
ACME = "acme-clinic.example"
ANN = f"ann@{ACME}"


def _keypair() -> tuple[bytes, bytes]:
    """(PKCS#1 PEM private key for dkim.sign, the TXT record publishing its public key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


ACME_KEY, ACME_TXT = _keypair()
MAILER_KEY, MAILER_TXT = _keypair()
DNS = {
    f"sel._domainkey.{ACME}.".encode(): ACME_TXT,
    f"sel._domainkey.mail.{ACME}.".encode(): ACME_TXT,
    b"sel._domainkey.mailer.example.": MAILER_TXT,
}


def resolver(name: bytes) -> bytes | None:
    return DNS.get(name)


def message(
    headers: Sequence[str] = (),
    *,
    sender: str = f"Ann Lee <{ANN}>",
    body: str = "The server is down.\r\nEMERGENCY-ACK-2026\r\n",
) -> bytes:
    """A message as our MTA delivers it: `headers` (trace and verdicts) on top."""
    lines = [
        *headers,
        f"From: {sender}",
        "To: emergency@support.example.com",
        "Subject: Production outage",
        "Date: Tue, 24 Nov 2026 19:30:00 -0500",
        "Message-ID: <outage-1@acme-clinic.example>",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def signed(raw: bytes, domain: str = ACME, key: bytes = ACME_KEY, length: bool = False) -> bytes:
    signature: bytes = dkim.sign(
        raw,
        b"sel",
        domain.encode(),
        key,
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        length=length,
    )
    return signature + raw


def check(
    raw: bytes,
    from_address: str = ANN,
    *,
    trusted: Sequence[str] = (OUR_MTA,),
    dns: DnsTxtResolver | None = resolver,
) -> SenderAuth:
    return authenticate_sender(raw, from_address, trusted_authserv_ids=trusted, dkim_resolver=dns)


RECEIVED = (
    f"Received: from mail.acme-clinic.example (mail.acme-clinic.example [192.0.2.7]) by {OUR_MTA}"
    " with ESMTPS id 4Xy; Tue, 24 Nov 2026 19:30:02 -0500"
)


# ---- Authentication-Results from our receiving MTA -----------------------------------------


def test_trusted_dmarc_pass_for_the_from_domain_authenticates() -> None:
    raw = message([f"Authentication-Results: {OUR_MTA}; dmarc=pass (p=reject) header.from={ACME}"])
    assert check(raw, dns=None) == SenderAuth(
        True,
        "authentication-results",
        f"dmarc=pass header.from={ACME} (aligned with From {ACME}) by {OUR_MTA}",
    )


def test_trusted_dkim_pass_aligned_authenticates_even_with_opendkim_comments() -> None:
    # OpenDKIM's comment holds a ";", which must not split the result; the header is folded.
    raw = message(
        [
            f"Authentication-Results: {OUR_MTA};\r\n"
            f"\tdkim=pass (2048-bit key; unprotected) header.d=mail.{ACME}\r\n"
            f'\theader.i="@mail.{ACME}" header.b="AbCd1234"'
        ]
    )
    result = check(raw, dns=None)
    assert result == SenderAuth(
        True,
        "authentication-results",
        f"dkim=pass header.d=mail.{ACME} (aligned with From {ACME}) by {OUR_MTA}",
    )


def test_trusted_spf_pass_counts_only_when_the_mail_from_domain_is_aligned() -> None:
    aligned_spf = message([f"Authentication-Results: {OUR_MTA}; spf=pass smtp.mailfrom=b@{ACME}"])
    assert check(aligned_spf, dns=None).method == "authentication-results"
    foreign = message(
        [f"Authentication-Results: {OUR_MTA}; spf=pass smtp.mailfrom=bounce@mailer.example"]
    )
    assert not check(foreign, dns=None).authenticated


def test_authserv_id_is_matched_without_regard_to_case() -> None:
    raw = message(
        [f"Authentication-Results: MX.Support.Example.COM; dmarc=pass header.from={ACME}"]
    )
    assert check(raw, dns=None).authenticated


def test_authentication_results_from_an_untrusted_authserv_id_are_ignored() -> None:
    # Anyone can write this header before sending; the forger's own "verdict" means nothing.
    raw = message([f"Authentication-Results: mx.evil.example; dmarc=pass header.from={ACME}"])
    result = check(raw, dns=None)
    assert not result.authenticated
    assert result.method == "none"
    assert "ignored 1 Authentication-Results from untrusted mx.evil.example" in result.detail
    assert f"no Authentication-Results from a trusted receiving server ({OUR_MTA})" in result.detail


def test_no_trusted_ids_configured_trusts_no_header() -> None:
    raw = message([f"Authentication-Results: {OUR_MTA}; dmarc=pass header.from={ACME}"])
    result = check(raw, trusted=(), dns=None)
    assert not result.authenticated
    assert "(none configured)" in result.detail


def test_a_pass_for_another_domain_is_refused_as_not_aligned() -> None:
    raw = message(
        [
            f"Authentication-Results: {OUR_MTA}; dkim=pass header.d=mailer.example;"
            " dmarc=pass header.from=mailer.example"
        ]
    )
    result = check(raw, dns=None)
    assert not result.authenticated
    assert f"no pass aligned with From {ACME} from {OUR_MTA}" in result.detail
    assert "dkim=pass header.d=mailer.example" in result.detail


def test_a_dmarc_pass_for_a_parent_domain_is_not_a_pass_for_its_subdomain() -> None:
    # DMARC's verdict is about one exact header.from domain.
    raw = message([f"Authentication-Results: {OUR_MTA}; dmarc=pass header.from={ACME}"])
    assert not check(raw, f"ann@eu.{ACME}", dns=None).authenticated


def test_a_failing_verdict_does_not_authenticate() -> None:
    raw = message([f"Authentication-Results: {OUR_MTA}; dkim=fail header.d={ACME}; dmarc=fail"])
    assert not check(raw, dns=None).authenticated


def test_a_forged_trusted_header_below_our_hop_is_ignored() -> None:
    # Our MTA's own verdict is on top; the forger's copy of our id sits below the Received
    # line of the hop that brought the message to us.
    raw = message(
        [
            f"Authentication-Results: {OUR_MTA}; dkim=none; dmarc=fail header.from={ACME}",
            RECEIVED,
            f"Authentication-Results: {OUR_MTA}; dmarc=pass header.from={ACME}",
        ]
    )
    result = check(raw, dns=None)
    assert not result.authenticated
    assert "ignored 1 trusted-looking Authentication-Results below our hop" in result.detail


def test_several_verdict_headers_from_our_mta_are_read_together() -> None:
    # OpenDKIM and OpenDMARC each add a header; both are above the delivering hop's Received.
    raw = message(
        [
            f"Authentication-Results: {OUR_MTA}; dmarc=pass header.from={ACME}",
            f"Authentication-Results: {OUR_MTA}; dkim=pass header.d={ACME}",
            RECEIVED,
        ]
    )
    assert check(raw, dns=None).detail.startswith("dmarc=pass")


# ---- the gateway's own DKIM check -------------------------------------------------------------


def test_a_valid_dkim_signature_aligned_with_from_authenticates() -> None:
    assert check(signed(message())) == SenderAuth(
        True, "dkim", f"dkim=pass d={ACME} s=sel (aligned with From {ACME})"
    )


def test_a_signature_by_a_subdomain_of_the_from_domain_is_aligned() -> None:
    assert check(signed(message(), domain=f"mail.{ACME}")).method == "dkim"


def test_a_valid_signature_by_another_domain_is_not_aligned() -> None:
    result = check(signed(message(), domain="mailer.example", key=MAILER_KEY))
    assert not result.authenticated
    assert f"DKIM signature by mailer.example is not aligned with From {ACME}" in result.detail


def test_a_body_changed_after_signing_fails() -> None:
    raw = signed(message()).replace(b"The server is down.", b"The server is up!!!")
    result = check(raw)
    assert not result.authenticated
    assert f"DKIM signature by {ACME} failed: ValidationError: body hash mismatch" in result.detail


def test_a_signed_header_changed_after_signing_fails() -> None:
    raw = signed(message()).replace(b"Subject: Production outage", b"Subject: Production outagE")
    result = check(raw)
    assert not result.authenticated
    assert "does not match" in result.detail


def test_a_forged_from_without_any_signature_is_not_authenticated() -> None:
    result = check(message())
    assert not result.authenticated
    assert result.method == "none"
    assert "the message has no DKIM signature" in result.detail


def test_a_resolver_that_raises_is_a_failed_lookup_not_a_crash() -> None:
    def broken(name: bytes) -> bytes | None:
        raise TimeoutError("no answer from 127.0.0.53")

    result = check(signed(message()), dns=broken)
    assert not result.authenticated
    assert f"DNS lookup of sel._domainkey.{ACME}. failed: TimeoutError" in result.detail


def test_a_signature_whose_key_is_not_published_fails() -> None:
    result = check(signed(message()), dns=lambda name: None)
    assert not result.authenticated
    assert f"no DKIM key is published at sel._domainkey.{ACME}." in result.detail


def test_without_a_resolver_dkim_is_not_checked() -> None:
    result = check(signed(message()), dns=None)
    assert not result.authenticated
    assert "DKIM not checked by the gateway" in result.detail


def test_dkim_is_checked_when_our_mta_gave_no_aligned_pass() -> None:
    raw = signed(message([f"Authentication-Results: {OUR_MTA}; dkim=temperror header.d={ACME}"]))
    assert check(raw).method == "dkim"


def test_a_signature_over_part_of_the_body_is_refused() -> None:
    # With l= anything appended after signing (an acknowledgement phrase) would be unsigned.
    raw = signed(message(), length=True)
    result = check(raw)
    assert not result.authenticated
    assert "covers only part of the body (l=)" in result.detail


def test_a_second_from_header_is_never_authenticated() -> None:
    raw = signed(message())
    raw = raw.replace(b"To: ", b"From: boss@acme-clinic.example\r\nTo: ", 1)
    result = check(raw)
    assert not result.authenticated
    assert "2 From headers" in result.detail


def test_the_from_address_must_be_the_one_in_the_from_header() -> None:
    result = check(signed(message()), "ann@mailer.example")
    assert not result.authenticated
    assert "is not the one in the From header" in result.detail


def test_a_from_address_without_a_domain_is_not_authenticated() -> None:
    assert "has no valid domain" in check(signed(message()), "ann").detail


def test_a_leading_mbox_from_line_does_not_break_the_signature() -> None:
    raw = b"From ann@acme-clinic.example Tue Nov 24 19:30:00 2026\r\n" + signed(message())
    assert check(raw).method == "dkim"


# ---- alignment ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("acme-clinic.example", "acme-clinic.example"),
        ("mail.eu.acme-clinic.example", "acme-clinic.example"),
        ("clinic.co.uk", "clinic.co.uk"),
        ("mail.clinic.co.uk", "clinic.co.uk"),
        ("mail.clinic.com.au", "clinic.com.au"),
        ("co.uk", "co.uk"),
        # "co" under a three-letter TLD is an ordinary name.
        ("mail.acme.co.com", "co.com"),
    ],
)
def test_organizational_domain_is_the_registrable_domain(domain: str, org: str) -> None:
    assert organizational_domain(domain) == org


def test_alignment_is_relaxed_but_never_crosses_registrable_domains() -> None:
    assert aligned("mail.acme-clinic.example", "acme-clinic.example")
    assert aligned("acme-clinic.example", "eu.acme-clinic.example")
    assert not aligned("acme-clinic.example.evil", "acme-clinic.example")
    assert not aligned("evil.co.uk", "clinic.co.uk")
    assert not aligned("co.uk", "clinic.co.uk")


# ---- hostile input ---------------------------------------------------------------------------

HOSTILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
header_text = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=120
)


@HOSTILE
@given(raw=st.binary(max_size=400), from_address=st.text(max_size=40))
def test_any_bytes_get_an_answer_never_an_exception(raw: bytes, from_address: str) -> None:
    result = check(raw, from_address)
    assert result.authenticated is (result.method != "none")


@HOSTILE
@given(verdict=header_text, tags=header_text)
def test_garbage_verdicts_and_signatures_never_authenticate_or_crash(
    verdict: str, tags: str
) -> None:
    # The verdict comes from an untrusted server; the signature names the real domain and
    # selector (so the real key is fetched) but the rest is noise: neither may authenticate.
    raw = message(
        [
            f"Authentication-Results: mx.evil.example; {verdict}",
            f"DKIM-Signature: v=1; a=rsa-sha256; d={ACME}; s=sel; h=from:to; {tags}",
            f"Authentication-Results: {verdict}",
        ]
    )
    result = check(raw)
    assert not result.authenticated
    assert result.method == "none"
    assert result.detail


BODY = b"The server is down.\r\nEMERGENCY-ACK-2026\r\n"
SIGNED = signed(message(body=BODY.decode()))


def _lines(body: bytes) -> bytes:
    """A body as DKIM's simple canonicalisation compares it: line ends and trailing blank
    lines do not count."""
    return body.replace(b"\r\n", b"\n").rstrip(b"\n")


@HOSTILE
@given(
    edits=st.lists(
        st.tuples(
            # Anywhere, or (more often) in the body, which the acknowledgement phrase is in.
            st.integers(0, len(SIGNED) - 1) | st.integers(len(SIGNED) - len(BODY), len(SIGNED) - 1),
            st.binary(min_size=0, max_size=3) | st.sampled_from([b"", b"\r\n", b" ", b"\n"]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_a_signed_message_mangled_anywhere_never_passes_with_a_changed_body(
    edits: list[tuple[int, bytes]],
) -> None:
    raw = SIGNED
    for at, replacement in edits:
        raw = raw[:at] + replacement + raw[at + 1 :]
    result = check(raw)
    assert result.authenticated is (result.method != "none")
    if result.authenticated:
        assert _lines(raw.partition(b"\r\n\r\n")[2]) == _lines(BODY)
