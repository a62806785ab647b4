"""Config problems as values: each error names the file, the key and, where found, the line.

Owns the shape of a config error and how it reads to an admin. Never raises on its own: loaders
collect problems so `gateway check-config` can print all of them at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the config, phrased for the admin who must fix it."""

    file: str
    key: str | None
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.key:
            return f"{where}: {self.key}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """Raised when a config directory cannot be turned into settings; carries every problem."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def find_line(path: Path, dotted_key: str) -> int | None:
    """Best-effort line number of `dotted_key` in a TOML file.

    tomllib keeps no positions, so we look for the last component as `name =` after the
    header of its table. Good enough to point an admin at the right line; never authoritative.
    """
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    # "account[1].contacts[0].email" -> [("account", 1), ("contacts", 0), ("email", None)]
    parts = [
        (name, int(index) if index else None)
        for name, index in re.findall(r"([^.\[\]]+)(?:\[(\d+)\])?", dotted_key)
    ]
    if not parts:
        return None
    leaf = parts[-1][0]
    start = 0
    header = re.compile(r"^\s*\[\[?\s*([\w.\-\"]+)\s*\]\]?")
    for table, index in parts[:-1]:
        seen = -1
        for i in range(start, len(lines)):
            m = header.match(lines[i])
            if not m:
                continue
            names = [n.strip('"') for n in m.group(1).split(".")]
            # Arrays of tables: skip to the index-th `[[table]]`, not the first; a plain table
            # may be named on the way to a deeper one (`sla` in `[plan.sla.urgent]`).
            if names[-1] == table or (index is None and table in names[:-1]):
                seen += 1
                start = i
                if index is None or seen == index:
                    break
    pattern = re.compile(rf"^\s*\"?{re.escape(leaf)}\"?\s*=")
    for i in range(start, len(lines)):
        if pattern.match(lines[i]):
            return i + 1
        m = header.match(lines[i])
        if m and i >= start and m.group(1).split(".")[-1].strip('"') == leaf:
            return i + 1  # the key is a table of its own: `[plan.sla.urgent]`
    return None
