"""One score -> one level: the model's vote, the severity matrix and the rules, mapped through
the thresholds.

Every message is first *read* (classifiers/reading.py): normalised per channel, its severity
dimensions extracted, its model text built. Then
`score = MODEL_<LEVEL> + MATRIX_<LEVEL> + rule_weight * sum(rule hits)`:
- the model's vote puts the score in the middle of its most likely level's band
  (model_weight x anchor of that level: urgent 1.0, high 0.7, normal 0.39, low 0.05);
- the severity matrix (scope x state x time x criticality) moves it up to `matrix_weight`
  toward its own level when it disagrees;
- rules refine it at `rule_weight` of their score.

Owns the queue-jump decision and its guards:
- the score must reach `jump_queue_threshold` *without* the sender's own urgency claims
  (`sender_urgency` rules: X-Priority, Importance, "URGENT" in the subject), so a claim alone
  never jumps the queue;
- explicit evidence must corroborate it: content rules add at least `jump_min_rule_score` at
  full score, or the severity matrix reads urgent and the model's p(urgent) is at least
  `jump_min_model_probability`, or the matrix reads any problem now (above low) and p(urgent)
  is at least `jump_min_model_probability_any_problem`. The model alone, however confident,
  never jumps (it is overconfident on text unlike its training data, e.g. spam);
- any `spam_guard` hit (upstream X-Spam-Flag, bulk/list headers, spam wording, HTML-only
  marketing) forbids jumping whatever the score.
An Engine is immutable; the gateway builds a new one on reload and swaps it whole. Never imports
the gateway or the channels, never touches storage other than the model directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from classifiers.dimensions import LEVELS as MATRIX_LEVELS
from classifiers.dimensions import matrix_level
from classifiers.model import LoadedModel, ModelFileError
from classifiers.reading import Reading, read
from classifiers.rules import Rule, RuleSet, load_rules
from classifiers.settings import ClassifierSettings
from classifiers.training import ensure_model
from classifiers.types import DEFAULT_LEVELS, ModelVote, Problem, RuleHit, TextInput, Verdict

# Share of the model's weight its most likely level is worth: with model_weight 9 and the
# default thresholds (8/5/2) each lands mid-band (9.0, 6.3, 3.5, 0.45), never above
# model_weight. (Before issue 16 the vote was the probability-weighted sum of the anchors,
# which pulled uncertain urgent messages down to high: leave-one-domain-out urgent recall
# 0.89 against 0.95 with the most likely level's anchor.)
MODEL_ANCHORS: dict[str, float] = {"urgent": 1.0, "high": 0.7, "normal": 0.39, "low": 0.05}

__all__ = ["Engine", "RuleSet", "build_engine", "load_rules"]


class Engine:
    """Classifies one message. Immutable after construction."""

    __slots__ = ("_model", "_rules", "_settings")

    def __init__(self, rules: RuleSet, settings: ClassifierSettings,
                 model: LoadedModel | None) -> None:
        self._rules = rules
        self._settings = settings
        self._model = model

    @property
    def rules(self) -> RuleSet:
        return self._rules

    @property
    def settings(self) -> ClassifierSettings:
        return self._settings

    @property
    def model_version(self) -> str | None:
        return self._model.version if self._model is not None else None

    def hit_names(self, levels: Sequence[str]) -> frozenset[str]:
        """Every name a verdict's hits can carry (routing.toml's `hits` may name these): the
        enabled rules, the severity matrix per level, and the model's vote per level."""
        model_levels = self._model.levels if self._model is not None else ()
        votes = {*levels, *model_levels, *MATRIX_LEVELS}
        return frozenset(
            {r.name for r in self._rules.rules}
            | {_matrix_name(level) for level in MATRIX_LEVELS}
            | {ModelVote(level, 0.0, 0.0, "").rule_name for level in votes}
        )

    def _votes(self, readings: Sequence[Reading]) -> list[tuple[ModelVote | None, float]]:
        """The model's vote on each reading, with its probability of `urgent` (0.0 when
        silent)."""
        model, settings = self._model, self._settings
        if model is None or model.trained_examples < settings.min_training_examples:
            return [(None, 0.0)] * len(readings)  # silent until trained on enough examples
        probabilities = model.probabilities([r.model_text for r in readings])
        urgent = model.levels.index("urgent") if "urgent" in model.levels else None
        votes: list[tuple[ModelVote | None, float]] = []
        for proba in probabilities:
            best = int(proba.argmax())
            level = model.levels[best]
            points = settings.model_weight * MODEL_ANCHORS[level]
            votes.append((ModelVote(
                level=level,
                probability=float(proba[best]),
                score=0.0 if settings.shadow else round(points, 3),
                version=model.version,
                shadow=settings.shadow,
            ), float(proba[urgent]) if urgent is not None else 0.0))
        return votes

    def classify(self, inp: TextInput) -> Verdict:
        return self.classify_many([inp])[0]

    def classify_many(self, inputs: Sequence[TextInput]) -> list[Verdict]:
        """Verdicts for many messages, the model's vectorisation done once for all of them."""
        settings = self._settings
        readings = [read(inp, settings.body_chars_for_model) for inp in inputs]
        votes = self._votes(readings)
        return [self._verdict(r, v, p) for r, (v, p) in zip(readings, votes, strict=True)]

    def _matrix_hit(self, level: str, explained: str, vote: ModelVote | None) -> RuleHit | None:
        weight = self._settings.matrix_weight
        if weight == 0.0:
            return None
        toward = 0.0
        if vote is not None and vote.level in MATRIX_LEVELS:
            # +weight when the matrix is more severe than the model, -weight when less.
            diff = MATRIX_LEVELS.index(vote.level) - MATRIX_LEVELS.index(level)
            toward = weight * max(-1, min(1, diff))
        return RuleHit(_matrix_name(level), round(toward, 3), f"severity matrix: {explained}")

    def _verdict(self, reading: Reading, vote: ModelVote | None, p_urgent: float) -> Verdict:
        settings = self._settings
        fired = self._rules.match(reading.for_rules, settings.body_chars_for_rules,
                                  reading.dimensions.facts())
        # The shipped rules count at `rule_weight` (the model and the matrix now carry most of
        # the signal); an admin's own rule, or an admin's new score for a shipped one, counts
        # exactly what its file says: a local rule is a command the admin can reason about.
        def weighted(rule: Rule) -> float:
            return rule.score * (settings.rule_weight if rule.shipped else 1.0)

        hits = [RuleHit(r.name, round(weighted(r), 3), r.description) for r in fired]
        level = matrix_level(reading.dimensions)
        explained = reading.dimensions.explain()
        matrix = self._matrix_hit(level, explained, vote)
        if matrix is not None:
            hits.append(matrix)
        score = sum(h.score for h in hits) + (vote.score if vote else 0.0)
        claimed = sum(weighted(rule) for rule in fired if rule.kind == "sender_urgency")
        content = sum(rule.score for rule in fired if rule.kind == "content")
        guards = tuple(rule.name for rule in fired if rule.kind == "spam_guard")
        evidence = jump_corroboration(content, level, p_urgent, settings)
        threshold = settings.jump_queue_threshold
        if score < threshold:
            why_not = f"score<{threshold:g}"
        elif score - max(claimed, 0.0) < threshold:
            why_not = "only-the-senders-claims"
        else:
            why_not = "" if evidence else "no-corroboration"
        jump = not guards and not why_not
        severity = settings.level_for(score)
        return Verdict(
            severity=severity,
            jump_queue=jump,
            score=round(score, 3),
            hits=tuple(hits),
            model_vote=vote,
            model_version=self.model_version,
            guards=guards,
            normalised_text=reading.normalised.text,
            normalisation=reading.normalised.steps,
            dimensions=explained,
            # Why it jumped; for an urgent verdict that did not, why not (guards say their own).
            jump_reason=evidence if jump else (why_not if severity == "urgent" else ""),
        )


