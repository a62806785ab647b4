"""Who a person is in the data and how their traces are recognised (for `gateway erase`).

What this module owns
---------------------
* Identifiers: an email address, or an E.164 number in every common formatting; the per-install
  salt and the pseudonym `erased:<16 hex>` (HMAC-SHA256 under that salt).
* Matching: the person's words (lines of their messages, subjects, names) and identifiers as
  bounded regular expressions, and their replacement by the pseudonym or "[erased]".

What it must never do
---------------------
Touch the database, blobs or the spool (that is gateway/privacy/erasure.py, which plans,
applies and verifies an erasure), or write an identifier or the salt into a log.
"""

from __future__ import annotations

import email
import email.errors
import email.header
import email.policy
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from gateway.phone import normalise_phone

ERASED: Final = "[erased]"
PSEUDONYM_PREFIX: Final = "erased:"
SALT_FILE: Final = "erasure-salt"
_SALT_BYTES: Final = 32
_EMAIL: Final = re.compile(r"[^@\s<>(),;:\"\[\]]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+")
_E164: Final = re.compile(r"\+[1-9]\d{6,14}")
_PHONE_INPUT: Final = re.compile(r"[\d\s+().\-/]+")
# Separators people and programs put inside phone numbers ("+1 (617) 555-0177", "617.555.0177").
SEPARATORS: Final = (" ", "\t", ".", "-", "(", ")", "/", "+", "\u00a0")
_SEP: Final = r"[ \t.\-()/\u00a0]"
# Before a word in JSON text, a "\n" escape ends in a letter yet is a boundary.
_JSON_ESCAPE: Final = r"(?<=\\[nrt])"
# Characters of an address's local part (RFC 5322 atext and '.'): the address must not be the
# tail of a longer one ("bob@x" inside "jimbob@x").
_LOCAL: Final = "A-Za-z0-9.!#$%&'*+/=?^_`{|}~-"
# Lines of a person's message shorter than this are not searched for elsewhere ("Thanks,").
MIN_LINE: Final = 16
# A whole one-line text (an SMS) or a subject is searched for from this length on.
MIN_SHORT: Final = 8
MIN_NAME: Final = 3
# Quoted text is someone else's words (ours, a colleague's): never taken as the person's.
_QUOTE_HEADER: Final = re.compile(
    r"^(-{2,}\s*(original message|forwarded message)\s*-{2,}|on .{4,200} wrote:|_{10,}|from:\s.*)$",
    re.I,
)
_SUBJECT_PREFIX: Final = re.compile(r"^\s*((re|fwd?|aw|wg|sv|tr)\s*:\s*|\[#?T-\d+\]\s*)+", re.I)

Kind = Literal["email", "phone"]


class ErasureError(Exception):
    """The request cannot be carried out as given (a bad identifier, an unusable salt)."""


# ---- who: identifiers, pseudonyms -----------------------------------------------------------


def parse_contact(text: str) -> tuple[Kind, str]:
    """("email", lower-case address) or ("phone", E.164) for what an admin typed."""
    value = text.strip()
    if "@" in value:
        address = value.removeprefix("mailto:").strip("<>").lower()
        if not _EMAIL.fullmatch(address):
            raise ErasureError(f"{text!r} is not an email address")
        return "email", address
    if not value or not _PHONE_INPUT.fullmatch(value):
        raise ErasureError(f"{text!r} is neither an email address nor a phone number")
    phone = normalise_phone(value)
    if not _E164.fullmatch(phone):
        raise ErasureError(
            f"{text!r} is not a phone number (give it in E.164 form, e.g. +16175550100)"
        )
    return "phone", phone


def install_salt(state_dir: Path) -> bytes:
    """The install's secret salt for pseudonyms, created (0600) on first use. Never logged: with
    it, anyone could test whether a given address was erased."""
    path = state_dir / SALT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / f".{SALT_FILE}.{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(_SALT_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # link(2) fails if another run created it meanwhile: then theirs is the salt.
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        data = path.read_bytes()
    if len(data) != _SALT_BYTES:
        raise ErasureError(f"{path} is damaged ({len(data)} bytes, expected {_SALT_BYTES})")
    return data


