"""`gateway simulate sms`: post an inbound SMS to the running daemon's webhook exactly as Twilio
would — the same form fields, signed with the auth token over `[webhooks] public_url` — so an
admin can try the SMS channel (and the README's tour can text one) without a Twilio number.

It is a client of the webhook, nothing more: it never spools, never touches the database, and
never skips the signature check. The daemon decides everything, as it does for Twilio's own
requests; this command prints what the webhook answered.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

from gateway.cli.common import load_settings
from gateway.config.loader import secret
from gateway.phone import normalise_phone

#: Twilio's sample account id shape; used when [webhooks] account_sid is empty (inbound
#: webhooks carry the account id, but the gateway does not check it).
SAMPLE_ACCOUNT_SID = "AC" + "0" * 32


def cmd_simulate_sms(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    hooks = settings.gateway.webhooks
    if not hooks.enabled:
        print(
            "[webhooks] enabled = false in gateway.toml: there is no SMS webhook", file=sys.stderr
        )
        return 1
    token = secret("twilio-auth-token", "GATEWAY_TWILIO_AUTH_TOKEN")
    if not token:
        print(
            "no Twilio auth token: set $GATEWAY_TWILIO_AUTH_TOKEN to the token the daemon was "
            "started with (for a local trial any value, given to both)",
            file=sys.stderr,
        )
        return 2
    if not hooks.public_url:
        print(
            "[webhooks] public_url is empty in gateway.toml: the daemon checks every signature "
            "against it and refuses all requests until it is set",
            file=sys.stderr,
        )
        return 1
    sender = normalise_phone(args.sender)
    if not sender:
        print(f"--from {args.sender!r} is not a phone number", file=sys.stderr)
        return 2
    sid = "SM" + uuid.uuid4().hex
    params = {
        "MessageSid": sid,
        "SmsSid": sid,
        "AccountSid": hooks.account_sid or SAMPLE_ACCOUNT_SID,
        "From": sender,
        "To": args.to or hooks.from_number or sender,
        "Body": args.text,
        "NumMedia": "0",
    }
    path = "/twilio/sms"
    status, answer = _post_signed(
        f"http://{hooks.host}:{hooks.port}{path}",
        params,
        signed_url=hooks.public_url.rstrip("/") + path,
        token=token,
    )
    print(f"POST {path} {sid} from {sender}: HTTP {status}")
    if answer:
        print(answer)
    if status == 403:
        print(
            "refused: the daemon's auth token or public_url differs from this command's "
            "(the daemon's log says which)",
            file=sys.stderr,
        )
    return 0 if 200 <= status < 300 else 1


def _post_signed(
    url: str, params: dict[str, str], *, signed_url: str, token: str
) -> tuple[int, str]:
    """POST an urlencoded form with X-Twilio-Signature over `signed_url` + params, as Twilio
    does (its own RequestValidator computes it: never hand-rolled). Answers (status, body);
    a daemon that is not listening is status 0 with the reason."""
    from twilio.request_validator import RequestValidator

    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(params).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": RequestValidator(token).compute_signature(signed_url, params),
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except OSError as exc:
        return 0, f"no answer from {url}: {exc} (is `gateway run` up?)"


def register(sub: Any) -> None:
    s = sub.add_parser(
        "simulate", help="send the running daemon an SMS as Twilio would (signed); for trials"
    ).add_subparsers(dest="sim_cmd", required=True)
    p = s.add_parser("sms", help="an inbound SMS to the /twilio/sms webhook")
    p.add_argument("--from", dest="sender", required=True, help="the texting phone number")
    p.add_argument("--to", help="our number (default: [webhooks] from_number)")
    p.add_argument("text", help="the message text")
    p.set_defaults(func=cmd_simulate_sms)