def jump_corroboration(
    content: float, matrix: str, p_urgent: float, settings: ClassifierSettings
) -> str:
    """The explicit evidence that corroborates an urgent score, named for the explanation, or
    "" when there is none: content rules at full score (an admin's own keyword, work stopped by
    an outage, a critical function broken with a deadline), or the severity matrix reading the
    policy's definition of urgent (down, for everyone, now) *and* the model confident it is
    urgent, or the matrix reading any problem now (above low: not a question, not a past or
    planned event) *and* the model more confident still.

    The matrix alone reads spam ("no one is turned down") and list mail as outages; the model
    alone is overconfident on text unlike its training data, and on a question about an outage.
    Neither alone jumps."""
    if content >= settings.jump_min_rule_score:
        return "content-rules"
    if matrix == "urgent" and p_urgent >= settings.jump_min_model_probability:
        return "matrix-urgent+model"
    if matrix != "low" and p_urgent >= settings.jump_min_model_probability_any_problem:
        return "problem-now+model"
    return ""


def _matrix_name(level: str) -> str:
    return f"MATRIX_{level.upper()}"


def build_engine(rules_dir: Path, settings: ClassifierSettings,
                 model_dir: Path) -> tuple[Engine | None, list[Problem]]:
    """Rules from `rules_dir` plus the current model in `model_dir` (built from the shipped
    corpus first if there is none). Any problem returns None so the caller keeps its old Engine.
    """
    rules, problems = load_rules(rules_dir)
    if set(settings.levels) != set(DEFAULT_LEVELS) or settings.levels != DEFAULT_LEVELS:
        unmapped = [lvl for lvl in settings.levels
                    if dict(settings.model_level_map).get(lvl) not in DEFAULT_LEVELS]
        if unmapped:
            problems.append(Problem("severity.toml", "classifier.model_level_map", None,
                                    f"levels {unmapped} are not mapped onto the model's levels"))
    model: LoadedModel | None = None
    try:
        model = ensure_model(model_dir, settings)
    except (ModelFileError, OSError) as exc:
        problems.append(Problem(str(model_dir), None, None, f"model: {exc}"))
    if rules is None or problems:
        return None, problems
    return Engine(rules, settings, model), []
