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

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest_startup import MESSAGE, config_copy  # noqa: E402


def run(cmd: list[str], env: dict[str, str], stdin: bytes | None = None) -> float:
    started = time.perf_counter()
    # cwd=/: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH.
    done = subprocess.run(cmd, input=stdin, env=env, capture_output=True, cwd="/")
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.decode()[-400:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--baseline-tree", type=Path, help="another checkout to time the same way")
    args = ap.parse_args()

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        config = config_copy(Path(tmp))
        gateway = [py, "-m", "gateway", "--config", str(config)]
        trees = [("gateway worker --drain", {**env, "PYTHONPATH": str(ROOT)})]
        if args.baseline_tree:
            trees.append(("gateway worker --drain (baseline)",
                          {**env, "PYTHONPATH": str(args.baseline_tree.resolve())}))
        run([*gateway, "ingest", "--quiet"], trees[0][1], MESSAGE)
        run([*gateway, "worker", "--drain"], trees[0][1])  # trains the model: never timed
        for _, tree_env in trees:  # page cache and .pyc files of each tree
            run([*gateway, "worker", "--drain"], tree_env)
        times: dict[str, list[float]] = {"python -c pass": []}
        times.update({name: [] for name, _ in trees})
        for n in range(args.runs):  # alternate, so a burst of load hits every case alike
            times["python -c pass"].append(run([py, "-c", "pass"], env) * 1000)
            for name, tree_env in trees:
                message = MESSAGE.replace(b"<bench@example>", f"<bench-{n}-{name}>".encode())
                run([*gateway, "ingest", "--quiet"], tree_env, message)
                times[name].append(run([*gateway, "worker", "--drain"], tree_env) * 1000)

    print(f"{args.runs} runs each, alternating; wall ms per process ({os.cpu_count()} CPUs)")
    print(f"{'':36} {'best':>8} {'median':>8}")
    for name, values in times.items():
        print(f"{name:36} {min(values):8.0f} {statistics.median(values):8.0f}")


if __name__ == "__main__":
    main()
