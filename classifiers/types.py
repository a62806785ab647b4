"""Values the classifier takes and gives: plain frozen dataclasses, no behaviour beyond formatting.

This module owns the classifier's vocabulary. It must never import anything from `gateway` or
`channels`: the classifier knows nothing of where a message came from or where a ticket goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_LEVELS: tuple[str, ...] = ("urgent", "high", "normal", "low")
CHANNELS: tuple[str, ...] = ("email", "sms", "voicemail")


@dataclass(frozen=True)
class TextInput:
    """What the classifier reads. Header names are lower-cased by the caller."""

    subject: str
    body: str
    headers: tuple[tuple[str, str], ...] = ()
    sender: str = ""
    channel: str = "email"

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]


@dataclass(frozen=True)
class RuleHit:
    name: str
    score: float
    description: str = ""


@dataclass(frozen=True)
class ModelVote:
    """The model's opinion: its most likely level, that level's probability, and the points it
    added to the score (0.0 in shadow mode)."""

    level: str
    probability: float
    score: float
    version: str
    shadow: bool = False

    @property
    def rule_name(self) -> str:
        return f"MODEL_{self.level.upper()}"


def _fmt(value: float) -> str:
    return f"{value:.1f}"


@dataclass(frozen=True)
class Verdict:
    severity: str
    jump_queue: bool
    score: float
    hits: tuple[RuleHit, ...]
    model_vote: ModelVote | None
    model_version: str | None
    guards: tuple[str, ...] = field(default=())
    # What the classifier judged, after per-channel normalisation (classifiers/normalise.py),
    # the steps that changed it, and the severity dimensions read from it.
    normalised_text: str = ""
    normalisation: tuple[str, ...] = field(default=())
    dimensions: str = ""
    # Why it jumped the queue (the corroborating evidence), or for an urgent verdict that did
    # not, why not ("score<8", "only-the-senders-claims", "no-corroboration"); spam guards are
    # named in `guards`.
    jump_reason: str = ""

    def explain(self) -> str:
        """One line an operator can read:
        ``severity=urgent score=9.4 jump_queue=yes hits=KW_OUTAGE(3.0) MODEL_URGENT(3.1 p=0.91)
        model=2026-11-30.1``."""
        parts = [f"{hit.name}({_fmt(hit.score)})" for hit in self.hits]
        vote = self.model_vote
        if vote is not None:
            shadow = " shadow" if vote.shadow else ""
            parts.append(f"{vote.rule_name}({_fmt(vote.score)} p={vote.probability:.2f}{shadow})")
        text = (
            f"severity={self.severity} score={_fmt(self.score)} "
            f"jump_queue={'yes' if self.jump_queue else 'no'} hits={' '.join(parts) or '-'} "
            f"model={self.model_version or '-'}"
        )
        if self.dimensions:
            text += f" {self.dimensions}"
        if self.normalisation:
            text += f" normalised={','.join(self.normalisation)}"
        if self.guards:
            text += f" no_jump_because={','.join(self.guards)}"
        elif self.jump_reason:
            verb = "jump_because" if self.jump_queue else "no_jump_because"
            text += f" {verb}={self.jump_reason}"
        return text

    def to_json(self) -> dict[str, object]:
        vote = self.model_vote
        return {
            "severity": self.severity,
            "jump_queue": self.jump_queue,
            "score": round(self.score, 3),
            "hits": [
                {"name": h.name, "score": round(h.score, 3), "description": h.description}
                for h in self.hits
            ],
            "model_version": self.model_version,
            "model_vote": None
            if vote is None
            else {
                "name": vote.rule_name,
                "level": vote.level,
                "probability": round(vote.probability, 4),
                "score": round(vote.score, 3),
                "version": vote.version,
                "shadow": vote.shadow,
            },
            "guards": list(self.guards),
            "jump_reason": self.jump_reason,
            "dimensions": self.dimensions,
            "normalisation": list(self.normalisation),
            "normalised_text": self.normalised_text,
            "explanation": self.explain(),
        }


@dataclass(frozen=True)
class Problem:
    """A configuration problem, precise enough to fix at 3 a.m.: file, key, line, rule."""

    file: str
    key: str | None
    line: int | None
    message: str
    rule: str | None = None

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line is not None else "")
        what = " ".join(
            x for x in (f"rule {self.rule}" if self.rule else "", self.key or "") if x
        )
        return f"{where}: {what + ': ' if what else ''}{self.message}"


@dataclass(frozen=True)
class LabelledExample:
    """One message with the level a human gave it (shipped corpus or an agent's correction)."""

    subject: str
    body: str
    level: str
    channel: str = "email"
    headers: tuple[tuple[str, str], ...] = ()
    industry: str = ""  # the customer's line of business, for leave-one-domain-out
    source: str = ""  # who wrote or supplied it (writer-a, session-1, an agent's correction)

    def as_input(self) -> TextInput:
        return TextInput(self.subject, self.body, self.headers, "", self.channel)
