"""Severity dimensions: what the support policy says a level *means*, read from the text.

The policy defines the levels by four things, and this module reads each with a small table of
explicit patterns (written from the level definitions, never from evaluation messages):
- scope: who is affected — `everyone`, `some`, `one` (or `unknown`);
- state: `down` (stopped, inaccessible), `slow` (slow or intermittent), `wrong` (one thing
  misbehaves), `question` (a question, request, feedback) (or `unknown`);
- time: `now`, `past` (already over: a thank-you, a post-mortem), `planned` (maintenance,
  a future change);
- critical: whether a critical function is involved (login, payments, dispensing, dispatch,
  payroll, patient records...).

`matrix_level` combines them like an ITIL impact x urgency matrix: impact from scope, state and
criticality; urgency from time. The engine adds the result as one named signal
(`MATRIX_URGENT(...)`), and the model reads the dimensions as extra tokens. Pure functions on
normalised text; never imports the model, the gateway or the channels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from classifiers.pattern_set import Hits, PatternSet

# Each table: (value, pattern) tried in order; the first that matches wins.
# Others unaffected: part of the organisation (or one person, if _ONE_ONLY also says so).
_OTHERS_FINE = re.compile(
    r"\b(?:every(?:one|body) else|(?:the )?(?:others?|rest)\b[^.\n]{0,40}?\b(?:are|is|seem|"
    r"work\w*|fine|ok|okay|unaffected|normal)|other (?:\w+ )?(?:users|staff|people|computers|"
    r"machines|tills|stations|sites|branches|offices|stores|hotels|regions|locations|clinics)"
    r"\b[^.\n]{0,20}?\b(?:are|work|seem|fine|ok)\w*|\w+ (?:is|are) fine\b|\w+ ok\b)",
    0,  # matched against lower-cased text (extract): faster than re.IGNORECASE
)
_ONE_ONLY = re.compile(
    r"\b(?:only (?:me|mine|my|one|this)"
    r"\b|just (?:me|mine|my|one|this)\b|(?:one|a single|a new|one of (?:our|my|the)) "
    r"(?:\w+ )?(?:user|member of staff|colleague|employee|person|customer|patient|parent|"
    r"student|teacher|nurse|doctor|driver|agent|hire|starter|account|login|laptop|computer|"
    r"machine|workstation|device|printer|phone|till|terminal|tablet|scanner)s?\b(?! (?:and|or))"
    r"|(?:his|her|my) (?:own )?(?:account|login|password|laptop|computer|phone|mailbox|profile))",
    0,  # matched against lower-cased text (extract): faster than re.IGNORECASE
)
_EVERYONE = re.compile(
    r"\b(?:every(?:one|body|thing)|(?:no ?one|nobody|noone|nothing)\b|none of|not a single|"
    r"not one|all (?:of )?(?:us|them)\b|(?:whole|entire|complete) (?:\w+ )?(?:team|office|"
    r"company|clinic|practice|staff|building|school|site|store|shop|warehouse|department|"
    r"hospital|system|network|platform|website|site|app|service|fleet|floor|ward|hotel|"
    r"branch|organi[sz]ation|business|firm|restaurant|kitchen|call cent(?:er|re))|"
    r"every (?:single )?\w+|all (?!your\b)(?:(?:of )?(?:our|the|my) )?(?:\d+ |\w+ )?\w+s\b|"
    r"for all\b|"
    r"across (?:all|the (?:board|company|site))|company-?wide|site-?wide|system-?wide|"
    r"at (?:all|both|every) (?:\w+ )?(?:sites|locations|stores|branches|clinics|offices)|"
    r"any (?:of (?:the|our) )?\w+s\b[^.\n]{0,20}\b(?:can'?t|cannot|won'?t))",
    0,  # matched against lower-cased text (extract): faster than re.IGNORECASE
)
_SOME = re.compile(
    r"\b(?:some|several|a few|a couple|a handful|many|multiple|certain|half|most|a number of|"
    r"(?:two|three|four|five|\d+) (?:of (?:our|the|my) )?(?:\w+ )?(?:users|staff|people|"
    r"colleagues|nurses|doctors|drivers|teachers|agents|stores|sites|branches|clinics|"
    r"locations|computers|machines|tills|terminals|devices|accounts)|one (?:site|branch|"
    r"location|store|clinic|office|ward|floor|warehouse|department)|(?:our|the) (?:\w+ )?"
    r"(?:team|department|ward|branch|site|office)\b)",
    0,  # matched against lower-cased text (extract): faster than re.IGNORECASE
)
_FIRST_PERSON = re.compile(
    r"\b(?:i (?:can'?t|cannot|am unable|am not able|keep|get|got|see|have)|i'm (?:unable|"
    r"not able|locked|getting)|my (?:account|login|password|screen|laptop|email))\b",
    0,  # matched against lower-cased text (extract): faster than re.IGNORECASE
)

_DOWN = re.compile(
    r"\b(?:(?:is|are|was|went|gone|been|go(?:es)?|still|completely|totally|all|whole|"
    r"system|site|server|app|portal|platform|everything|network|internet|phones?|service|it's|"
    r"its|back|everything's) down\b|down (?:again|for|since|completely|hard)|"
    r"outage|(?<!\bor )(?<!online and )(?<!/)offline|unreachable|not reachable|"
    r"inaccessible|unavailable|dead\b|blank\b|gr[ae]y screen|spinner|lost (?:connection|"
    r"registration)|connection error|never finish(?:es)? loading|"
    r"(?:nobody|no one|none of (?:us|our|the|my|them)\b[\w ]{0,25}?) (?:can|could|is able to|"
    r"are able to|ha(?:s|ve) been able to) (?:access|open|log|sign|get in|reach|use|connect|see|"
    r"load)|"
    r"won'?t let (?:anyone|us|anybody)|(?:fail\w*|errors? out|rejected|broken) (?:\w+ )?for "
    r"(?:all|every|the whole|everyone)|not (?:responding|loading|"
    r"working|opening|starting|coming (?:up|back)|connecting|processing|taking|going through)|"
    r"(?:won'?t|will not|doesn'?t|does not|isn'?t|can'?t|cannot) (?:load|open|start|connect|"
    r"work|boot|come up|go through|process|print|dispense|ship|run)|"
    r"(?:can'?t|cannot|unable to|not able to|no(?:body| one) can|none of \w+ can|couldn'?t) "
    r"(?:\w+ )?(?:access|open|log ?in|login|sign ?in|get in|reach|connect|see|use|work|"
    r"take (?:payments|cards|orders)|process|dispense|check (?:in|out)|print|ship|load|"
    r"submit|make calls|call)|locked out|blank (?:page|screen)|white screen|black screen|"
    r"(?:error|http|status)\W{0,3}50[0234]|\b50[0234] (?:error|bad gateway|service unavailable|"
    r"internal)|bad gateway|connection refused|"
    r"crash(?:ed|es|ing)?|stopped (?:working|responding)|has stopped|froze|frozen|"
    r"back (?:on|to) paper|cash only|unusable|nothing (?:works|is working|loads|goes through)|"
    r"no (?:dial tone|signal|orders|payments|calls|internet|connection)\b|halted|"
    r"(?:all|every) \w+ (?:fail|are failing|is failing|rejected|declined))",
    re.MULTILINE,
)
# One more way of saying down, kept out of _DOWN because it is the costliest to try (up to 60
# characters from every line start, 15 look-behinds at each) and can only match where "down"
# occurs: "... down" closing a line (an SMS, a subject), but not "turned down", "shut down"...
_DOWN_AT_LINE_END = re.compile(
    r"\b(?:^[^\n]{0,60}?(?<!turned )(?<!turn )(?<!shut )(?<!calm )(?<!slow )(?<!write )"
    r"(?<!step )(?<!scroll )(?<!let )(?<!track )(?<!narrow )(?<!cut )(?<!upside )(?<!money )"
    r"(?<!payment )\bdown\W*$)",
    re.MULTILINE,
)
# A security incident (intrusion, ransomware, fraud in progress) stops the business like an
# outage does: it is read as state=down.
_SECURITY = re.compile(
    r"\b(?:ransomware|hack(?:ed|er|ers)|breach\w*|compromised|phishing|malware|(?:a|the) virus|"
    r"virus (?:on|has|is|infected|took|alert)|infected|fraud\w*|"
    r"unauthori[sz]ed (?:access|logins?|transactions?|changes?)|someone (?:\w+ )?(?:is |has |"
    r"had )?(?:deleting|deleted|draining|changed|changing|gotten into|got into|accessing|"
    r"logged into|stealing)|data (?:loss|lost|leak\w*)|(?:records|data|clients|profiles|"
    r"everything)\b[^.\n]{0,30}\b(?:disappeared|vanished|gone|deleted|wiped|lost))\b",
    0,  # matched against lower-cased text (extract): faster than re.IGNORECASE
)
_INTERMITTENT = re.compile(
    r"\b(?:intermittent\w*|sporadic\w*|on and off|off and on|now and (?:then|again)|"
    r"sometimes|randomly|at random|every (?:few|so often|now and)|comes? and goes?|flaky|"
    r"unstable|unreliable|keeps? (?:dropping|freezing|crashing|timing out|disconnecting|"
    r"logging)|(?:one|1) in (?:\d+|two|three|four|five|ten)|\d+ ?%|a few times|from time to "
    r"time|occasional\w*|partially|partial)\b",
    0,  # matched against lower-cased text (extract): faster than re.IGNORECASE
)
_SLOW = re.compile(
    r"\b(?:slow\w*|sluggish|lag\w*|takes? (?:ages|forever|minutes|\d+|over|several)|taking "
    r"(?:ages|forever|minutes|\d+|over)|degraded|delay\w*|time[sd]? ?out|timing out|timeouts?|"
    r"buffer\w*|hangs?|hanging|spinn\w*|crawl\w*|performance|dropp(?:ing|ed) (?:calls|"
    r"connections?|out))\b",
    0,  # matched against lower-cased text (extract): faster than re.IGNORECASE
)
_WRONG = re.compile(
    r"\b(?:error\w*|wrong|incorrect\w*|missing|bug\w*|broken|glitch\w*|fail\w*|"
    r"doesn'?t (?:show|save|sync|update|send|work|match|appear|print|calculate)|"
    r"(?:isn'?t|aren'?t|not) (?:showing|saving|syncing|updating|sending|appearing|printing|"
    r"right|correct|arriving)|garbled|duplicat\w*|disappear\w*|stuck|won'?t (?:save|sync|"
    r"update|send)|can'?t (?:find|see|change|update|save|export|add|edit|delete|remove|upload)|"
    r"problem|issue|odd|weird|strange|reverts?|reverting|mismatch\w*|double[- ]?charg\w*|"
    r"never (?:arrived|came|got))\b",
    0,  # matched against lower-cased text (extract): faster than re.IGNORECASE
)
_QUESTION = re.compile(
    r"(?:\?|\b(?:how (?:do|can|to|would|does|should|much|many)|is there|is it possible|"
    r"can (?:i|we|you)|could (?:i|we|you)|would (?:it|you)|do you|does (?:it|the)|what(?:'s| is|"
    r" are| does| time)|where (?:can|do|is)|when (?:is|will|does)|are there|feature request|"
    r"suggestion|would (?:be|like)|we'?d like|wish|request(?:ing)?|pric\w*|quote|invoice|"
    r"renew\w*|upgrade|subscription|plan\b|thank(?:s| you)|great job|well done|feedback|"
    r"training|webinar|newsletter|demo|wondering|curious|fyi|heads up)\b)",
    0,  # matched against lower-cased text (extract): faster than re.IGNORECASE
)

_PAST = re.compile(
    r"\b(?:(?:is|are|it's|its|we're|everything(?:'s| is)|all) (?:back|working again|fine now|"
    r"ok now|okay now|up again|back up|back online|restored|resolved|fixed)|back (?:up|online|"
    r"to normal) (?:now|again)?|(?:has|have|had|was|were|got) (?:been )?(?:resolved|fixed|"
    r"restored|sorted)|came back|(?:seems?|looks?) (?:to be )?(?:fine|ok|okay|resolved|fixed) "
    r"now|thanks? (?:you )?for (?:fixing|sorting|resolving|restoring|getting|the quick|your "
    r"quick|your help|the fix)|post[- ]?mortem|root cause|rca\b|incident report|what (?:happened|"
    r"caused)|(?:yesterday|last (?:night|week|month|friday|monday|tuesday|wednesday|thursday|"
    r"weekend)|earlier (?:today|this (?:week|morning))|the other day)'?s? (?:outage|downtime|"
    r"incident|issue|problem))\b",
    0,  # matched against lower-cased text (extract): faster than re.IGNORECASE
)
_PLANNED = re.compile(
    r"\b(?:(?:planned|scheduled|upcoming|announced) (?:maintenance|downtime|outage|upgrade|"
    r"update|migration|work)|maintenance (?:window|on|this|next|tonight|tomorrow)|"
    r"(?:will|going to|gonna) (?:be|go) (?:down|offline|unavailable)|(?:next|this coming) "
    r"(?:week|month|monday|tuesday|wednesday|thursday|friday|saturday|sunday|weekend)|"
    r"(?:before|during|after) the (?:maintenance|upgrade|migration)|in advance|ahead of)\b",
    0,  # matched against lower-cased text (extract): faster than re.IGNORECASE
)

_CRITICAL = re.compile(
    r"\b(?:log ?ins?|logging in|sign(?:ing)? ?in|sign-?on|sso|password|locked out|payments?|"
    r"pay\b|card|cards|checkout|check-?out|till|tills|pos\b|point of sale|register|"
    r"transactions?|dispens\w*|prescri\w*|e-?rx|pharmac\w*|medication|\bmar\b|dispatch\w*|"
    r"routes?|trucks?|deliver(?:y|ies)|shipments?|payroll|pay ?run|wages|salar\w*|patient "
    r"(?:records?|charts?|files?|notes)|charts?|ehr|emr|medical records?|records system|"
    r"911|999|emergency (?:calls?|line)|ambulance|orders?|ordering|bookings?|reservations?|"
    r"check-?in|phone system|phone lines?|banking)\b",
    0,  # matched against lower-cased text (extract): faster than re.IGNORECASE
)

_AGAIN = re.compile(r"\b(?:again|still)\b")


def _is_down(hits: Hits) -> bool:
    """_DOWN or _DOWN_AT_LINE_END matches: one table of ways to say down, written as two
    patterns so the costly one is tried only on text that says "down" (issue 20 outcome 1)."""
    return hits.matched("down") or ("down" in hits.text and hits.matched("down_at_line_end"))

LEVELS = ("urgent", "high", "normal", "low")
SCOPES = ("everyone", "some", "one", "unknown")
STATES = ("down", "slow", "wrong", "question", "unknown")
TIMES = ("now", "past", "planned")
# The names a meta rule may use for the dimensions (config/rules.d): DIM_SCOPE_EVERYONE,
# DIM_STATE_DOWN, DIM_TIME_NOW, DIM_CRITICAL... The shipped rules build on them instead of
# repeating this module's vocabulary, so "what counts as down" is written in one place.
FACT_PREFIX = "DIM_"
FACTS: frozenset[str] = frozenset(
    [f"DIM_SCOPE_{v.upper()}" for v in SCOPES] + [f"DIM_STATE_{v.upper()}" for v in STATES]
    + [f"DIM_TIME_{v.upper()}" for v in TIMES] + ["DIM_CRITICAL"]
)


@dataclass(frozen=True)
class Dimensions:
    scope: str  # everyone | some | one | unknown
    state: str  # down | slow | wrong | question | unknown
    time: str  # now | past | planned
    critical: bool

    def explain(self) -> str:
        return (f"scope={self.scope} state={self.state} time={self.time} "
                f"critical={'yes' if self.critical else 'no'}")

    def facts(self) -> frozenset[str]:
        """The dimensions as the names meta rules read (`DIM_STATE_DOWN`, `DIM_CRITICAL`)."""
        names = {f"DIM_SCOPE_{self.scope.upper()}", f"DIM_STATE_{self.state.upper()}",
                 f"DIM_TIME_{self.time.upper()}"}
        if self.critical:
            names.add("DIM_CRITICAL")
        return frozenset(names)

    def tokens(self) -> str:
        """The dimensions as words the model reads (one token each). Crossed tokens
        (scope x state) were tried and cost 1.5 points of leave-one-domain-out accuracy."""
        crit = "yes" if self.critical else "no"
        return f"__scope_{self.scope}__ __state_{self.state}__ __time_{self.time}__ __crit_{crit}__"


def _scope(hits: Hits) -> str:
    if hits.matched("one_only"):
        return "one"
    if hits.matched("others_fine"):
        return "some"
    if hits.matched("everyone"):
        return "everyone"
    if hits.matched("some"):
        return "some"
    if hits.matched("first_person"):
        return "one"
    return "unknown"


def _state(hits: Hits) -> str:
    if hits.matched("security"):
        return "down"
    if _is_down(hits):
        return "slow" if hits.matched("intermittent") else "down"
    if hits.matched("slow") or hits.matched("intermittent"):
        return "slow"
    if hits.matched("wrong"):
        return "wrong"
    if hits.matched("question"):
        return "question"
    return "unknown"


def _time(hits: Hits) -> str:
    if hits.matched("planned"):
        return "planned"
    past = hits.search("past")
    if past is not None:
        # "it came back but is down again" / "still failing": trouble now after all.
        rest = hits.text[past.end():]
        if _AGAIN.search(rest) and _is_down(_TABLES.search(rest)):
            return "now"
        return "past"
    return "now"


# Every table above, tried against a text in one pass (classifiers/pattern_set.py): the same
# answers as trying them one by one, about a tenth of the time (issue 20 outcome 1).
_TABLES = PatternSet({
    "others_fine": _OTHERS_FINE, "one_only": _ONE_ONLY, "everyone": _EVERYONE, "some": _SOME,
    "first_person": _FIRST_PERSON, "down": _DOWN, "down_at_line_end": _DOWN_AT_LINE_END,
    "security": _SECURITY, "intermittent": _INTERMITTENT, "slow": _SLOW, "wrong": _WRONG,
    "question": _QUESTION, "past": _PAST, "planned": _PLANNED, "critical": _CRITICAL,
})


def extract(text: str) -> Dimensions:
    """The four dimensions of a normalised message text (subject and body)."""
    text = text.lower()  # every table is written in lower case and compiled case-sensitive
    hits = _TABLES.search(text)
    return Dimensions(_scope(hits), _state(hits), _time(hits), hits.matched("critical"))


def matrix_level(dims: Dimensions) -> str:
    """Impact (scope x state x criticality) crossed with urgency (time) into a level."""
    state, scope, critical = dims.state, dims.scope, dims.critical
    if state == "down":
        # A service is down for everyone unless the text says otherwise ("down again").
        impact = {"everyone": 1, "unknown": 1, "some": 1 if critical else 2,
                  "one": 2 if critical else 3}[scope]
    elif state == "slow":
        impact = 3 if scope == "one" else 2
    elif state == "wrong":
        impact = 2 if scope == "everyone" and critical else 3
    elif state == "question":
        impact = 4
    else:
        impact = 3
    if dims.time == "past":
        impact = max(impact, 4 if state in ("question", "unknown") else 3)
    elif dims.time == "planned":
        impact = max(impact, 4 if state in ("question", "unknown", "down") else 3)
    return LEVELS[impact - 1]
