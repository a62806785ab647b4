"""Bytes of a mail to text, leniently: transfer encodings, charsets, encoded words, HTML.

Owns how the parse stage turns a part's bytes into text and a header's bytes into a string, and
says so whenever it had to guess (issue 19): a lenient base64 decode, a detected charset, bytes
no charset could decode. Every function returns its result together with the ParseDefects it
caused, so nothing is altered silently. Pure functions: never does I/O, never raises on bytes.
charset-normalizer (the detection fallback) is imported lazily, only when a declared charset
fails, so nothing that merely imports this module pays for it.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import quopri
import re

from gateway.message import ParseDefect

# Labels that mean "one byte, one character" are read as windows-1252, as the WHATWG Encoding
# standard (and every browser) does: mailers label cp1252 text latin-1 or ascii, and latin-1's
# 0x80-0x9f are C1 controls no human wrote (issue 19: "a raw \x80 was stored").
_CP1252_LABELS = frozenset(
    {
        "latin-1",
        "latin1",
        "iso-8859-1",
        "iso8859-1",
        "iso_8859-1",
        "l1",
        "us-ascii",
        "ascii",
        "ansi_x3.4-1968",
        "cp819",
        "ibm819",
        "iso-ir-100",
        "windows-1252",
        "cp1252",
    }
)
DETECT_MIN_BYTES = 200
# Labels whose text is routinely written in a superset (the WHATWG Encoding standard decodes
# them so): gb2312 mail holds GBK characters, ks_c_5601 mail cp949, shift_jis mail cp932.
_SUPERSETS = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "euc-cn": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "big5": "big5hkscs",
    "iso-8859-8-i": "iso8859-8",
    "tis-620": "cp874",
    "iso-8859-11": "cp874",
    "iso-8859-9": "cp1254",
}
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_B64_ALPHABET = re.compile(rb"[^A-Za-z0-9+/]")
_B64_CLEAN = re.compile(rb"[A-Za-z0-9+/\s]*={0,2}\s*")
_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_BETWEEN_WORDS = re.compile(rb"^[ \t\r\n]*$")
_SURROGATE = re.compile("[\udc80-\udcff]")
_TAG = re.compile(r"<[^>]+>")
_STYLE = re.compile(r"<(script|style)\b.*?</\1>", re.S | re.I)
_COMMENT = re.compile(r"<!--.*?-->", re.S)


def transfer_decode(
    payload: bytes | memoryview, cte: str, where: str
) -> tuple[bytes, list[ParseDefect]]:
    """A part's body with its Content-Transfer-Encoding undone.

    The value is read as its first token, lower-cased: `quoted-printable  ` with trailing spaces
    is still quoted-printable (issue 19 item 4). base64 drops stray characters and repairs the
    padding instead of leaving the part undecoded (item 8); what cannot be decoded at all stays
    as the raw bytes, with a defect."""
    token = cte.strip().split(None, 1)[0].lower().strip("\"'") if cte.strip() else ""
    if token == "base64":
        return _base64(payload, where)  # a lifted body is decoded from its view, never copied
    payload = bytes(payload)
    if token in ("", "7bit", "8bit", "binary"):
        return payload, []
    if token == "quoted-printable":
        return quopri.decodestring(payload), []
    if token in ("x-uuencode", "uuencode", "x-uue", "uue"):
        return _uudecode(payload, where)
    return payload, [ParseDefect("transfer-encoding-unknown", f"{where}: {token}")]


def _base64(payload: bytes | memoryview, where: str) -> tuple[bytes, list[ParseDefect]]:
    if _B64_CLEAN.fullmatch(payload):  # the common case, at C speed (25 MiB attachments)
        try:
            return binascii.a2b_base64(payload), []
        except binascii.Error:
            pass  # bad padding: the careful path below
    payload = bytes(payload)
    # The data ends at its padding, at a blank line after it, or at a line starting "--" (a
    # signature or a boundary: '-' is not in the alphabet); what follows is not base64.
    lines = payload.splitlines()
    end, seen = len(lines), False
    for i, line in enumerate(lines):
        line = line.strip()
        if (not line and seen) or line.startswith(b"--"):
            end = i
            break
        seen = seen or bool(line)
    head, _, tail = b"".join(lines[:end]).partition(b"=")
    body = re.sub(rb"[ \t]", b"", head)
    clean = _B64_ALPHABET.sub(b"", body)
    rest = any(r.strip() for r in lines[end:])
    stray = len(clean) != len(body) or bool(tail.strip(b"= \t")) or rest
    if len(clean) % 4 == 1:  # one leftover character carries no whole byte: drop it
        clean, stray = clean[:-1], True
    decoded = base64.b64decode(clean + b"=" * (-len(clean) % 4))
    return decoded, [ParseDefect("base64-repaired", where)] if stray else []


def _uudecode(payload: bytes, where: str) -> tuple[bytes, list[ParseDefect]]:
    out = bytearray()
    started = False
    for line in payload.splitlines():
        if not started:
            started = line.startswith(b"begin ")
            continue
        if line.strip() in (b"end", b"`", b""):
            if line.strip() == b"end":
                break
            continue
        try:
            out += binascii.a2b_uu(line)
        except binascii.Error:
            # Padding a mailer trimmed or added: decode the length the line's first byte
            # announces (the stdlib's own workaround, email.message._decode_uu).
            nbytes = (((line[0] - 32) & 63) * 4 + 5) // 3
            try:
                out += binascii.a2b_uu(line[:nbytes])
            except binascii.Error:
                return payload, [ParseDefect("part-undecodable", f"{where}: uuencode")]
    if not started:
        return payload, [ParseDefect("part-undecodable", f"{where}: uuencode")]
    return bytes(out), []


def _codec(label: str) -> str | None:
    label = label.strip().strip("\"'").lower()
    if label in _CP1252_LABELS:
        return "cp1252"
    if label in _SUPERSETS:
        return _SUPERSETS[label]
    try:
        return codecs.lookup(label).name
    except (LookupError, ValueError):
        return None


def _cp1252(data: bytes) -> str:
    # cp1252 leaves five bytes undefined; read those as latin-1 so no byte is ever lost.
    text = data.decode("cp1252", errors="surrogateescape")
    return _SURROGATE.sub(lambda m: chr(ord(m.group(0)) - 0xDC00), text)


def utf8_or_cp1252(data: bytes) -> str:
    """UTF-8 where the bytes are UTF-8, each other byte as windows-1252: raw 8-bit headers and
    short undeclared text mix both, and neither loses a character this way."""
    text = data.decode("utf-8", errors="surrogateescape")
    return _SURROGATE.sub(lambda m: _cp1252(bytes([ord(m.group(0)) - 0xDC00])), text)


def _strict(data: bytes, codec: str) -> str | None:
    try:
        return _cp1252(data) if codec == "cp1252" else data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def _detect(data: bytes) -> str | None:
    """charset-normalizer's best guess, or None. Imported here: only a failed charset pays."""
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    return best.encoding if best is not None else None


