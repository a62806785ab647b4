"""What does one `gateway ingest` process cost? (issue 20 outcome 3: under 100 ms wall)

An MTA's pipe transport starts one process per message, so the command's start-up is the pipe
channel's throughput. In one run, on the same machine, this times:

  python -c pass         the interpreter's own start (the floor no command can go under)
  import spool           `python -c "import channels.pipe"`: what the spool path costs to import
  gateway ingest         the real command, a message on stdin, spooled durably (fsync on)
  gateway ingest (base)  the same command from another source tree (--baseline-tree), e.g. the
                         main branch, run by the same interpreter in the same run

Each is run --runs times, alternating; it prints the best and the median wall time in ms and
the ratio of ingest to the interpreter's start. Byte-code caches are written once before timing
(a packaged install ships them; PYTHONDONTWRITEBYTECODE would otherwise recompile every module
on every start). No assertions: the figures depend on the machine and its load.

    .venv/bin/python bench/ingest_startup.py [--runs 30] [--baseline-tree /work/main]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MESSAGE = (
    b"From: dana@acme-clinic.example\r\nTo: support@example.com\r\n"
    b"Subject: Checkout fails\r\nMessage-ID: <bench@example>\r\n\r\nEvery user sees an error.\r\n"
)


def config_copy(into: Path) -> Path:
    """The sample config with its state directory inside `into`."""
    config = into / "config"
    shutil.copytree(ROOT / "config", config)
    toml = config / "gateway.toml"
    text = toml.read_text()
    toml.write_text(text.replace('state_dir = ".state"', f'state_dir = "{into / "state"}"', 1))
    return config


def timed(cmd: list[str], env: dict[str, str], stdin: bytes | None) -> float:
    started = time.perf_counter()
    # cwd=/: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH.
    done = subprocess.run(cmd, input=stdin, env=env, capture_output=True, cwd="/")
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.decode()[-400:]}")
    return elapsed


def startup_arguments(doc: str | None, runs: int) -> tuple[argparse.Namespace, dict[str, str]]:
    """A start-up bench's options (--runs, --baseline-tree) and the environment its processes
    run in (byte-code caches written and read, as a packaged install has them)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=runs)
    ap.add_argument("--baseline-tree", type=Path, help="another checkout to time the same way")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return ap.parse_args(), env


def main() -> None:
    args, env = startup_arguments(__doc__, 30)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        config = config_copy(Path(tmp))
        ingest = [py, "-m", "gateway", "--config", str(config), "ingest", "--quiet"]
        cases: list[tuple[str, list[str], dict[str, str], bytes | None]] = [
            ("python -c pass", [py, "-c", "pass"], env, None),
            ("import channels.pipe", [py, "-c", "import channels.pipe"], env, None),
            ("gateway ingest", ingest, {**env, "PYTHONPATH": str(ROOT)}, MESSAGE),
        ]
        if args.baseline_tree:
            base_env = {**env, "PYTHONPATH": str(args.baseline_tree.resolve())}
            cases.append(("gateway ingest (baseline)", ingest, base_env, MESSAGE))
        for _, cmd, case_env, stdin in cases:  # warm the page cache and write .pyc files
            timed(cmd, case_env, stdin)
        times: dict[str, list[float]] = {name: [] for name, *_ in cases}
        for _ in range(args.runs):  # alternate, so a burst of load hits every case alike
            for name, cmd, case_env, stdin in cases:
                times[name].append(timed(cmd, case_env, stdin) * 1000)
        spooled = len(list((Path(tmp) / "state" / "spool" / "incoming").glob("*.msg")))

    floor = min(times["python -c pass"])
    print(f"{args.runs} runs each, alternating; wall ms per process ({os.cpu_count()} CPUs)")
    print(f"{'':28} {'best':>8} {'median':>8} {'best / python':>14}")
    for name, values in times.items():
        best = min(values)
        print(f"{name:28} {best:8.1f} {statistics.median(values):8.1f} {best / floor:13.1f}x")
    print(f"messages spooled: {spooled}")


if __name__ == "__main__":
    main()
