"""Every verdict the classifier gives on the shipped corpora, the SpamAssassin mails and the
Endava tickets, one JSON line each, so a change meant only to make classification faster can
prove it changed no verdict: run it before and after (same model directory) and compare the
files byte for byte (`cmp`). Each input is classified in batches of 64 (classify_many) and one
by one (classify); a line holds both verdicts' to_json() and repr() (full floats).

    .venv/bin/python bench/verdict_fingerprint.py OUT.jsonl [--model-dir DIR]

The first run trains the default model into --model-dir (default: a directory under /tmp
shared by runs); later runs load it, so before and after read the same model. Measurement
only; nothing is asserted. The dev set is never read.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifiers.engine import build_engine  # noqa: E402
from classifiers.settings import ClassifierSettings  # noqa: E402
from classifiers.training import load_examples  # noqa: E402
from classifiers.types import TextInput  # noqa: E402
from tests.classifiers.mail_corpus import SPAMASSASSIN, corpus  # noqa: E402

TICKETS = ROOT.parent / "shared" / "data" / "tickets" / "endava" / "all_tickets.csv"
FOLDERS = ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2")
ENDAVA_TICKETS = 2000
# The headers the pipeline passes for a plain support mail (bench/stage_budgets.py's shape).
HEADERS = (("from", "contact@customer.example"), ("to", "support@example.com"),
           ("mime-version", "1.0"), ("content-type", "text/plain; charset=utf-8"))


def inputs() -> dict[str, list[TextInput]]:
    sets: dict[str, list[TextInput]] = {}
    data = ROOT / "classifiers" / "data"
    for path in [data / "train.jsonl", data / "eval.jsonl", *sorted(data.glob("corpus/*.jsonl"))]:
        sets[path.name] = [e.as_input() for e in load_examples(path)]
    if SPAMASSASSIN.is_dir():
        sets["spamassassin"] = [inp for _, inp in corpus(*FOLDERS)]
    if TICKETS.is_file():
        with TICKETS.open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r["body"].strip()][:ENDAVA_TICKETS]
        sets["endava"] = [TextInput(r["title"], r["body"], HEADERS, "contact@customer.example")
                          for r in rows]
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/intake-verdict-fingerprint"))
    args = ap.parse_args()
    engine, problems = build_engine(ROOT / "config" / "rules.d", ClassifierSettings(),
                                    args.model_dir)
    assert engine is not None, problems
    with args.out.open("w", encoding="utf-8") as fh:
        for name, batch in inputs().items():
            batched = []
            for i in range(0, len(batch), 64):
                batched += engine.classify_many(batch[i:i + 64])
            for i, (many, one) in enumerate(zip(batched, map(engine.classify, batch),
                                                strict=True)):
                fh.write(json.dumps({"set": name, "i": i, "batch": many.to_json(),
                                     "batch_repr": repr(many), "single": one.to_json(),
                                     "single_repr": repr(one)}, sort_keys=True) + "\n")
            print(f"{name}: {len(batch)} verdicts", file=sys.stderr)


if __name__ == "__main__":
    main()
