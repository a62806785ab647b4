"""Stage 5: how urgent is this message? Adapts a ParsedMessage to the classifier.

Owns the plug-in interface `classify(message, channel, customer) -> Verdict`. The classifier
package knows nothing of messages or storage; this adapter gives it plain text, headers and
the channel. Without an engine (no rules, no model), or for text the gateway wrote itself
(`ParsedMessage.gateway_text`: notes, receipts, prompts, issue 18 item 2), it returns the
configured default level: only the sender's own words are ever classified.
"""

from __future__ import annotations

from typing import Protocol

from classifiers.types import TextInput, Verdict
from gateway.message import Customer, ParsedMessage

CLASSIFIER_TEXT_BYTES = 8192  # the model and rules read the start: huge mail costs no more


class Classifier(Protocol):
    def classify(self, inp: TextInput) -> Verdict: ...


def channel_kind(channel: str) -> str:
    """The classifier's notion of channel: email, sms or voicemail."""
    if channel == "twilio-sms":
        return "sms"
    if channel.startswith("twilio"):
        return "voicemail"
    return "email"


def to_input(message: ParsedMessage) -> TextInput:
    return TextInput(
        subject=message.subject,
        body=message.text[:CLASSIFIER_TEXT_BYTES],
        headers=message.headers[:200],
        sender=message.sender,
        channel=channel_kind(message.channel),
    )


def default_verdict(level: str) -> Verdict:
    return Verdict(
        severity=level, jump_queue=False, score=0.0, hits=(), model_vote=None, model_version=None
    )


def classify(
    message: ParsedMessage, customer: Customer, engine: Classifier | None, default_level: str
) -> Verdict:
    del customer  # part of the interface: plan-aware classification may use it later
    if engine is None or message.gateway_text:
        # Text we wrote ourselves says nothing of how urgent the sender's problem is.
        return default_verdict(default_level)
    return engine.classify(to_input(message))
