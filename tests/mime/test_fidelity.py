"""Issue 19, outcome 5: the parser held to reviewed expectations on real-world fixtures.

For every file of ../shared/data/mail/{python-email,flanker,spamscope} there is an expected file
under tests/mime/expected/ (written once from a draft, reviewed by hand against the raw file,
each with a `review` note): refused or not, the decoded subject, whether the body has text, and
every attachment's name, type and size. A change to the parser that drops an attachment, empties
a body or mangles a subject fails here, naming the fixture. (tests/mime/fidelity.py writes drafts
for new fixtures; it never overwrites a reviewed file.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from tests.mime.fidelity import EXPECTED, expected_path, fixtures, observe

EXPECTED_FILES = sorted(EXPECTED.rglob("*.json"))


def test_every_fixture_has_a_reviewed_expected_file(shared_mail: Path) -> None:
    missing = [str(f) for f in fixtures(shared_mail) if not expected_path(shared_mail, f).exists()]
    assert missing == [], "run `python -m tests.mime.fidelity` and review the drafts"
    drafts = [str(p) for p in EXPECTED_FILES if "DRAFT" in json.loads(p.read_text())["review"]]
    assert drafts == [], "drafts must be reviewed against the raw file before they count"


@pytest.mark.parametrize(
    "expected", EXPECTED_FILES, ids=[str(p.relative_to(EXPECTED))[:-5] for p in EXPECTED_FILES]
)
def test_the_parse_of_each_fixture_matches_its_reviewed_expectation(
    expected: Path, shared_mail: Path
) -> None:
    fixture = SHARED_DATA / "mail" / str(expected.relative_to(EXPECTED))[: -len(".json")]
    want = json.loads(expected.read_text())
    del want["review"]
    assert observe(fixture.read_bytes()) == want