def decode_text(data: bytes, declared: str | None, where: str) -> tuple[str, list[ParseDefect]]:
    """Text in its declared charset; when that does not fit, UTF-8, then the detected charset.

    A wrong or missing charset no longer yields mojibake or a page of U+FFFD (issue 19 item 5).
    "Fits" means a strict decode, no NUL (UTF-16 text labelled ascii decodes as windows-1252
    without error) and, for a one-byte label, that the text is not valid multi-byte UTF-8 (the
    commonest mislabel). A byte-order mark decides outright. When nothing fits, bytes are
    replaced, with a defect. Declared ascii and latin-1 read as windows-1252 (_CP1252_LABELS)."""
    if not data:
        return "", []
    for bom, bom_codec in _BOMS:
        if data.startswith(bom):
            bommed = data[len(bom) :].decode(bom_codec, errors="replace")
            defects = [] if "\ufffd" not in bommed else [ParseDefect("text-undecodable", where)]
            return bommed, defects
    codec = _codec(declared) if declared else None
    # Text with many NULs is UTF-16 or UTF-32 whatever the label says; a stray NUL is not.
    wide = data.count(0) * 8 > len(data)
    if not declared and max(data) < 0x80 and not wide:
        return data.decode("ascii"), []
    utf8 = _strict(data, "utf-8") if not wide else None
    if codec == "cp1252" and utf8 is not None and max(data) >= 0x80:
        return utf8, [ParseDefect("charset-detected", f"{where}: {declared} -> utf-8")]
    if (
        codec is not None
        and b"\x00" not in data
        and (declared_text := _strict(data, codec)) is not None
    ):
        return declared_text, []
    if utf8 is not None:
        if declared and codec != "utf-8":
            return utf8, [ParseDefect("charset-detected", f"{where}: {declared} -> utf-8")]
        return utf8, []
    stray = len(_SURROGATE.findall(data.decode("utf-8", errors="surrogateescape")))
    if not wide and stray * 100 <= len(data):
        # UTF-8 but for a stray byte or two (a cut multi-byte character): detection would read
        # the whole text in another charset (it made Russian UTF-8 Chinese), so only the stray
        # bytes are guessed.
        return utf8_or_cp1252(data), [
            ParseDefect(
                "charset-detected",
                f"{where}: {declared or 'none'} -> utf-8, {stray} stray byte(s) as cp1252",
            )
        ]
    if len(data) < DETECT_MIN_BYTES and not wide:
        # Too short for detection to beat a coin toss (it read "h\xe9llo" as Urdu): UTF-8
        # where valid, windows-1252 for the rest.
        return utf8_or_cp1252(data), [
            ParseDefect("charset-detected", f"{where}: {declared or 'none'} -> cp1252")
        ]
    detected = _codec(_detect(data) or "")
    if detected is not None and (detected_text := _strict(data, detected)) is not None:
        return detected_text, [
            ParseDefect("charset-detected", f"{where}: {declared or 'none'} -> {detected}")
        ]
    text = data.decode(codec or "utf-8", errors="replace").replace("\x00", "")
    return text, [ParseDefect("text-undecodable", f"{where}: {declared or 'none'}")]


