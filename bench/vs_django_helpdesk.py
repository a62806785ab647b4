"""The gateway beside django-helpdesk on the same 1,000 real messages, measured in one run.

django-helpdesk is installed from PyPI into a throwaway virtualenv under a temporary directory,
with a minimal Django project: SQLite, a Queue with `email_box_type = 'local'` reading a
directory, Django's in-memory (locmem) email backend so nothing is sent. The first 1,000
SpamAssassin easy-ham messages (paths sorted by name: easy-ham-1/00001... to 01000...) are copied
into that directory and `manage.py get_email` is timed from a fresh database, three times:

* stock: the files as they are. get_email opens each file in text mode (UTF-8), so the first
  file with a non-UTF-8 byte raises UnicodeDecodeError out of the queue loop — it logs "Queue
  processing failed" and stops; every later file stays unprocessed, run after run;
* pre-decoded: every file decoded (UTF-8, invalid bytes replaced) and written back as UTF-8 first,
  so it can run through.

Then the gateway takes the same 1,000 files, from a fresh state directory each time:

* pipe: one `gateway ingest FILE...` process for all files (acceptance: each file fsynced in the
  spool), then `gateway worker --drain` (end to end: every message recorded as an intake);
* SMTP: `gateway run`, the files sent over loopback in `--sessions` concurrent SMTP sessions
  (acceptance: the last 250), end to end when the last intake is committed;
* a small sample of `gateway ingest` run once per message, as Postfix's pipe transport runs it.

The same work on both sides (issue 20 outcome 6): easy-ham is mostly mailing-list mail, which
the gateway records and never tickets (Precedence, List-*: DESIGN "Lessons") while
django-helpdesk opens a ticket for each. So by default both sides read *fair copies*: the mbox
`From ` line and every header that marks mail as automated (`FAIR_DROPPED`) removed, so every
message becomes a ticket or a follow-up on both sides. `--as-is` gives both the files as they
are (the gateway then discards most of them).

Prints each run's time, messages processed, tickets, follow-ups, duplicates and discards, the
work each side did (tickets + follow-ups), the median rates and the end-to-end ratios for the
pipe and for SMTP. Prints; never asserts.

    .venv/bin/python bench/vs_django_helpdesk.py [--messages 1000] [--runs 3] [--sessions 8]
        [--workers 1] [--helpdesk-version 2.6.1] [--as-is] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "mail" / "spamassassin"
sys.path.insert(0, str(ROOT))

from tests.helpers import DaemonProcess, configure, free_port  # noqa: E402

SETTINGS = """
import os
BASE_DIR = os.path.dirname(os.path.abspath(__file__))
SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages", "django.contrib.staticfiles",
    "django.contrib.sites", "django.contrib.humanize", "rest_framework", "helpdesk",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
