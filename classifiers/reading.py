"""What the classifier reads: one place that turns a TextInput into the normalised text the rules
see, the severity dimensions, and the text the model sees (dimension tokens first).

Training and classification both go through `read`, so the model is always fitted on exactly
what it will later be shown. Never imports the gateway or the channels.
"""

from __future__ import annotations

from dataclasses import dataclass

from classifiers.dimensions import Dimensions, extract
from classifiers.model import model_text
from classifiers.normalise import NormalisedText, normalise
from classifiers.types import TextInput


@dataclass(frozen=True)
class Reading:
    original: TextInput
    normalised: NormalisedText
    dimensions: Dimensions
    model_text: str

    @property
    def for_rules(self) -> TextInput:
        """The input with its subject and body normalised; headers, sender, channel as sent."""
        original = self.original
        return TextInput(self.normalised.subject, self.normalised.body, original.headers,
                         original.sender, original.channel)


def read(inp: TextInput, body_chars: int = 2048) -> Reading:
    norm = normalise(inp.subject, inp.body, inp.channel)
    dims = extract(norm.text[: body_chars + 256])
    text = model_text(norm.subject, norm.body, inp.channel, body_chars, dims.tokens())
    return Reading(inp, norm, dims, text)
