"""Is the sender of an email who its `From:` says? The evidence an emergency charge rests on.

Owns one decision, `authenticate_sender`, and the alignment rule it uses
(`organizational_domain`, `aligned`). A sender is authenticated by, in order:

1. an aligned pass in an `Authentication-Results` header (RFC 8601) whose authserv-id is one we
   trust: the receiving MTA's own verdict (`dmarc=pass header.from=<From domain>`, or
   `dkim=pass` / `spf=pass` whose domain is aligned with the From domain);
2. else our own DKIM check (RFC 6376, dkimpy) of a signature whose `d=` is aligned with the
   From domain, with the DNS lookup injected (`DnsTxtResolver`) so tests run offline;
3. else not at all, with the reason in plain words for `gateway show`.

Alignment is DMARC's relaxed alignment (RFC 7489 §3.1) with a simple stand-in for the Public
Suffix List: two domains align when they share a registrable domain, the last two labels, or
the last three when the name ends like `.co.uk` (see `organizational_domain`).

Why only the topmost trusted headers: anyone can write `Authentication-Results: <our id>; dmarc=
pass` into a message before sending it (RFC 8601 §5 asks the MTA to remove such headers, but not
every MTA does). Our MTA adds its verdict on top, above the `Received:` trace of the hop that
delivered the message to it, so only trusted headers above the first `Received:` below the
topmost trusted one are read; the rest are ignored. The MTA must therefore always add its own
verdict (OpenDKIM/OpenDMARC, rspamd and Postfix's milters do).

Must never: touch storage, the network or a clock (DNS is the injected resolver, which the
caller may back with real DNS), raise on any input (malformed headers, broken signatures and
resolver failures are answers, not exceptions), or trust a verdict it cannot attribute to a
trusted authserv-id.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import getaddresses

import dkim

from gateway.intake.rawmail import strip_mbox_line
from gateway.message import SenderAuth as SenderAuth  # the value it decides lives with the rest

# name (b"sel._domainkey.example.com.") -> the TXT record's bytes, or None when there is none.
DnsTxtResolver = Callable[[bytes], bytes | None]

# Second-level labels under which ccTLDs register names (example.co.uk, example.com.au): the
# registrable domain is then three labels long. A deliberate stand-in for the Public Suffix List.
_CC_SECOND_LEVEL = frozenset({"co", "com", "org", "net", "ac", "gov", "edu"})
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# A hostile message could carry hundreds of signatures, each costing a DNS lookup and an RSA
# verification: look at this many aligned ones at most.
MAX_SIGNATURES = 8
# dkimpy's own floor (RFC 8301: 1024-bit RSA keys at least).
MIN_KEY_BITS = 1024
# Reasons quoted from dkimpy or the resolver are cut to this length to keep `gateway show` legible.
_REASON_CHARS = 160


def authenticate_sender(
    raw: bytes,
    from_address: str,
    *,
    trusted_authserv_ids: Sequence[str],
    dkim_resolver: DnsTxtResolver | None,
) -> SenderAuth:
    """Is `from_address` (the address of the message's `From:` header) authenticated in `raw`?

    Trusts `Authentication-Results` only from `trusted_authserv_ids` (case-insensitive); checks
    DKIM itself only when `dkim_resolver` is given. Never raises."""
    from_domain = _domain_of(from_address) if "@" in from_address else None
    if from_domain is None:
        return _refused(f"the From address {from_address!r} has no valid domain")
    fields = _header_fields(raw)
    problem = _from_header_problem(fields, from_domain)
    if problem is not None:
        return _refused(problem)

    reasons: list[str] = []
    verdict = _from_authentication_results(fields, from_domain, trusted_authserv_ids, reasons)
    if verdict is not None:
        return SenderAuth(True, "authentication-results", verdict)
    if dkim_resolver is None:
        reasons.append("DKIM not checked by the gateway (no DNS resolver configured)")
    else:
        verdict = _from_dkim(raw, fields, from_domain, dkim_resolver, reasons)
        if verdict is not None:
            return SenderAuth(True, "dkim", verdict)
    return _refused("; ".join(reasons))


def organizational_domain(domain: str) -> str:
    """The registrable domain of a (lower-case) domain: its last two labels, or its last three
    when it ends like `.co.uk` (a short second-level label under a two-letter TLD)."""
    labels = domain.split(".")
    if (
        len(labels) >= 3
        and labels[-2] in _CC_SECOND_LEVEL
        and len(labels[-1]) == 2
        and labels[-1].isalpha()
    ):
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def aligned(domain: str, from_domain: str) -> bool:
    """DMARC relaxed alignment: both domains share one registrable domain."""
    return organizational_domain(domain) == organizational_domain(from_domain)


def _refused(why: str) -> SenderAuth:
    return SenderAuth(False, "none", why)


# ---- the message's header fields ----------------------------------------------------------------


def _header_fields(raw: bytes) -> list[tuple[str, str]]:
    """(lower-cased name, unfolded value) of every header field, top first. Lines that are
    neither a field nor a continuation are skipped, as a receiving MTA would have refused them."""
    fields: list[tuple[str, str]] = []
    for line in strip_mbox_line(raw).split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            break  # the blank line that ends the header section
        text = line.decode("utf-8", errors="replace")
        if text[0] in " \t":
            if fields:
                name, value = fields[-1]
                fields[-1] = (name, f"{value} {text.strip()}")
            continue
        name, colon, value = text.partition(":")
        if colon and name.strip() and " " not in name.strip():
            fields.append((name.strip().lower(), value.strip()))
    return fields


def _from_header_problem(fields: Sequence[tuple[str, str]], from_domain: str) -> str | None:
    """Why the `From:` header cannot be the one `from_domain` came from, or None.

    Several From fields are the classic way to show a reader one address while a checker
    validates another (RFC 7489 §6.6.1): such a message is never authenticated."""
    values = [value for name, value in fields if name == "from"]
    if not values:
        return "the message has no From header"
    if len(values) > 1:
        return f"the message has {len(values)} From headers (a spoofing trick)"
    addresses = [address for _name, address in getaddresses([values[0]]) if "@" in address]
    domains = {_domain_of(address) for address in addresses}
    if from_domain not in domains:
        return f"the From address domain {from_domain} is not the one in the From header"
    return None


def _domain_of(text: str) -> str | None:
    """The lower-case ASCII domain of an address or a bare domain, or None if it is not one."""
    domain = text.strip().strip("<>").rpartition("@")[2].strip().rstrip(".").lower()
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return domain if len(domain) <= 253 and _DOMAIN.fullmatch(domain) else None


# ---- Authentication-Results (RFC 8601) ---------------------------------------------------------


@dataclass(frozen=True)
class _AuthResult:
    method: str
    result: str
    properties: tuple[tuple[str, str], ...]  # ("header.d", "example.com"), ...

    def get(self, key: str) -> str | None:
        return next((value for k, value in self.properties if k == key), None)

    def text(self) -> str:
        return " ".join([f"{self.method}={self.result}", *(f"{k}={v}" for k, v in self.properties)])


def _from_authentication_results(
    fields: Sequence[tuple[str, str]],
    from_domain: str,
    trusted_authserv_ids: Sequence[str],
    reasons: list[str],
) -> str | None:
    """The detail of an aligned pass from the topmost trusted headers, or None (with why added
    to `reasons`)."""
    trusted = {t.strip().lower() for t in trusted_authserv_ids if t.strip()}
    block: list[tuple[str, list[_AuthResult]]] = []
    untrusted: list[str] = []
    below = 0
    state = "before"  # "before" the topmost trusted header, "in" its block, or "after" it
    for name, value in fields:
        if name == "received" and state == "in":
            state = "after"
        if name != "authentication-results":
            continue
        parsed = _parse_authentication_results(value)
        if parsed is None or parsed[0].lower() not in trusted:
            untrusted.append(parsed[0] if parsed is not None else "(unreadable)")
        elif state == "after":
            below += 1
        else:
            state = "in"
            block.append(parsed)

    for authserv_id, results in block:
        verdict = _aligned_pass(results, from_domain)
        if verdict is not None:
            return f"{verdict} by {authserv_id}"

    if block:
        seen = "; ".join(r.text() for _, results in block for r in results) or "none"
        ids = ", ".join(sorted({authserv_id for authserv_id, _ in block}))
        reasons.append(f"no pass aligned with From {from_domain} from {ids} ({seen})")
    else:
        reasons.append(
            "no Authentication-Results from a trusted receiving server"
            + (f" ({', '.join(sorted(trusted))})" if trusted else " (none configured)")
        )
    if untrusted:
        reasons.append(
            f"ignored {len(untrusted)} Authentication-Results from untrusted "
            + ", ".join(sorted(set(untrusted)))[:_REASON_CHARS]
        )
    if below:
        reasons.append(f"ignored {below} trusted-looking Authentication-Results below our hop")
    return None


def _aligned_pass(results: Sequence[_AuthResult], from_domain: str) -> str | None:
    """The strongest aligned pass among `results` (DMARC, then DKIM, then SPF), as text."""
    passes = [r for r in results if r.result == "pass"]
    for r in passes:
        header_from = r.get("header.from")
        if r.method == "dmarc" and header_from and _domain_of(header_from) == from_domain:
            return f"dmarc=pass header.from={header_from} (aligned with From {from_domain})"
    for method, keys in (("dkim", ("header.d", "header.i")), ("spf", ("smtp.mailfrom",))):
        for r in passes:
            if r.method != method:
                continue
            for key in keys:
                value = r.get(key)
                domain = _domain_of(value) if value else None
                if domain is not None and aligned(domain, from_domain):
                    return f"{method}=pass {key}={value} (aligned with From {from_domain})"
    return None


def _parse_authentication_results(value: str) -> tuple[str, list[_AuthResult]] | None:
    """(authserv-id, results) of one header value, or None when it has no authserv-id.
    Results it cannot read are left out: only a well-formed pass can authenticate."""
    segments = _split_segments(value)
    head = _items(segments[0])
    if not head:
        return None
    authserv_id = _unquote(head[0])
    results: list[_AuthResult] = []
    for segment in segments[1:]:
        items = _items(segment)
        if not items:
            continue
        method, equals, result = items[0].partition("=")
        if not equals or not method or not result:
            continue  # "none", or something unreadable
        properties: list[tuple[str, str]] = []
        for item in items[1:]:
            key, equals, prop = item.partition("=")
            if equals and key:
                properties.append((key.lower(), _unquote(prop)))
        results.append(
            _AuthResult(
                method.partition("/")[0].strip().lower(),
                _unquote(result).lower(),
                tuple(properties),
            )
        )
    return authserv_id, results


def _split_segments(value: str) -> list[str]:
    """Split on ";" outside quoted strings, with (comments) removed: OpenDKIM writes
    `dkim=pass (2048-bit key; unprotected) header.d=...`, whose ";" is not a separator."""
    segments: list[str] = []
    current: list[str] = []
    depth = 0
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
            if depth == 0:
                current.append(ch)
            continue
        if ch == "\\" and (quoted or depth):
            escaped = True
            if depth == 0:
                current.append(ch)
            continue
        if quoted:
            quoted = ch != '"'
            current.append(ch)
        elif ch == "(":
            depth += 1
            current.append(" ")
        elif ch == ")" and depth:
            depth -= 1
        elif depth:
            continue
        elif ch == '"':
            quoted = True
            current.append(ch)
        elif ch == ";":
            segments.append("".join(current))
            current = []
        else:
            current.append(ch)
    segments.append("".join(current))
    return segments


_ITEM = re.compile(r'(?:"(?:[^"\\]|\\.)*"?|[^\s"])+')


def _items(segment: str) -> list[str]:
    """Whitespace-separated items of a segment, keeping quoted strings whole and `a = b` as one."""
    return _ITEM.findall(re.sub(r"\s*=\s*", "=", segment.strip()))


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


# ---- our own DKIM check (RFC 6376) -----------------------------------------------------------


class _ResolverFailedError(Exception):
    """The injected resolver raised: carried out of dkimpy, which lets it through."""


def _from_dkim(
    raw: bytes,
    fields: Sequence[tuple[str, str]],
    from_domain: str,
    resolver: DnsTxtResolver,
    reasons: list[str],
) -> str | None:
    """The detail of a valid DKIM signature aligned with the From domain, or None (with why
    added to `reasons`)."""
    signatures = [value for name, value in fields if name == "dkim-signature"]
    if not signatures:
        reasons.append("the message has no DKIM signature")
        return None
    message = strip_mbox_line(raw)
    checked = 0
    for index, value in enumerate(signatures):
        tags = _tags(value)
        signer = _domain_of(tags.get("d", ""))
        if signer is None:
            reasons.append(f"DKIM signature {index + 1} has no valid d= domain")
            continue
        if not aligned(signer, from_domain):
            reasons.append(f"DKIM signature by {signer} is not aligned with From {from_domain}")
            continue
        if "from" not in {h.strip().lower() for h in tags.get("h", "").split(":")}:
            reasons.append(f"DKIM signature by {signer} does not cover the From header")
            continue
        if "l" in tags:
            # l= leaves whatever follows that length unsigned: a forger could append an
            # acknowledgement phrase to a genuine message (RFC 6376 §8.2).
            reasons.append(f"DKIM signature by {signer} covers only part of the body (l=)")
            continue
        if checked == MAX_SIGNATURES:
            reasons.append(f"more than {MAX_SIGNATURES} aligned DKIM signatures: rest not checked")
            break
        checked += 1
        failure = _verify_one(message, index, signer, resolver)
        if failure is None:
            return f"dkim=pass d={signer} s={tags.get('s', '')} (aligned with From {from_domain})"
        reasons.append(f"DKIM signature by {signer} failed: {failure}")
    return None


def _verify_one(message: bytes, index: int, signer: str, resolver: DnsTxtResolver) -> str | None:
    """None when signature `index`, which we read as signed by `signer`, verifies, else why
    not."""
    missing: list[str] = []

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        lookup = name.decode("ascii", errors="replace")
        try:
            record = resolver(name)
        except Exception as exc:  # whatever the caller's DNS does, it is one failed lookup
            raise _ResolverFailedError(f"DNS lookup of {lookup} failed: {_short(exc)}") from exc
        if not record:
            missing.append(lookup)
        return record

    try:
        checker = dkim.DKIM(message, minkey=MIN_KEY_BITS)
        valid = checker.verify(idx=index, dnsfunc=dnsfunc)
    except _ResolverFailedError as exc:
        return str(exc)[:_REASON_CHARS]
    except Exception as exc:
        # dkimpy parses hostile input and lets many kinds of error out (its DKIMException,
        # but also KeyError, ValueError, binascii.Error on malformed tags): each one is a
        # signature that did not verify, never a reason to stop the pipeline.
        return _short(exc)
    if valid is True:
        # Our header reading and dkimpy's could in theory number a hostile message's signatures
        # differently: the pass counts only if dkimpy verified the very signature we vetted.
        verified = bytes(checker.domain).decode("ascii", errors="replace").lower().rstrip(".")
        fields = checker.signature_fields
        if verified != signer or b"l" in fields or b"from" not in checker.include_headers:
            return "the headers are ambiguous: the signature verified is not the one vetted"
        return None
    if missing:
        return f"no DKIM key is published at {missing[0]}"[:_REASON_CHARS]
    return "the signature does not match the message and its public key"


def _tags(value: str) -> dict[str, str]:
    """A DKIM tag=value list (RFC 6376 §3.2) as a dict, whitespace removed, first tag wins."""
    tags: dict[str, str] = {}
    for part in value.split(";"):
        key, equals, tag_value = part.partition("=")
        if equals:
            tags.setdefault(key.strip().lower(), re.sub(r"\s+", "", tag_value))
    return tags


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_REASON_CHARS]
