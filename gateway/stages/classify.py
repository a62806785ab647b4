"""Stage 5: how urgent is this message? Adapts a ParsedMessage to the classifier.

Owns the plug-in interface `classify(message, channel, customer) -> Verdict`. The classifier
package knows nothing of messages or storage; this adapter gives it plain text, headers and
the channel. Without an engine (no rules, no model), or for text the gateway wrote itself
(`ParsedMessage.gateway_text`: notes, receipts, prompts, issue 18 item 2), it returns the
configured default level: only the sender's own words are ever classified.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from classifiers.types import TextInput, Verdict
from gateway.message import Customer, ParsedMessage

CLASSIFIER_TEXT_BYTES = 8192  # the model and rules read the start: huge mail costs no more


class Classifier(Protocol):
    def classify(self, inp: TextInput) -> Verdict: ...

    def classify_many(self, inputs: Sequence[TextInput]) -> list[Verdict]: ...


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


def classify_batch(
    messages: Sequence[ParsedMessage], engine: Classifier | None, default_level: str
) -> list[Verdict]:
    """`classify` for a whole batch, in order: one call to the engine for every message whose
    words are the sender's own, so the model vectorises and multiplies once per batch rather
    than once per message (issue 20 outcome 1). The same verdicts as `classify` one by one."""
    verdicts = [default_verdict(default_level) for _ in messages]
    if engine is None:
        return verdicts
    own = [i for i, m in enumerate(messages) if not m.gateway_text]
    for i, verdict in zip(
        own, engine.classify_many([to_input(messages[i]) for i in own]), strict=True
    ):
        verdicts[i] = verdict
    return verdicts
