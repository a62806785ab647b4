"""CLI commands for purge and erase (retention and privacy).

Registered on the main parser by `gateway.cli.build_parser`. Commands print plain words for an
admin; the rules they apply live in the modules they call, never here.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add this module's commands to the main parser's subparsers `sub`."""
    _ = sub


__all__ = ["argparse", "register"]
