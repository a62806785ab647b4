"""Turn a parsed TOML table into a frozen settings dataclass, or a list of problems.

Owns the generic checks every config file gets: unknown keys, wrong types, missing required
keys, values outside an allowed set. Field metadata may carry a `check` callable for the few
rules a type cannot say (a port range, a positive size). Never reads files and never knows what
a setting means: the schema modules own meaning.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from gateway.config.errors import ConfigProblem, find_line

T = TypeVar("T")

Check = Callable[[Any], str | None]


def check(fn: Check) -> dict[str, Check]:
    """Field metadata: `field(default=..., metadata=check(lambda v: ... or None))`."""
    return {"check": fn}


class _Collector:
    def __init__(self, path: Path, partial: bool = False) -> None:
        self.path = path
        self.problems: list[ConfigProblem] = []
        # partial: a bad value that has a default takes the default (and stays a problem), so
        # the cross-file checks can still run on everything else in the file (issue 17, item 4).
        self.partial = partial
        # Keys whose bad value was replaced by its default in a partial build.
        self.defaulted: set[str] = set()

    def add(self, key: str, message: str) -> None:
        self.problems.append(
            ConfigProblem(self.path.name, key or None, message, find_line(self.path, key))
        )


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if origin is tuple:
        return "a list"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a table"
    return str(tp)


def _convert(tp: Any, value: Any, key: str, col: _Collector) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, key, col)
    if origin is Literal:
        if value not in get_args(tp):
            col.add(key, f"must be {_type_name(tp)}, not {value!r}")
            return _BAD
        return value
    if tp is Any or tp is object:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            col.add(key, f"must be true or false, not {value!r}")
            return _BAD
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            col.add(key, f"must be an integer, not {value!r}")
            return _BAD
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            col.add(key, f"must be a number, not {value!r}")
            return _BAD
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            col.add(key, f"must be a string, not {value!r}")
            return _BAD
        return value
    if origin is tuple:
        (item_tp, _ellipsis) = get_args(tp)
        if not isinstance(value, list):
            col.add(key, f"must be a list, not {value!r}")
            return _BAD
        items = [_convert(item_tp, v, f"{key}[{i}]", col) for i, v in enumerate(value)]
        if any(i is _BAD for i in items):
            return _BAD
        return tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            col.add(key, f"must be a table, not {value!r}")
            return _BAD
        (_k, v_tp) = get_args(tp)
        out = {k: _convert(v_tp, v, f"{key}.{k}", col) for k, v in value.items()}
        if any(v is _BAD for v in out.values()):
            return _BAD
        return out
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            col.add(key, f"must be a table, not {value!r}")
            return _BAD
        return _build(tp, value, key, col)
    raise TypeError(f"unsupported settings type {tp!r}")  # a schema bug, not an admin's


class _Bad:
    pass


_BAD: Any = _Bad()


def _build(cls: Any, table: Mapping[str, Any], prefix: str, col: _Collector) -> Any:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    ok = True
    for name in table:
        if name not in fields:
            known = ", ".join(sorted(fields))
            col.add(_join(prefix, name), f"unknown key (known keys here: {known})")
            ok = col.partial
    for name, f in fields.items():
        key = _join(prefix, name)
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                col.add(key, "is required")
                ok = False
            continue
        has_default = f.default is not dataclasses.MISSING or (
            f.default_factory is not dataclasses.MISSING
        )
        value = _convert(hints[name], table[name], key, col)
        fn = f.metadata.get("check")
        if value is not _BAD and fn is not None and value is not None:
            message = fn(value)
            if message:
                col.add(key, message)
                value = _BAD
        if value is _BAD:
            if col.partial and has_default:
                col.defaulted.add(key)
            else:
                ok = False
            continue
        kwargs[name] = value
    if not ok:
        return _BAD
    return cls(**kwargs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def build(
    cls: type[T], table: Mapping[str, Any], path: Path
) -> tuple[T | None, list[ConfigProblem]]:
    """Build `cls` from `table` (parsed from `path`); return it, or None and the problems."""
    col = _Collector(path)
    result = _build(cls, table, "", col)
    if result is _BAD:
        return None, col.problems
    return typing.cast(T, result), col.problems


def build_partial(
    cls: type[T], table: Mapping[str, Any], path: Path
) -> tuple[T | None, list[ConfigProblem], frozenset[str]]:
    """Like `build`, but a bad value that has a default takes it, and unknown keys are skipped.

    For cross-file checks only (`check-config` must report every problem at once): the value is
    never run. Returns the value (None when a required key is missing or wrong, so an item of an
    array cannot be built), every problem, and the keys whose bad value was defaulted (a check
    that reads one of them must not trust it).
    """
    col = _Collector(path, partial=True)
    result = _build(cls, table, "", col)
    if result is _BAD:
        return None, col.problems, frozenset(col.defaulted)
    return typing.cast(T, result), col.problems, frozenset(col.defaulted)


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


def port(v: Any) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number from 0 to 65535"
