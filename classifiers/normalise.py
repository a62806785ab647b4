"""Per-channel text normalisation: what the rules, the severity dimensions and the model read.

Owns the clean-up each channel needs before anyone judges the text:
- email: quoted replies (`> ...` lines, "On ... wrote:" / "-----Original Message-----" /
  Outlook "From: ... Sent:" blocks and everything after them), signatures (the `-- ` line,
  "Sent from my iPhone", a closing sign-off and what follows it) and legal disclaimers are
  removed; a forwarded message is kept but placed *after* the sender's own words, behind a
  `[forwarded]` line, so the new text is what the model and the dimensions read first;
- voicemail (speech-to-text): fillers (um, uh, er, "like,", "you know") and false starts or
  stammered repeats ("the the", "we- we") removed, spelled-out numbers written as digits;
- sms: shorthand expanded (pls, rn, sys, svr, 2day, u, w/, b/c...).
Every channel gets apostrophe-less contractions (cant, wont, doesnt) repaired.

The patterns here are written from how these channels are known to look (mail clients' quote
and signature conventions, transcription fillers, common SMS abbreviations), never from the
evaluation messages. Pure functions over strings: never imports the model, the gateway or the
channels, and never raises on any input (hypothesis checks that in tests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FORWARD_MARK = "[forwarded]"

# ---------------------------------------------------------------- email
# Where a quoted earlier message starts: everything from here on is history, not news.
_QUOTE_HEADER = re.compile(
    r"^(?:On\b.{0,200}?\bwrote:\s*$"  # Gmail/Apple: "On Tue, 3 Dec 2026, Ann <a@b> wrote:"
    r"|-{2,}\s*Original Message\s*-{2,}"  # Outlook
    r"|_{5,}\s*$"  # Outlook's rule above "From:"
    r"|From:\s.+\n(?:.*\n){0,3}?(?:Sent|Date):\s)",  # Outlook header block of the quoted mail
    re.IGNORECASE | re.MULTILINE,
)
_FORWARD_HEADER = re.compile(
    r"^(?:-{2,}\s*Forwarded message\s*-{2,}|Begin forwarded message:|-{2,}\s*Forwarded by\b.*)"
    r".*$",
    re.IGNORECASE | re.MULTILINE,
)
_QUOTED_LINE = re.compile(r"^[ \t]*>.*(?:\n|$)", re.MULTILINE)
# RFC 3676 signature separator "-- " (also without the trailing space), mobile footers.
_SIG_SEPARATOR = re.compile(r"^--[ \t]?$|^Sent from my \w+.*$|^Get Outlook for \w+.*$",
                            re.IGNORECASE | re.MULTILINE)
_DISCLAIMER = re.compile(
    r"^[ \t*]*(?:confidentiality notice|disclaimer\b|privileged (?:and|&) confidential"
    r"|this (?:e-?mail|message|communication)(?: and any (?:files|attachments)"
    r"(?: transmitted with it)?)? (?:is|are|may be|contains?) (?:confidential|intended|privileged)"
    r"|if you (?:are not|have received this) "
    r"(?:the intended recipient|(?:e-?mail|message) in error)"
    r"|the information (?:contained )?in this (?:e-?mail|message))",
    re.IGNORECASE | re.MULTILINE,
)
# A sign-off line ("Thanks,", "Kind regards", "Best") near the end: it and what follows (name,
# title, company, phone) are signature.
_SIGN_OFF_LINE = re.compile(
    r"^[ \t]*(?:(?:many |kind |best |warm )?(?:thanks|thank you|regards|wishes)(?: again)?"
    r"|best|cheers|sincerely|yours(?: truly| sincerely)?|respectfully|ta)[ \t]*[,.!]?[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
# The same sign-off inside the last sentence of a one-line mail: "... Thanks, Ruth Nova Pharmacy"
_SIGN_OFF_TAIL = re.compile(
    r"(?<=[.!?])\s+(?:(?:many |kind |best |warm )?(?:thanks|thank you|regards)(?: in advance)?"
    r"|best|cheers|sincerely)[,.!]?(?:\s+[A-Z][\w.&'-]*){0,6}\s*$",
    re.IGNORECASE,
)
SIGN_OFF_WINDOW = 8  # a sign-off line counts only within the last lines of the text

# ---------------------------------------------------------------- voicemail
_FILLERS = re.compile(
    r"(?:(?<=\s)|^)(?:u+m+|u+h+m*|e+r+m*|a+h+|hm+|mm+)\b[,.]?\s*"  # um, uhh, erm, ah, hmm
    r"|,\s*(?:like|you know|i mean)\s*,"  # ", like," ", you know,"
    r"|\byou know\b,?\s*(?=(?:the|it|we|our|i|they|it's|its|everything|nothing|like)\b)"
    r"|\blike,\s*",
    re.IGNORECASE,
)
# A stammered repeat ("the the", "we, we", "it's it's") or a false start ("the sys- the
# system"): keep the last try.
_REPEAT = re.compile(r"\b(\w+(?:'\w+)?)(?:[\s,.-]+\1\b)+", re.IGNORECASE)
_FALSE_START = re.compile(r"\b\w{1,12}-\s+(?=\w)")
_UNITS = {"zero": 0, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
          "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
          "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
          "nineteen": 19}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90}
_NUMBER_WORD = r"(?:one|" + "|".join(list(_UNITS) + list(_TENS)) + r"|hundred|thousand)"
_NUMBER_RUN = re.compile(rf"\b{_NUMBER_WORD}(?:[\s-]+(?:and[\s-]+)?{_NUMBER_WORD})*\b",
                         re.IGNORECASE)

# ---------------------------------------------------------------- sms (and every channel)
_CONTRACTIONS = {"cant": "can't", "wont": "won't", "dont": "don't", "doesnt": "doesn't",
                 "didnt": "didn't", "isnt": "isn't", "arent": "aren't", "wasnt": "wasn't",
                 "werent": "weren't", "havent": "haven't", "hasnt": "hasn't", "couldnt":
                 "couldn't", "wouldnt": "wouldn't", "shouldnt": "shouldn't", "im": "I'm",
                 "ive": "I've", "theyre": "they're", "thats": "that's", "whats": "what's"}
SMS_SHORTHAND: dict[str, str] = {
    "pls": "please", "plz": "please", "pleeease": "please", "rn": "right now",
    "sys": "system", "svr": "server", "srv": "server", "svc": "service", "2day": "today",
    "2nite": "tonight", "tonite": "tonight", "2moro": "tomorrow", "2mrw": "tomorrow",
    "tmrw": "tomorrow", "tmr": "tomorrow", "u": "you", "ur": "your", "r": "are", "w/": "with",
    "w/o": "without", "b/c": "because", "bc": "because", "cuz": "because", "coz": "because",
    "thx": "thanks", "thnx": "thanks", "ty": "thank you", "msg": "message", "msgs": "messages",
    "abt": "about", "ppl": "people", "every1": "everyone", "evry1": "everyone",
    "evryone": "everyone", "any1": "anyone", "no1": "no one", "noone": "no one",
    "some1": "someone", "nt": "not", "nothin": "nothing", "smth": "something",
    "sth": "something", "pwd": "password", "acct": "account", "acc": "account",
    "appt": "appointment", "appts": "appointments", "mins": "minutes", "min": "minutes",
    "hr": "hour", "hrs": "hours", "b4": "before", "atm": "at the moment",
    "idk": "I don't know", "wrk": "work", "wrkn": "working", "wkg": "working", "btw": "by the way",
    "tho": "though", "thru": "through", "gonna": "going to", "wanna": "want to", "k": "ok",
    "kk": "ok", "yr": "your", "yday": "yesterday", "yest": "yesterday", "morn": "morning",
    "pt": "patient", "pts": "patients", "rx": "prescription", "rxs": "prescriptions",
    "db": "database", "ntwk": "network", "cx": "customers", "cust": "customer",
    "custs": "customers", "info": "information", "emerg": "emergency", "prob": "problem",
    "probs": "problems", "aft": "afternoon",
}
# Not expanded: "2" and "4" (too often real counts: "2 users", "4 stores").
_SMS_TOKEN = re.compile(r"(?<![\w/])(?:w/o|w/|b/c|[a-z0-9]+)(?![\w/])", re.IGNORECASE)
_WORD = re.compile(r"\b[a-z]+\b", re.IGNORECASE)


@dataclass(frozen=True)
class NormalisedText:
    """The text after normalisation, and the names of the steps that changed something (for
    the explanation: `normalised=quoted,signature`)."""

    subject: str
    body: str
    steps: tuple[str, ...]

    @property
    def text(self) -> str:
        return f"{self.subject}\n{self.body}" if self.subject else self.body


def _strip_email(body: str, steps: list[str]) -> str:
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    forwarded = ""
    fwd = _FORWARD_HEADER.search(text)
    if fwd is not None:
        forwarded = text[fwd.end():]
        text = text[:fwd.start()]
        steps.append("forwarded")
    quote = _QUOTE_HEADER.search(text)
    if quote is not None:
        text = text[:quote.start()]
        steps.append("quoted")
    if _QUOTED_LINE.search(text):
        text = _QUOTED_LINE.sub("", text)
        if "quoted" not in steps:
            steps.append("quoted")
    disclaimer = _DISCLAIMER.search(text)
    if disclaimer is not None and disclaimer.start() > 0:
        text = text[:disclaimer.start()]
        steps.append("disclaimer")
    text = _strip_signature(text, steps)
    if forwarded:
        inner = _strip_signature(_QUOTED_LINE.sub("", forwarded), [])
        inner = re.sub(r"^(?:From|Date|Sent|Subject|To|Cc):.*\n?", "", inner,
                       flags=re.IGNORECASE | re.MULTILINE)
        text = f"{text.strip()}\n{FORWARD_MARK}\n{inner.strip()}"
    return text.strip()


def _strip_signature(text: str, steps: list[str]) -> str:
    sep = _SIG_SEPARATOR.search(text)
    if sep is not None and sep.start() > 0:
        text = text[:sep.start()]
        steps.append("signature")
    lines = text.rstrip().split("\n")
    start = max(1, len(lines) - SIGN_OFF_WINDOW)
    for i in range(start, len(lines)):
        if _SIGN_OFF_LINE.match(lines[i]):
            text = "\n".join(lines[:i])
            steps.append("signature")
            break
    else:
        tail = _SIGN_OFF_TAIL.search(text)
        if tail is not None:
            text = text[:tail.start() + 1]
            steps.append("signature")
    return text


def _number(words: list[str]) -> int | None:
    total, current = 0, 0
    for word in words:
        word = word.lower()
        if word == "and":
            continue
        if word == "one":
            current += 1
        elif word in _UNITS:
            current += _UNITS[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word == "thousand":
            total += max(current, 1) * 1000
            current = 0
        else:
            return None
    return total + current


def _digits(match: re.Match[str]) -> str:
    words = re.split(r"[\s-]+", match.group(0))
    # A lone "one" is nearly always a determiner ("one user", "no one", "this one"); keep it.
    if len(words) == 1 and words[0].lower() == "one":
        return match.group(0)
    # "nine thirty" (a time) and "two two" are read as separate numbers, not added up.
    if len(words) == 2 and words[0].lower() in _UNITS | {"one": 1} and words[1].lower() in _TENS:
        a, b = _number(words[:1]), _number(words[1:])
        return f"{a}:{b}" if a is not None and b is not None else match.group(0)
    value = _number(words)
    return str(value) if value is not None else match.group(0)


def _clean_voicemail(text: str, steps: list[str]) -> str:
    before = text
    text = _FILLERS.sub(" ", text)
    text = _FALSE_START.sub("", text)
    text = _REPEAT.sub(r"\1", text)
    if text != before:
        steps.append("fillers")
    numbered = _NUMBER_RUN.sub(_digits, text)
    if numbered != text:
        steps.append("numbers")
    return numbered


def _sms_token(match: re.Match[str]) -> str:
    token = match.group(0)
    return SMS_SHORTHAND.get(token.lower(), token)


def _contractions(text: str, steps: list[str]) -> str:
    def fix(match: re.Match[str]) -> str:
        word = match.group(0)
        repl = _CONTRACTIONS.get(word.lower())
        if repl is None or (word.lower() == "im" and word != "im"):
            return word
        return repl

    # The same words the substitution visits, looked up all at once: most texts have no
    # contraction to repair, and calling `fix` on each of their words cost more than finding
    # them (issue 20 outcome 1).
    if _CONTRACTIONS.keys().isdisjoint(map(str.lower, _WORD.findall(text))):
        return text
    fixed = _WORD.sub(fix, text)
    if fixed != text:
        steps.append("contractions")
    return fixed


_BLANKS = re.compile(r"[ \t]+")
_SPACE_BEFORE_PUNCTUATION = re.compile(r" +([,.!?])")
_REPEATED_PUNCTUATION = re.compile(r"([,.!?])(?:\s*[,.])+")
_BLANK_LINES = re.compile(r"\n\s*\n+")


def _squeeze(text: str) -> str:
    # Each substitution runs only if its text can match (`in` is a memchr-speed scan): a text
    # without a tab or two spaces in a row has only single-space runs, which `_BLANKS` would
    # replace by themselves; `_SPACE_BEFORE_PUNCTUATION` needs a space right before , . ! or ?.
    if "\t" in text or "  " in text:
        text = _BLANKS.sub(" ", text)
    if " ," in text or " ." in text or " !" in text or " ?" in text:
        text = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)
    text = _REPEATED_PUNCTUATION.sub(r"\1", text)
    text = _BLANK_LINES.sub("\n", text)
    return text.strip(" \n,")


def normalise(subject: str, body: str, channel: str) -> NormalisedText:
    """The text the classifier judges, for `channel` ("email", "sms" or "voicemail")."""
    steps: list[str] = []
    if channel == "email":
        body = _strip_email(body, steps)
    elif channel == "voicemail":
        subject = _clean_voicemail(subject, [])
        body = _clean_voicemail(body, steps)
    elif channel == "sms":
        expanded = _SMS_TOKEN.sub(_sms_token, body)
        if expanded != body:
            steps.append("shorthand")
        body = expanded
    body = _contractions(body, steps)
    return NormalisedText(_squeeze(subject), _squeeze(body), tuple(dict.fromkeys(steps)))