def pseudonym(salt: bytes, kind: Kind, value: str) -> str:
    digest = hmac.new(salt, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:16]


def _country_code_length(digits: str) -> int:
    """Length of the E.164 country code that starts `digits` (ITU-T E.164 assignments)."""
    first, two = digits[0], digits[:2]
    if first in "17":
        return 1
    two_digit = {
        "2": {"20", "27"},
        "3": {"30", "31", "32", "33", "34", "36", "39"},
        "4": {"40", "41", "43", "44", "45", "46", "47", "48", "49"},
        "5": {"51", "52", "53", "54", "55", "56", "57", "58"},
        "6": {"60", "61", "62", "63", "64", "65", "66"},
        "8": {"81", "82", "84", "86"},
        "9": {"90", "91", "92", "93", "94", "95", "98"},
    }
    return 2 if two in two_digit.get(first, set()) else 3


@dataclass(frozen=True)
class Person:
    """One identifier of the person to erase, normalised, with its pseudonym."""

    kind: Kind
    value: str  # lower-case address, or E.164
    pseudonym: str

    @property
    def national(self) -> str:
        """A phone's digits after the country code: every formatting of it contains them."""
        digits = self.value[1:]
        return digits[_country_code_length(digits) :]

    @property
    def country_code(self) -> str:
        digits = self.value[1:]
        return digits[: _country_code_length(digits)]

    def _regex(self) -> str:
        if self.kind == "email":
            local, domain = self.value.rsplit("@", 1)
            return (
                f"(?:(?<![{re.escape(_LOCAL)}])|{_JSON_ESCAPE})"
                + re.escape(local)
                + "(?:@|%40)"
                + re.escape(domain)
                + r"(?![A-Za-z0-9\-]|\.[A-Za-z0-9])"
            )
        body = (_SEP + "{0,2}").join(self.national)
        cc = self.country_code
        prefix = rf"(?:(?:\+|00){_SEP}?{cc}|{cc}){_SEP}*(?:\(0\){_SEP}*)?"
        return rf"(?:(?<![\w+])|{_JSON_ESCAPE})(?:{prefix}|0{_SEP}*)?\(?{body}(?!\d)"

    def pattern(self) -> re.Pattern[str]:
        return re.compile(self._regex(), re.IGNORECASE if self.kind == "email" else 0)

    def bytes_pattern(self) -> re.Pattern[bytes]:
        # The same expression over bytes (ASCII only: without the no-break space separator).
        regex = self._regex().replace(r"\u00a0", "").encode("ascii")
        return re.compile(regex, re.IGNORECASE if self.kind == "email" else 0)

    def same(self, value: str | None) -> bool:
        """Is a stored sender/recipient/contact value this identifier?"""
        if not value:
            return False
        if self.kind == "email":
            return value.strip().lower() == self.value
        return normalise_phone(value) == self.value if _PHONE_INPUT.fullmatch(value) else False


# ---- what: matching and replacing -----------------------------------------------------------


def _bounded(core: str, text: str) -> str:
    # A word must not continue before or after the phrase; in JSON text a "\n" escape before it
    # ends in a letter, and still is a boundary.
    start = rf"(?:(?<!\w)|{_JSON_ESCAPE})" if re.match(r"\w", text) else ""
    end = r"(?!\w)" if re.search(r"\w$", text) else ""
    return start + core + end


def _word_variants(words: Sequence[str]) -> set[str]:
    """A phrase as a regex in plain text and JSON-escaped (webhook bodies, JSON text columns),
    tolerant of reflowed whitespace and quote markers between words."""
    gap = r"(?:\s|>|\\[nrt])+"
    variants: set[str] = set()
    for encode in (
        lambda w: w,
        lambda w: json.dumps(w)[1:-1],
        lambda w: json.dumps(w, ensure_ascii=False)[1:-1],
    ):
        variants.add(gap.join(re.escape(encode(w)) for w in words))
    return variants


