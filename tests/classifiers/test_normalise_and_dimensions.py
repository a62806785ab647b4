"""Per-channel normalisation, severity dimensions, the shipped corpus and the evaluation module."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from classifiers.dimensions import Dimensions, extract, matrix_level
from classifiers.engine import Engine
from classifiers.evaluation import figures, lodo_folds
from classifiers.normalise import FORWARD_MARK, normalise
from classifiers.training import shipped_examples
from classifiers.types import TextInput


def test_a_voicemail_with_fillers_is_normalised_before_rules_read_it() -> None:
    text = normalise("", "hi um this is uh Dana the the system is like, totally down since "
                     "nine thirty we have twenty five patients waiting", "voicemail")
    assert text.body == ("hi this is Dana the system is totally down since 9:30 we have 25 "
                         "patients waiting")
    assert {"fillers", "numbers"} <= set(text.steps)


def test_sms_shorthand_is_expanded() -> None:
    text = normalise("", "pls call sys down rn cant log in w/ any acct b/c svr error 2day u there",
                     "sms")
    assert text.body == ("please call system down right now can't log in with any account "
                         "because server error today you there")


def test_a_reply_is_judged_on_its_new_text_not_the_quoted_urgent_mail() -> None:
    body = ("Thanks, all working now.\n\nOn Tue, 3 Dec 2026 at 09:00, Ann <a@b.example> wrote:\n"
            "> The portal is down for everyone, nobody can log in!\n")
    text = normalise("Re: Portal down", body, "email")
    assert "nobody" not in text.body and "quoted" in text.steps


def test_signature_and_disclaimer_are_removed() -> None:
    body = ("Printer jam on the second floor.\n\nKind regards,\nAnn Lee\nCEO, Outage Corp\n"
            "-- \nCONFIDENTIALITY NOTICE: this email is confidential.")
    assert normalise("Printer", body, "email").body == "Printer jam on the second floor."


def test_a_forwarded_mail_comes_after_the_new_text() -> None:
    body = ("Can you look at this?\n\n---------- Forwarded message ---------\nFrom: Bob\n"
            "Subject: x\n\nThe portal is down")
    text = normalise("Fwd: x", body, "email")
    assert text.body.index("Can you look") < text.body.index(FORWARD_MARK) < text.body.index(
        "portal is down")


@settings(max_examples=200, deadline=None)
@given(subject=st.text(max_size=80), body=st.text(max_size=600),
       channel=st.sampled_from(["email", "sms", "voicemail"]))
def test_normalisation_and_dimensions_never_raise_and_never_grow_text_much(
    subject: str, body: str, channel: str
) -> None:
    text = normalise(subject, body, channel)
    assert len(text.body) <= 3 * len(body) + 20
    dims = extract(text.text)
    assert matrix_level(dims) in ("urgent", "high", "normal", "low")


def test_dimensions_name_scope_state_time_and_criticality() -> None:
    dims = extract("Nobody can log in to the portal since 9am")
    assert dims.explain() == "scope=everyone state=down time=now critical=yes"
    assert extract("down again").state == "down"
    assert extract("Thanks for fixing yesterday's outage so quickly").time == "past"
    assert extract("Is there planned maintenance next week?").time == "planned"
    assert extract("Pages take 20 seconds to load for everyone").state == "slow"


def test_matrix_crosses_impact_and_urgency() -> None:
    assert matrix_level(Dimensions("everyone", "down", "now", False)) == "urgent"
    assert matrix_level(Dimensions("everyone", "slow", "now", True)) == "high"
    assert matrix_level(Dimensions("one", "wrong", "now", False)) == "normal"
    assert matrix_level(Dimensions("everyone", "down", "past", False)) == "normal"
    assert matrix_level(Dimensions("unknown", "question", "planned", False)) == "low"


def test_the_explanation_shows_dimensions_and_the_normalised_text(engine: Engine) -> None:
    verdict = engine.classify(TextInput("", "pls help sys down rn for every1", channel="sms"))
    assert "scope=everyone state=down time=now" in verdict.explain()
    assert "normalised=shorthand" in verdict.explain()
    assert verdict.normalised_text == "please help system down right now for everyone"
    assert verdict.to_json()["normalised_text"] == verdict.normalised_text


def test_batch_classification_gives_the_same_verdicts_as_one_by_one(engine: Engine) -> None:
    inputs = [TextInput(e.subject, e.body, e.headers, "", e.channel)
              for e in shipped_examples()[::40]]
    assert len(inputs) >= 16  # large enough for the batch path
    batch = engine.classify_many(inputs)
    single = [engine.classify(i) for i in inputs]
    assert [v.severity for v in batch] == [v.severity for v in single]
    assert [v.jump_queue for v in batch] == [v.jump_queue for v in single]


def test_shipped_corpus_has_2000_examples_300_per_level_and_channel_with_provenance() -> None:
    examples = shipped_examples()
    assert len(examples) >= 2000
    levels, channels = Counter(e.level for e in examples), Counter(e.channel for e in examples)
    assert min(levels[lvl] for lvl in ("urgent", "high", "normal", "low")) >= 300
    assert min(channels[ch] for ch in ("email", "sms", "voicemail")) >= 300
    assert all(e.industry and e.channel and e.source for e in examples)


def test_lodo_folds_keep_each_industry_whole() -> None:
    examples = shipped_examples()
    folds = lodo_folds(examples, 8)
    by_industry: dict[str, set[int]] = {}
    for e, f in zip(examples, folds, strict=True):
        by_industry.setdefault(e.industry, set()).add(f)
    assert all(len(fs) == 1 for fs in by_industry.values())
    assert len(set(folds)) == 8


def test_figures_count_urgent_recall_precision_and_exact_level() -> None:
    fig = figures(["urgent", "urgent", "high", "low"], ["urgent", "high", "urgent", "low"])
    assert (fig.exact, fig.urgent_recall, fig.urgent_precision) == (0.5, 0.5, 0.5)
    assert fig.confusion[0] == (1, 1, 0, 0)
    assert fig.jumps is None and "jumped" not in fig.line()  # nothing was said of jumps


def test_figures_count_queue_jumps_of_urgent_messages_and_of_the_others_apart() -> None:
    fig = figures(["urgent", "urgent", "urgent", "high", "low"],
                  ["urgent", "urgent", "high", "urgent", "low"],
                  [True, False, False, True, False])
    assert fig.jumps == (1, 3, 1, 2)
    assert "jumped the queue: urgent 1/3 (0.33), others 1/2" in fig.line()


def test_dimension_tables_are_written_in_lower_case_as_extract_lowers_the_text() -> None:
    # extract() lower-cases the text once and the tables are compiled case-sensitive (faster
    # than re.IGNORECASE): an upper-case letter in a table would never match.
    import re

    import classifiers.dimensions as dims

    tables = [v for v in vars(dims).values() if isinstance(v, re.Pattern)]
    assert len(tables) >= 14
    for table in tables:
        assert not re.search(r"[A-Z]", re.sub(r"\\.", "", table.pattern)), table.pattern
        assert not table.flags & re.IGNORECASE


def test_lowo_folds_hold_one_writer_each_and_train_only_writers_are_never_tested() -> None:
    from classifiers.evaluation import lowo_folds

    examples = shipped_examples()
    folds = lowo_folds(examples, frozenset({"writer-f"}))
    by_writer: dict[str, set[int]] = {}
    for e, f in zip(examples, folds, strict=True):
        by_writer.setdefault(e.source, set()).add(f)
    assert by_writer.pop("writer-f") == {-1}
    assert all(len(fs) == 1 for fs in by_writer.values())
    assert len({f for fs in by_writer.values() for f in fs}) == len(by_writer) >= 6