def decode_header_bytes(raw: bytes) -> tuple[str, bool]:
    """A header value's bytes as text: RFC 2047 encoded words decoded leniently, raw 8-bit read
    as UTF-8, else windows-1252. The flag says whether the charset of some 8-bit bytes had to be
    guessed.

    Lenient where the stdlib is strict (issue 19 item 3): raw 8-bit bytes inside an encoded word
    are decoded in the word's declared charset, a word's missing base64 padding is repaired, an
    unknown or wrong charset falls back to UTF-8, then windows-1252 (never U+FFFD). Whitespace
    between two adjacent encoded words is dropped (RFC 2047 6.2)."""
    out: list[str] = []
    lossy = False
    pos = 0
    previous_word_end = -1
    for m in _ENCODED_WORD.finditer(raw):
        between = raw[pos : m.start()]
        if not (previous_word_end == pos and _BETWEEN_WORDS.match(between)):
            text, bad = _plain_header(between)
            out.append(text)
            lossy |= bad
        text, bad = _encoded_word(m.group(1), m.group(2), m.group(3))
        out.append(text)
        lossy |= bad
        pos = previous_word_end = m.end()
    text, bad = _plain_header(raw[pos:])
    out.append(text)
    return "".join(out), lossy or bad


def _plain_header(raw: bytes) -> tuple[str, bool]:
    return utf8_or_cp1252(raw), False


def _encoded_word(charset: bytes, encoding: bytes, text: bytes) -> tuple[str, bool]:
    label = charset.decode("ascii", "replace").split("*", 1)[0]  # RFC 2231 language suffix
    if encoding in (b"q", b"Q"):
        data = quopri.decodestring(text.replace(b"_", b" "), header=False)
    else:
        clean = _B64_ALPHABET.sub(b"", text.split(b"=", 1)[0])
        if len(clean) % 4 == 1:
            clean = clean[:-1]
        data = base64.b64decode(clean + b"=" * (-len(clean) % 4))
    codec = _codec(label)
    for candidate in (codec, "utf-8"):
        if candidate is not None and (decoded := _strict(data, candidate)) is not None:
            return decoded, codec is None and max(data, default=0) >= 0x80
    # Neither the declared charset nor UTF-8 fits: a guess, never a U+FFFD.
    return utf8_or_cp1252(data), True


def html_to_text(markup: str) -> str:
    """The readable text of an HTML part: scripts, styles and comments dropped, block ends as
    line breaks, entities unescaped."""
    text = _COMMENT.sub(" ", _STYLE.sub(" ", markup))
    text = re.sub(r"<br\s*/?>|</p>|</div>|</tr>|</li>|</h\d>", "\n", text, flags=re.I)
    text = html.unescape(_TAG.sub(" ", text))
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    return re.sub(r"\n\s*\n\s*(\n\s*)+", "\n\n", text).strip()