def _alternation(phrases: Iterable[str], flags: int = 0) -> re.Pattern[str] | None:
    parts: set[str] = set()
    for phrase in phrases:
        words = phrase.split()
        if words:
            joined = " ".join(words)
            parts.update(_bounded(v, joined) for v in _word_variants(words))
    if not parts:
        return None
    # Longest first: a sentence is replaced whole before a shorter line inside it.
    return re.compile("|".join(sorted(parts, key=lambda p: (-len(p), p))), flags)


def fragments_of(text: str) -> set[str]:
    """The person's own lines of a message text (quoted parts are someone else's words)."""
    found: set[str] = set()
    lines = [ln.strip() for ln in text.splitlines()]
    own = [ln for ln in lines if ln]
    if len(own) == 1 and len(own[0]) >= MIN_SHORT:
        found.add(own[0])
    for line in lines:
        if _QUOTE_HEADER.match(line):
            break
        if line.startswith(">") or len(line) < MIN_LINE:
            continue
        found.add(line)
    return found


def subject_fragment(subject: str) -> str | None:
    core = _SUBJECT_PREFIX.sub("", subject).strip()
    return core if len(core) >= MIN_SHORT else None


class Matcher:
    """Finds and replaces the person: identifiers everywhere (with their pseudonym), their text
    and name in rows about them (with "[erased]")."""

    def __init__(
        self, people: Sequence[Person], fragments: Iterable[str] = (), names: Iterable[str] = ()
    ) -> None:
        self.people = tuple(people)
        self.ids = [(p.pattern(), p.pseudonym) for p in self.people]
        self.ids_bytes = [p.bytes_pattern() for p in self.people]
        frags = sorted({f for f in fragments if f})
        self.fragments = tuple(frags)
        self.text = _alternation(frags)
        self.names = _alternation({n for n in names if len(n.strip()) >= MIN_NAME}, re.I)
        self.fragments_bytes = [f.encode() for f in frags]

    def scrub(self, value: str, related: bool) -> tuple[str, int]:
        count = 0
        for regex, replacement in self.ids:
            value, n = regex.subn(replacement, value)
            count += n
        if related:
            for regex2 in (self.text, self.names):
                if regex2 is not None:
                    value, n = regex2.subn(ERASED, value)
                    count += n
        return value, count

    def scrub_value(self, value: Any, related: bool) -> tuple[Any, int]:
        """Strings, and JSON values walked (keys too), scrubbed; other values untouched."""
        if isinstance(value, str):
            return self.scrub(value, related)
        if isinstance(value, list):
            total = 0
            items = []
            for item in value:
                new, n = self.scrub_value(item, related)
                items.append(new)
                total += n
            return (items, total) if total else (value, 0)
        if isinstance(value, dict):
            total = 0
            out: dict[Any, Any] = {}
            for key, item in value.items():
                new_key, n1 = self.scrub_value(key, related) if isinstance(key, str) else (key, 0)
                new, n2 = self.scrub_value(item, related)
                out[new_key] = new
                total += n1 + n2
            return (out, total) if total else (value, 0)
        return value, 0

    def bytes_hits(self, data: bytes, *, with_text: bool = False) -> int:
        hits = sum(len(regex.findall(data)) for regex in self.ids_bytes)
        if with_text:
            hits += sum(data.count(f) for f in self.fragments_bytes)
        return hits

    def message_hits(self, data: bytes) -> int:
        """Byte search, and for something that parses as a message, its decoded headers and
        parts too (an address in a base64 body or an RFC 2047 header)."""
        hits = self.bytes_hits(data)
        if hits or b"\n" not in data[:4096] or b":" not in data[:200]:
            return hits
        try:
            parsed = email.message_from_bytes(data, policy=email.policy.compat32)
            texts: list[str] = []
            for name, value in parsed.items():
                try:
                    texts.append(
                        f"{name}: {email.header.make_header(email.header.decode_header(value))}"
                    )
                except (ValueError, LookupError, email.errors.HeaderParseError):
                    texts.append(f"{name}: {value}")
            for part in parsed.walk():
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    hits += self.bytes_hits(payload)
                    texts.append(payload.decode("utf-8", "replace"))
            for text in texts:
                hits += sum(len(regex.findall(text)) for regex, _ in self.ids)
        except Exception:  # a malformed blob is searched byte for byte only, never fatal
            return hits
        return hits


