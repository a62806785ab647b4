"""Stage 2: which account, contact and plan a message comes from.

Owns the choice of *which* identity of a message counts (the From: address for mail, the
caller's number for Twilio). Never touches storage; the directory is an in-memory value.
"""

from __future__ import annotations

from gateway.message import Customer, ParsedMessage
from gateway.policy.directory import Directory


def identify(message: ParsedMessage, directory: Directory) -> Customer:
    return directory.identify(message.sender, message.channel)