HELPDESK_TEAMS_MODE_ENABLED = False  # the teams mode needs pinax-teams; not part of intake
SITE_ID = 1
ROOT_URLCONF = "hdproj.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [], "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["HD_DB"]}}
# Nothing leaves the machine: every notification goes to an in-memory outbox.
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
USE_TZ = True
STATIC_URL = "/static/"
MEDIA_ROOT = os.environ["HD_MEDIA"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
"""
URLS = """
from django.urls import include, path
urlpatterns = [path("helpdesk/", include("helpdesk.urls", namespace="helpdesk"))]
"""
MANAGE = """
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hdproj.settings")
from django.core.management import execute_from_command_line
execute_from_command_line(sys.argv)
"""
CREATE_QUEUE = (
    "from helpdesk.models import Queue; Queue.objects.create(title='Support', slug='support', "
    "email_address='support@example.com', email_box_type='local', "
    "email_box_local_dir={maildir!r}, allow_email_submission=True)"
)


@dataclass(frozen=True)
class Run:
    seconds: float
    processed: int
    tickets: int
    follow_ups: int
    duplicates: int
    discards: int
    note: str = ""

    @property
    def rate(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0


# Headers that make the gateway treat a message as a machine's (gateway/stages/automated.py),
# removed from the copies both sides read; any `List-*` header goes too.
FAIR_DROPPED = frozenset(
    {
        "precedence",
        "auto-submitted",
        "x-autoreply",
        "x-autorespond",
        "x-auto-response-suppress",
        "x-spam-flag",
        "x-spam-status",
    }
)


def fair_copy(raw: bytes) -> bytes:
    """The message without its mbox `From ` line and without the headers that mark it as list
    or automated mail (folded continuation lines go with their header); the body untouched."""
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1]
    end = raw.find(b"\n\n")
    crlf_end = raw.find(b"\r\n\r\n")
    if crlf_end != -1 and (end == -1 or crlf_end < end):
        end, sep = crlf_end, 4
    else:
        sep = 2
    if end == -1:
        return raw
    kept: list[bytes] = []
    dropping = False
    for line in raw[:end].splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):  # a folded continuation of the header above
            if not dropping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower().decode("ascii", errors="replace")
        dropping = name in FAIR_DROPPED or name.startswith("list-")
        if not dropping:
            kept.append(line)
    head = b"".join(kept)
    if not head.endswith(b"\n"):
        head += b"\r\n" if sep == 4 else b"\n"
    return head + raw[end + sep // 2 :]


def fair_copies(files: list[Path], into: Path) -> list[Path]:
    """Write the fair copy of each file under `into` (same names); both sides read these."""
    into.mkdir(parents=True)
    out = []
    for path in files:
        copy = into / f"{path.parent.name}-{path.name}"
        copy.write_bytes(fair_copy(path.read_bytes()))
        out.append(copy)
    return out


def first_messages(n: int) -> list[Path]:
    files = sorted(p for p in CORPUS.glob("easy-ham-*/*") if p.is_file())
    if len(files) < n:
        raise SystemExit(f"need {n} easy-ham messages under {CORPUS}, found {len(files)}")
    return files[:n]


def sh(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, check=True, capture_output=True, **kw)  # type: ignore[call-overload,no-any-return]


# -- django-helpdesk ----------------------------------------------------------------------------


class Helpdesk:
    def __init__(self, work: Path, version: str) -> None:
        self.work = work
        self.venv = work / "venv"
        self.project = work / "project"
        self.python = str(self.venv / "bin" / "python")
        self.version = version

    def install(self) -> str:
        sh([sys.executable, "-m", "venv", str(self.venv)])
        sh([self.python, "-m", "pip", "install", "-q", f"django-helpdesk=={self.version}"])
        (self.project / "hdproj").mkdir(parents=True)
        (self.project / "hdproj" / "__init__.py").write_text("")
        (self.project / "hdproj" / "settings.py").write_text(SETTINGS)
        (self.project / "hdproj" / "urls.py").write_text(URLS)
        (self.project / "manage.py").write_text(MANAGE)
        template = self.work / "template.sqlite3"
        self.manage(template, "migrate", "-v0")
        out = sh([self.python, "-m", "pip", "list"]).stdout.decode()
        return " ".join(
            line.split()[0] + "==" + line.split()[1]
            for line in out.splitlines()
            if line.lower().startswith(("django ", "django-helpdesk "))
        )

    def env(self, db: Path) -> dict[str, str]:
        return {**os.environ, "HD_DB": str(db), "HD_MEDIA": str(self.work / "media")}

    def manage(self, db: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self.python, "manage.py", *args],
            cwd=self.project,
            env=self.env(db),
            capture_output=True,
            check=False,
        )

    def run(self, files: list[Path], decode: bool, index: int) -> Run:
        maildir = self.work / f"mail-{'decoded' if decode else 'stock'}-{index}"
        maildir.mkdir()
        for path in files:
            data = path.read_bytes()
            if decode:
                data = data.decode("utf-8", errors="replace").encode("utf-8")
            (maildir / path.name).write_bytes(data)
        db = self.work / f"db-{'decoded' if decode else 'stock'}-{index}.sqlite3"
        shutil.copy(self.work / "template.sqlite3", db)
        made = self.manage(db, "shell", "-c", CREATE_QUEUE.format(maildir=str(maildir)))
        if made.returncode != 0:
            raise SystemExit(made.stderr.decode()[-2000:])
        started = time.perf_counter()
        result = self.manage(db, "get_email")
        seconds = time.perf_counter() - started
        log = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
        left = len(list(maildir.iterdir()))  # get_email deletes each file it turned into a ticket
        with sqlite3.connect(db) as conn:
            tickets = conn.execute("SELECT count(*) FROM helpdesk_ticket").fetchone()[0]
            follow_ups = conn.execute("SELECT count(*) FROM helpdesk_followup").fetchone()[0]
            duplicates = conn.execute(
                "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM "
                "helpdesk_followup WHERE message_id IS NOT NULL AND message_id != '' "
                "GROUP BY message_id HAVING count(*) > 1)"
            ).fetchone()[0]
        note = ""
        if "Queue processing failed" in log:
            error = [line for line in log.splitlines() if "Error" in line][-1:]
            note = f"queue stopped after {len(files) - left} messages: {' '.join(error)[:120]}"
        return Run(seconds, len(files) - left, tickets, follow_ups - tickets, duplicates, 0, note)


# -- the gateway --------------------------------------------------------------------------------


class GatewayBench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.models = work / "models"

    def prepare(self) -> None:
        """Train (or copy) the default model once, outside every timing."""
        from gateway.service.runtime import load_runtime

        trained = ROOT / ".state" / "models"
        if trained.exists():
            shutil.copytree(trained, self.models)
            return
        config = configure(ROOT / "config", self.work / "warm" / "config", self.work / "warm",
                           as_shipped=True)
        load_runtime(config)
        shutil.copytree(self.work / "warm" / "models", self.models)

    def config(self, name: str, **overrides: object) -> Path:
        state = self.work / name / "state"
        shutil.copytree(self.models, state / "models")
        return configure(ROOT / "config", self.work / name / "config", state, as_shipped=True,
                         **overrides)

    def counts(self, config: Path) -> tuple[int, int, int, int, int]:
        with sqlite3.connect(config.parent / "state" / "gateway.db") as conn:
            rows = dict(conn.execute("SELECT outcome, count(*) FROM intakes GROUP BY outcome"))
        processed = sum(rows.values())
        return (
            processed,
            rows.get("ticket", 0) + rows.get("hold", 0),
            rows.get("follow-up", 0),
            rows.get("duplicate", 0),
            rows.get("discard", 0) + rows.get("reject", 0),
        )

    def cli(self, config: Path, *args: str) -> float:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(config), *args],
            check=True,
            capture_output=True,
            cwd=config.parent,
            timeout=3600,
        )
        return time.perf_counter() - started

    def pipe(self, files: list[Path], index: int) -> tuple[Run, Run]:
        config = self.config(f"pipe-{index}")
        accept = self.cli(config, "ingest", "--quiet", *map(str, files))
        drain = self.cli(config, "worker", "--drain")
        processed, tickets, follow_ups, duplicates, discards = self.counts(config)
        both = (tickets, follow_ups, duplicates, discards)
        return (
            Run(accept, len(files), *both),
            Run(accept + drain, processed, *both),
        )

    def pipe_per_message(self, files: list[Path]) -> Run:
        config = self.config("pipe-each")
        seconds = 0.0
        for path in files:
            seconds += self.cli(config, "ingest", "--quiet", str(path))
        return Run(seconds, len(files), 0, 0, 0, 0, "acceptance only")

    def smtp(self, files: list[Path], index: int, sessions: int, workers: int) -> tuple[Run, Run]:
        port = free_port()
        config = self.config(
            f"smtp-{index}",
            smtp__port=port,
            workers__processes=workers,
            outbound__enabled=False,
            webhooks__enabled=False,
            api__enabled=False,
        )
        daemon = DaemonProcess(config).start(timeout=300)
        try:
            messages = [crlf(p.read_bytes()) for p in files]
            started = time.perf_counter()
            send_all(port, messages, sessions)
            accept = time.perf_counter() - started
            while self.counts(config)[0] < len(messages):
                if time.perf_counter() - started > 3600:
                    break
                time.sleep(0.05)
            end_to_end = time.perf_counter() - started
            processed, tickets, follow_ups, duplicates, discards = self.counts(config)
        finally:
            daemon.stop()
        both = (tickets, follow_ups, duplicates, discards)
        return Run(accept, len(files), *both), Run(end_to_end, processed, *both)


def crlf(raw: bytes) -> bytes:
    if raw.startswith(b"From "):  # the mbox envelope line is not part of the message
        raw = raw.split(b"\n", 1)[1]
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def send_all(port: int, messages: list[bytes], sessions: int) -> None:
    queue = list(reversed(messages))
    lock = threading.Lock()
    failures: list[str] = []

    def session() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
            while True:
                with lock:
                    if not queue:
                        return
                    raw = queue.pop()
                try:
                    client.sendmail("list@bench.example", ["support@example.com"], raw)
                except smtplib.SMTPException as exc:
                    failures.append(str(exc))

    threads = [threading.Thread(target=session) for _ in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        print(f"  SMTP failures: {len(failures)}: {failures[:3]}")


# -- report -------------------------------------------------------------------------------------


def show(name: str, runs: list[Run]) -> Run:
    for i, r in enumerate(runs, 1):
        print(
            f"  {name:34} run {i}: {r.seconds:8.2f} s  {r.processed:5d} processed  "
            f"{r.rate:8.1f} msg/s  tickets {r.tickets:4d}  follow-ups {r.follow_ups:4d}  "
            f"duplicates {r.duplicates:3d}  discarded {r.discards:4d}  {r.note}"
        )
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]  # the median run


def timed(label: str, fn: Callable[[], Run]) -> Run:
    print(f"... {label}", flush=True)
    return fn()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1, help="the daemon's worker processes")
    ap.add_argument("--per-message-sample", type=int, default=20)
    ap.add_argument("--helpdesk-version", default="2.6.1")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument(
        "--as-is", action="store_true", help="the files as they are, list headers and all"
    )
    args = ap.parse_args()
    files = first_messages(args.messages)
    work = Path(tempfile.mkdtemp(prefix="gw-vs-helpdesk-"))
    print(
        f"{len(files)} messages: {files[0].parent.name}/{files[0].name} .. "
        f"{files[-1].parent.name}/{files[-1].name}; {os.cpu_count()} CPUs; work dir {work}"
    )
    if not args.as_is:
        files = fair_copies(files, work / "fair")
        print(f"  both sides read fair copies: {', '.join(sorted(FAIR_DROPPED))}, List-* removed")
    try:
        helpdesk = Helpdesk(work / "helpdesk", args.helpdesk_version)
        print("installing django-helpdesk into a throwaway virtualenv ...", flush=True)
        (work / "helpdesk").mkdir()
        print(f"  {helpdesk.install()}")
        stock = [
            timed(f"get_email stock, run {i}", lambda i=i: helpdesk.run(files, False, i))
            for i in range(args.runs)
        ]
        decoded = [
            timed(f"get_email pre-decoded, run {i}", lambda i=i: helpdesk.run(files, True, i))
            for i in range(args.runs)
        ]
        gw = GatewayBench(work / "gateway")
        (work / "gateway").mkdir()
        gw.prepare()
        pipe = []
        for i in range(args.runs):
            print(f"... gateway pipe, run {i}", flush=True)
            pipe.append(gw.pipe(files, i))
        smtp = []
        for i in range(args.runs):
            print(f"... gateway SMTP, run {i}", flush=True)
            smtp.append(gw.smtp(files, i, args.sessions, args.workers))
        print("... gateway pipe, one process per message", flush=True)
        each = gw.pipe_per_message(files[: args.per_message_sample])

        print("\n== django-helpdesk `manage.py get_email` (local directory queue, SQLite)")
        hd_stock = show("stock files", stock)
        hd = show("pre-decoded to UTF-8", decoded)
        print(
            f"\n== Intake Gateway (SQLite, sample config; SMTP: {args.workers} worker process(es))"
        )
        pipe_accept = show("pipe: ingest (acceptance)", [a for a, _ in pipe])
        pipe_e2e = show("pipe: ingest + drain (end to end)", [e for _, e in pipe])
        smtp_accept = show(f"SMTP x{args.sessions} (acceptance)", [a for a, _ in smtp])
        smtp_e2e = show(f"SMTP x{args.sessions} (end to end)", [e for _, e in smtp])
        show("pipe, one process per message", [each])

        print(f"\n== median rates and ratios to django-helpdesk pre-decoded ({hd.rate:.1f} msg/s)")
        print(
            f"  django-helpdesk stock: {hd_stock.processed} of {len(files)} processed "
            f"({hd_stock.note or 'ran through'})"
        )
        for name, r in (
            ("pipe end to end", pipe_e2e),
            ("pipe acceptance", pipe_accept),
            ("SMTP end to end", smtp_e2e),
            ("SMTP acceptance", smtp_accept),
            ("pipe per-message acceptance", each),
        ):
            ratio = r.rate / hd.rate if hd.rate else float("inf")
            print(f"  {name:30} {r.rate:8.1f} msg/s   x{ratio:6.1f}")
        print("\n== the work each side did (median runs): tickets + follow-ups of the messages")
        for name, r in (
            ("django-helpdesk pre-decoded", hd),
            ("gateway pipe", pipe_e2e),
            ("gateway SMTP", smtp_e2e),
        ):
            print(
                f"  {name:30} tickets {r.tickets:5d}  follow-ups {r.follow_ups:5d}  "
                f"= {r.tickets + r.follow_ups:5d} of {len(files)}  (discarded {r.discards})"
            )
        for name, r in (("pipe", pipe_e2e), ("SMTP", smtp_e2e)):
            ratio = r.rate / hd.rate if hd.rate else float("inf")
            print(f"  end to end, {name}: x{ratio:.1f} django-helpdesk (goal x10 on fair copies)")
        _ = statistics
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
