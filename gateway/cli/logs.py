"""How the `gateway` command's daemon and workers log: readable lines on a terminal, one JSON
object a line otherwise (journald, Loki). Apart from `gateway.cli.main` so that commands which
log nothing (`gateway ingest`, one process per message) do not import `logging`. Never holds
business rules.
"""

from __future__ import annotations

import json
import logging
import os
import sys


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for journald/Loki when stderr is not a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def setup_logging(verbose: bool = False) -> None:
    """Readable lines on a terminal, JSON lines otherwise (GATEWAY_LOG_FORMAT=text|json wins)."""
    handler = logging.StreamHandler(sys.stderr)
    wanted = os.environ.get("GATEWAY_LOG_FORMAT") or ("text" if sys.stderr.isatty() else "json")
    if wanted == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


