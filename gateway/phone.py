"""Phone numbers in one form, E.164 ("+16175550100"), wherever they come from.

Owns `normalise_phone`: the customer directory, the Twilio channel and parse stage, routing,
the customer import and erasure all compare numbers in this form. A pure function with no
gateway imports, so every layer may use it.
"""

from __future__ import annotations

import re


def normalise_phone(number: str) -> str:
    """E.164 form of a phone number as written by a person or by Twilio ("+16175550100")."""
    digits = re.sub(r"[^\d+]", "", number)
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    if not digits.startswith("+"):
        # A bare 10-digit number is North American, as in the policies we serve.
        digits = "+1" + digits if len(digits) == 10 else "+" + digits
    return digits
