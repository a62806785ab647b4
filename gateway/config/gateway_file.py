"""gateway.toml on its own: read and validate the one file every command needs, and say where
the state directory is.

Owns reading a TOML file into problems (the loader reads every other file through
`read_toml`), the config directory's default, and where a config's state directory lies. It
exists apart from `gateway.config.loader` so that `gateway ingest` (one process per message
under an MTA's pipe transport, issue 20 outcome 3) validates gateway.toml without importing the
policy, routing and calendar modules that the whole directory's cross-checks need. Never opens
ports, never touches the database.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from gateway.config.errors import ConfigError, ConfigProblem
from gateway.config.gateway_schema import GatewayConfig
from gateway.config.validate import build


def default_config_dir() -> Path:
    return Path(os.environ.get("GATEWAY_CONFIG", "config"))


def read_toml(path: Path, problems: list[ConfigProblem]) -> dict[str, Any] | None:
    """The file's table, or None with the reason appended to `problems`."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        problems.append(ConfigProblem(path.name, None, "file is missing"))
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's TOMLDecodeError has no lineno attribute; its message carries the line.
        found = re.search(r"at line (\d+)", str(exc))
        line = int(found.group(1)) if found else None
        problems.append(ConfigProblem(path.name, None, f"not valid TOML: {exc}", line))
    except OSError as exc:
        problems.append(ConfigProblem(path.name, None, f"cannot be read: {exc.strerror}"))
    return None


def load_gateway_file(directory: Path) -> GatewayConfig:
    """gateway.toml validated against its schema; raise ConfigError listing every problem.

    Only this file: the other files' problems (and the cross-file checks) are `load`'s. A
    command that needs nothing but listeners, limits and the spool reads this."""
    if not directory.is_dir():
        raise ConfigError([ConfigProblem(str(directory), None, "config directory does not exist")])
    problems: list[ConfigProblem] = []
    path = directory / "gateway.toml"
    table = read_toml(path, problems)
    if table is not None:
        value, found = build(GatewayConfig, table, path)
        problems.extend(found)
        if value is not None and not found:
            return value
    raise ConfigError(problems)


def state_dir(directory: Path, gateway: GatewayConfig) -> Path:
    """Where spool, models and the SQLite file live: $STATE_DIRECTORY (systemd) wins."""
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        # systemd may pass several, colon-separated; the first is ours.
        return Path(env.split(":")[0])
    # A relative state_dir is relative to the config directory, never to wherever the command
    # happens to run: `gateway status` from elsewhere must find the daemon's state (issue 17
    # item 6).
    return directory / gateway.gateway.state_dir


def spool_dir(directory: Path, gateway: GatewayConfig) -> Path:
    return state_dir(directory, gateway) / "spool"
