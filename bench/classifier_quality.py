"""How well the classifier's text model generalises, beside a plain baseline, on real tickets.

Endava help-desk tickets (urgency 0-3, 0 most urgent) and Hadoop Jira issues (Priority). Train on
a stratified 80 % split, report macro-F1 on the rest for (a) our pipeline (word + char TF-IDF,
balanced logistic regression) and (b) plain TF-IDF + LogisticRegression, in the same run.
Print only, no asserts. Usage: .venv/bin/python bench/classifier_quality.py
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from classifiers.fitting import new_pipeline  # noqa: E402
from classifiers.model import model_text  # noqa: E402

DATA = (ROOT / "../shared/data/tickets").resolve()
csv.field_size_limit(10**8)


def endava() -> tuple[list[str], list[str]]:
    texts, labels = [], []
    with (DATA / "endava/all_tickets.csv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            texts.append(model_text(row["title"], row["body"], "email"))
            labels.append(row["urgency"])
    return texts, labels


def hadoop() -> tuple[list[str], list[str]]:
    texts, labels = [], []
    with (DATA / "hadoop-jira/hadoop_bugs.csv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("Priority"):
                texts.append(model_text(row["Summary"], row.get("Description") or "", "email"))
                labels.append(row["Priority"])
    return texts, labels


def run(name: str, texts: list[str], labels: list[str]) -> None:
    x_tr, x_te, y_tr, y_te = train_test_split(texts, labels, test_size=0.2, random_state=0,
                                              stratify=labels)
    results = []
    for label, pipe in (
        ("baseline TF-IDF + LogisticRegression", make_pipeline(
            TfidfVectorizer(), LogisticRegression(max_iter=2000, random_state=0))),
        ("ours (word+char TF-IDF, balanced LR)", new_pipeline(0)),
    ):
        start = time.monotonic()
        pipe.fit(x_tr, y_tr)
        f1 = f1_score(y_te, pipe.predict(x_te), average="macro")
        results.append(f1)
        print(f"  {label:<40} macro-F1 {f1:.3f}  ({time.monotonic() - start:.1f}s)")
    print(f"  difference ours - baseline: {results[1] - results[0]:+.3f}")


def main() -> None:
    if not DATA.is_dir():
        print(f"shared data not found at {DATA}; nothing to measure")
        return
    for name, loader in (("endava (urgency 0-3)", endava), ("hadoop-jira (Priority)", hadoop)):
        texts, labels = loader()
        counts = {lvl: labels.count(lvl) for lvl in sorted(set(labels))}
        print(f"{name}: {len(texts)} tickets, classes {counts}")
        run(name, texts, labels)


if __name__ == "__main__":
    main()
