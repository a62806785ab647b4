"""What does starting a worker cost? `gateway worker --drain` from start to exit, one message.

The peer bench's pipe figure (`vs_django_helpdesk.py`) and every daemon start and restart pay
a worker's start-up: imports, the config and its policy, the classifier's rules and model,
the schema check. In one run, on the same machine, this times:

  python -c pass              the interpreter's own start
  gateway worker --drain      one piped message (spooled untimed just before) drained into a
                              ticket by a fresh worker process, exit included
  ... (baseline)              the same from another source tree (--baseline-tree), run by the
                              same interpreter in the same run, on the same state directory

Each is run --runs times, alternating; it prints the best and the median wall time in ms. The
model is trained once, before any timing; byte-code caches are written once. No assertions.

    .venv/bin/python bench/worker_startup.py [--runs 10] [--baseline-tree /work/main]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest_startup import MESSAGE, config_copy, startup_arguments  # noqa: E402
from bench.ingest_startup import timed as run  # noqa: E402


def main() -> None:
    args, env = startup_arguments(__doc__, 10)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        config = config_copy(Path(tmp))
        gateway = [py, "-m", "gateway", "--config", str(config)]
        trees = [("gateway worker --drain", {**env, "PYTHONPATH": str(ROOT)})]
        if args.baseline_tree:
            trees.append(("gateway worker --drain (baseline)",
                          {**env, "PYTHONPATH": str(args.baseline_tree.resolve())}))
        run([*gateway, "ingest", "--quiet"], trees[0][1], MESSAGE)
        run([*gateway, "worker", "--drain"], trees[0][1], None)  # trains the model: never timed
        for _, tree_env in trees:  # page cache and .pyc files of each tree
            run([*gateway, "worker", "--drain"], tree_env, None)
        times: dict[str, list[float]] = {"python -c pass": []}
        times.update({name: [] for name, _ in trees})
        for n in range(args.runs):  # alternate, so a burst of load hits every case alike
            times["python -c pass"].append(run([py, "-c", "pass"], env, None) * 1000)
            for name, tree_env in trees:
                message = MESSAGE.replace(b"<bench@example>", f"<bench-{n}-{name}>".encode())
                run([*gateway, "ingest", "--quiet"], tree_env, message)
                times[name].append(run([*gateway, "worker", "--drain"], tree_env, None) * 1000)

    print(f"{args.runs} runs each, alternating; wall ms per process ({os.cpu_count()} CPUs)")
    print(f"{'':36} {'best':>8} {'median':>8}")
    for name, values in times.items():
        print(f"{name:36} {min(values):8.0f} {statistics.median(values):8.0f}")


if __name__ == "__main__":
    main()
