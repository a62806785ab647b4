"""The words a caller hears: every sentence of the voice flow, as pure functions.

Owns what the voice flow *says* (channels/twilio.py only wraps these words in TwiML), so that
what a caller hears, what the ticket records and what the billing evidence rests on are the same
words (issue 18, items 4-6):

* the emergency prompt states the price from the plan, and the after-hours surcharge when it
  applies now — both from `gateway.emergency.rules.quote`, the one price rule, which asks
  `gateway.emergency.after_hours` (the after-hours calendar) whether it is after hours;
* a caller who pressed 1 hears the answer of the one emergency rule
  (`gateway.emergency.rules.refusal`): accepted, or not accepted with the same reason and help
  the `emergency-unavailable` SMS gives, and that the call goes on at normal priority;
* a caller we cannot serve hears how to reach us (the `[outbound] from_address` replies come
  from), and a number we do not know hears a neutral message, never "your support plan".

Must never read a clock (the instant is the caller's), touch the spool, storage or the network,
or decide anything itself: prices and refusals are the emergency rules' answers.
"""

from __future__ import annotations

from typing import Final

from gateway.emergency.rules import Quote, Refusal, money
from gateway.message import Customer
from gateway.policy.plans import Entitlement

NO_CHOICE: Final = "We did not get a choice, so your message will have normal priority."
LEAVE_MESSAGE: Final = "Please leave your message after the tone, then hang up."
EMERGENCY_NOTED: Final = "Your emergency is noted. " + LEAVE_MESSAGE
GOODBYE: Final = "Thank you. We have your message. Goodbye."
# How the emergency rules name the caller in a refusal read out on the call: the SMS names the
# number; a voice reading out twelve digits back to their owner helps nobody.
CALLER: Final = "the number you are calling from"


def emergency_prompt(price: Quote) -> str:
    """The choice offered to a caller whose plan sells emergency support, with its price now.

    Pressing 1 is the call's acknowledgement of the charge (docs/emergency.md), so the prompt
    says what is charged: the plan's price, plus the after-hours surcharge when it applies at
    this instant, the terms version, and that a prepaid incident pays the price instead."""
    charge = money(price.price_minor, price.currency)
    if price.applied_surcharge_minor:
        surcharge = money(price.applied_surcharge_minor, price.currency)
        charge += (
            f" plus an after-hours surcharge of {surcharge} at this hour, {price.total()} in all"
        )
    # A live call reads no ledger (it answers with the database down), so the prepaid rule is
    # said as a rule, not as a balance; the written request states the balance (prepaid_note).
    covered = (
        "the surcharge is still charged" if price.applied_surcharge_minor
        else "nothing more is charged"
    )
    return (
        "If this is an emergency, press 1. Emergency support is billed per incident: "
        f"{charge}, under our emergency support terms version {price.terms_version}. "
        "If your account has prepaid incidents left, one of them is used instead of the price, "
        f"and {covered}. Pressing 1 accepts this charge. For normal priority, press 2."
    )


def keypress_answer(digit: str, refused: Refusal | None) -> str:
    """What a caller hears after pressing `digit`: for 1, accepted (`refused` None) or not, and
    why, in the words of the `emergency-unavailable` SMS; otherwise simply the recording."""
    if digit != "1":
        return LEAVE_MESSAGE
    if refused is None:
        return EMERGENCY_NOTED
    return (
        f"We could not accept this call as an emergency: {refused.reason}. Your message will "
        f"have normal priority, and nothing is charged. {refused.help} {LEAVE_MESSAGE}"
    )


def cannot_serve(
    greeting: str, customer: Customer, entitlement: Entitlement, support_email: str
) -> str:
    """The whole call for a caller whose plan rejects voice: how to reach us instead.

    A number we do not know hears a neutral message (we know no plan of theirs to speak of)."""
    ways = _ways(entitlement.included, support_email)
    if not customer.known:
        return (
            f"{greeting} We do not recognise the number you are calling from, so we cannot "
            f"take a message by phone. {ways} Goodbye."
        )
    return f"{greeting} Your support plan does not include phone support. {ways} Goodbye."


def _ways(included: tuple[str, ...], support_email: str) -> str:
    """"Please email us at support@example.com." — the channels a plan includes, with the
    address to use; a channel with no address to give is named as it is."""
    said = []
    for channel in included:
        if channel == "email" and support_email:
            said.append(f"email us at {support_email}")
        elif channel == "sms":
            said.append("send a text message to this number")
        elif channel != "voice":
            said.append(f"contact us by {channel}")
    if not said:
        return "Please contact us in writing."
    return "Please " + ", or ".join(said) + "."
