"""Stage 3, automated-mail check: every loop signal of DESIGN "Lessons" on its own, and an
ordinary human message that none of them catches. Messages are built by parse() from real bytes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.intake.spool import Envelope
from gateway.message import Automated
from gateway.stages.automated import check_automated
from gateway.stages.parse import parse
from tests.helpers import make_email

OWN_DOMAIN = "support.example.com"


def check(
    raw: bytes,
    *,
    mail_from: str | None = "dana@acme-clinic.example",
    channel: str = "smtp",
    trust_spam_headers: bool = True,
) -> Automated:
    envelope = Envelope(
        channel=channel,
        received_at=datetime(2026, 11, 23, 15, 0, tzinfo=UTC),
        mail_from=mail_from,
        recipients=("support@example.com",),
    )
    message = parse(raw, envelope, "spool-1", 1024 * 1024)
    return check_automated(message, own_domain=OWN_DOMAIN, trust_spam_headers=trust_spam_headers)


def test_an_ordinary_human_message_is_human() -> None:
    result = check(make_email())
    assert result.kind == "human"
    assert not result.is_automated


def test_an_ordinary_message_through_the_pipe_without_envelope_sender_is_human() -> None:
    assert check(make_email(), mail_from=None, channel="pipe").kind == "human"


@pytest.mark.parametrize("value", ["auto-replied", "auto-generated", "Auto-Notified"])
def test_auto_submitted_other_than_no_is_an_auto_reply(value: str) -> None:
    result = check(make_email(Auto_Submitted=value))
    assert result.kind == "auto-reply"
    assert "RFC 3834" in result.reason


@pytest.mark.parametrize("value", ["no", "No", "no; comment"])
def test_auto_submitted_no_is_a_human_message(value: str) -> None:
    assert check(make_email(Auto_Submitted=value)).kind == "human"


@pytest.mark.parametrize(
    ("value", "kind"),
    [("bulk", "auto-reply"), ("junk", "auto-reply"), ("list", "list"), ("Bulk", "auto-reply")],
)
def test_precedence_bulk_list_or_junk_is_automated(value: str, kind: str) -> None:
    result = check(make_email(Precedence=value))
    assert result.kind == kind
    assert "Precedence" in result.reason


def test_precedence_first_class_is_a_human_message() -> None:
    assert check(make_email(Precedence="first-class")).kind == "human"


@pytest.mark.parametrize("header", ["X_Autoreply", "X_Autorespond"])
def test_x_autoreply_is_an_auto_reply(header: str) -> None:
    assert check(make_email(**{header: "yes"})).kind == "auto-reply"


@pytest.mark.parametrize(
    "headers",
    [
        {"List_Id": "<support.lists.example>"},
        {"List_Unsubscribe": "<mailto:leave@lists.example>"},
        {"List_Post": "<mailto:list@lists.example>"},
    ],
)
def test_mailing_list_headers_mark_list_mail(headers: dict[str, str]) -> None:
    assert check(make_email(**headers)).kind == "list"


def test_the_null_envelope_sender_is_a_bounce_or_report() -> None:
    result = check(make_email(), mail_from="")
    assert result.kind == "null-sender"


def test_a_message_with_no_sender_at_all_is_treated_as_null_sender() -> None:
    raw = b"To: support@example.com\nSubject: hi\nMessage-ID: <ns@x>\n\nhello\n"
    assert check(raw, mail_from=None, channel="pipe").kind == "null-sender"


@pytest.mark.parametrize(
    "sender",
    [
        "MAILER-DAEMON@mx.example",
        "postmaster@mx.example",
        "noreply@shop.example",
        "do-not-reply@shop.example",
        "bounces+abc@lists.example",
    ],
)
def test_mailer_daemon_and_no_reply_senders_are_bounces(sender: str) -> None:
    result = check(make_email(sender=sender, subject="Notice"), mail_from="relay@mx.example")
    assert result.kind == "bounce"


def test_a_person_whose_name_merely_starts_like_a_daemon_is_human() -> None:
    assert check(make_email(sender="postmasters-guild@club.example")).kind == "human"
    assert check(make_email(sender="bouncer@club.example")).kind == "human"


DSN = b"""From: Mail Delivery System <mail@mx.example>
To: dana@acme-clinic.example
Subject: Delivery report
Message-ID: <dsn@mx.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b"

--b
Content-Type: text/plain

Your message could not be delivered.
--b
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example

Final-Recipient: rfc822; x@y.example
Action: failed
Status: 5.1.1
--b--
"""


def test_a_multipart_report_dsn_is_a_bounce() -> None:
    result = check(DSN, mail_from="relay@mx.example")
    assert result.kind == "bounce"
    assert "multipart/report" in result.reason


def test_mail_with_our_own_message_id_domain_is_our_own_mail_coming_back() -> None:
    result = check(make_email(message_id="<ack-42@Support.Example.COM>", sender="x@y.example"))
    assert result.kind == "own-mail"


def test_a_message_id_in_a_lookalike_domain_is_not_our_own_mail() -> None:
    assert check(make_email(message_id="<a@evilsupport.example.com>")).kind == "human"


def test_our_loop_header_marks_our_own_mail() -> None:
    result = check(make_email(X_Intake_Gateway="gw1 T-000042"))
    assert result.kind == "own-mail"


@pytest.mark.parametrize(
    "headers",
    [{"X_Spam_Flag": "YES"}, {"X_Spam_Status": "Yes, score=12.3 required=5.0 tests=..."}],
)
def test_upstream_spam_verdicts_are_honoured_only_when_trusted(headers: dict[str, str]) -> None:
    raw = make_email(**headers)
    assert check(raw, trust_spam_headers=True).kind == "spam"
    assert check(raw, trust_spam_headers=False).kind == "human"


def test_an_upstream_not_spam_verdict_is_a_human_message() -> None:
    raw = make_email(X_Spam_Flag="NO", X_Spam_Status="No, score=-2.1 required=5.0")
    assert check(raw, trust_spam_headers=True).kind == "human"


def test_an_out_of_office_subject_is_an_auto_reply() -> None:
    assert check(make_email(subject="Out of Office: back Monday")).kind == "auto-reply"
