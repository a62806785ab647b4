"""One score -> one level: rules plus the model's bounded vote, mapped through the thresholds.

Owns the queue-jump decision and its guards:
- the score must reach `jump_queue_threshold` *without* the sender's own urgency claims
  (`sender_urgency` rules: X-Priority, Importance, "URGENT" in the subject), so a claim alone
  never jumps the queue;
- content rules themselves must add at least `jump_min_rule_score`: the model alone, however
  confident, never jumps (it is overconfident on text unlike its training data, e.g. spam);
- any `spam_guard` hit (upstream X-Spam-Flag, bulk/list headers, spam wording, HTML-only
  marketing) forbids jumping whatever the score.
An Engine is immutable; the gateway builds a new one on reload and swaps it whole. Never imports
the gateway or the channels, never touches storage other than the model directory.
"""

from __future__ import annotations

from pathlib import Path

from classifiers.model import LoadedModel, ModelFileError, text_of
from classifiers.rules import RuleSet, load_rules
from classifiers.settings import ClassifierSettings
from classifiers.training import ensure_model
from classifiers.types import DEFAULT_LEVELS, ModelVote, Problem, RuleHit, TextInput, Verdict

# Share of the model's weight each of its levels is worth: the vote adds
# model_weight * sum(p(level) * anchor(level)) points, never more than model_weight.
MODEL_ANCHORS: dict[str, float] = {"urgent": 1.0, "high": 0.65, "normal": 0.4, "low": 0.05}

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

    def _vote(self, inp: TextInput) -> ModelVote | None:
        model, settings = self._model, self._settings
        if model is None or model.trained_examples < settings.min_training_examples:
            return None  # silent until trained on enough examples
        proba = model.probabilities([text_of(inp, settings.body_chars_for_model)])[0]
        best = int(proba.argmax())
        points = settings.model_weight * sum(
            float(p) * MODEL_ANCHORS[level] for level, p in zip(model.levels, proba, strict=True)
        )
        return ModelVote(
            level=model.levels[best],
            probability=float(proba[best]),
            score=0.0 if settings.shadow else round(points, 3),
            version=model.version,
            shadow=settings.shadow,
        )

    def classify(self, inp: TextInput) -> Verdict:
        settings = self._settings
        fired = self._rules.match(inp, settings.body_chars_for_rules)
        vote = self._vote(inp)
        score = sum(rule.score for rule in fired) + (vote.score if vote else 0.0)
        claimed = sum(rule.score for rule in fired if rule.kind == "sender_urgency")
        content = sum(rule.score for rule in fired if rule.kind == "content")
        guards = tuple(rule.name for rule in fired if rule.kind == "spam_guard")
        jump = (
            not guards
            and score >= settings.jump_queue_threshold
            and score - max(claimed, 0.0) >= settings.jump_queue_threshold
            and content >= settings.jump_min_rule_score
        )
        return Verdict(
            severity=settings.level_for(score),
            jump_queue=jump,
            score=round(score, 3),
            hits=tuple(RuleHit(r.name, r.score, r.description) for r in fired),
            model_vote=vote,
            model_version=self.model_version,
            guards=guards,
        )


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
