"""Large base64 bodies lifted out of a message before the stdlib parses it (issue 20 outcome 5).

The stdlib's parser keeps a body as text, line by line and then joined, and the walk then needs
it as bytes again: a 25 MiB attachment cost the worker about 11 times its size at peak. Here
each body of at least `LIFT_BYTES` made only of base64-alphabet lines is replaced, in a copy of
the message the parser reads, by a one-line token; the walk asks `restore` for the part's bytes
and gets that body back as a view of the original bytes, which base64 decodes without a copy.
Only bytes that can carry no structure are lifted (no colon, space or "--" line: never a header,
a boundary or an attached message), so the parser sees the same tree, and what the walk reads is
byte for byte what arrived. Pure: never does I/O.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

# Below this a body is cheap to parse the ordinary way: most messages are never scanned at all.
LIFT_BYTES = 256 * 1024

_BASE64_LINES = re.compile(rb"[A-Za-z0-9+/=\r\n]*")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_PREFIX = b"GWLIFT"  # a token is this, a random nonce and a number


@dataclass(frozen=True)
class Lifted:
    """The bytes for the parser (`skeleton`) and the bodies taken out of them, by token."""

    skeleton: bytes
    original: bytes = b""
    spans: dict[bytes, tuple[int, int]] = field(default_factory=dict)

    def restore(self, payload: bytes) -> bytes | memoryview:
        """A part's body as it arrived. A body that is its token (and what followed the token
        in the original) is a view of the original bytes, never a copy; any other body gets
        each token replaced by its bytes (a copy)."""
        if not self.spans or _PREFIX not in payload:
            return payload
        for token, (start, end) in self.spans.items():
            if payload.startswith(token):
                after = payload[len(token) :]
                if self.original[end : end + len(after)] == after:
                    return memoryview(self.original)[start : end + len(after)]
        return self.restore_all(payload)

    def restore_all(self, data: bytes, newline: bytes | None = None) -> bytes:
        """Every token in `data` replaced by its bytes; with `newline`, their line endings
        written as `newline`, as the stdlib's generator writes every line it writes."""
        if not self.spans or _PREFIX not in data:
            return data
        for token, (start, end) in self.spans.items():
            if token in data:
                body = self.original[start:end]
                if newline is not None:
                    body = _LINE_END.sub(newline, body)
                data = data.replace(token, body)
        return data


def lift(data: bytes) -> Lifted:
    """`data` with every large base64 body replaced by a token line (see the module docstring).

    A body starts after a blank line (the end of a part's headers) and runs to the next line
    starting with "--" (a boundary) or to the end. Each kind of line is searched for with
    `bytes.find` and each search is reused until passed: linear, no per-line Python work.
    """
    if len(data) < LIFT_BYTES:
        return Lifted(data)
    nonce = secrets.token_hex(8).encode()
    lf_blank, crlf_blank = _Next(data, b"\n\n"), _Next(data, b"\n\r\n")
    dash_line = _Next(data, b"\n--")
    pieces: list[bytes] = []
    spans: dict[bytes, tuple[int, int]] = {}
    kept = pos = 0  # data[kept:] is still to be copied into the skeleton
    while True:
        lf, crlf = lf_blank.at(pos), crlf_blank.at(pos)
        if lf < 0 and crlf < 0:
            break
        body = lf + 2 if crlf < 0 or 0 <= lf < crlf else crlf + 3
        dash = dash_line.at(body - 1)
        end = len(data) if dash < 0 else dash + 1
        if end - body >= LIFT_BYTES and _BASE64_LINES.fullmatch(memoryview(data)[body:end]):
            # The token stands for the body without its last line ending, which stays in the
            # skeleton: the parser gives a part's body back without the line ending before its
            # boundary, so a body the parser sees as the token alone is the span exactly.
            stop = end - _line_ending_length(data, end)
            token = _PREFIX + nonce + b"%06d" % len(spans)  # fixed width: none is another's prefix
            spans[token] = (body, stop)
            pieces += (data[kept:body], token)
            kept = stop
        else:
            # Not all base64: a later paragraph of the same body may be (a pasted dump).
            pos = body
            continue
        if dash < 0:
            break
        pos = end
    if not spans:
        return Lifted(data)
    pieces.append(data[kept:])
    return Lifted(b"".join(pieces), data, spans)


def _line_ending_length(data: bytes, end: int) -> int:
    if data[end - 2 : end] == b"\r\n":
        return 2
    return 1 if data[end - 1 : end] in (b"\n", b"\r") else 0


class _Next:
    """The next occurrence of `needle` at or after a position, found once and reused while the
    positions asked for have not passed it (asked in increasing order)."""

    def __init__(self, data: bytes, needle: bytes) -> None:
        self._data, self._needle, self._found = data, needle, -2

    def at(self, pos: int) -> int:
        if self._found == -1 or self._found >= pos:
            return self._found
        self._found = self._data.find(self._needle, pos)
        return self._found
