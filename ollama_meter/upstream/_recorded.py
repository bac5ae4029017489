"""What a call says to a metering gateway in front of Ollama, and what the gateway says back.

An ometer client (``ometer chat``, the Python API) may reach Ollama through ``ometer serve``
or ``ometer run``'s gateway. It names whom to charge in the gateway's attribution headers
(:data:`WHO_HEADERS`); the gateway, which records every call it relays, names on its answer
the ledger it recorded the call in (:data:`LEDGER_HEADER`) and its span there
(:data:`SPAN_HEADER`). :class:`Heard` carries both for one call; the meter decides what the
answer's words mean (only a gateway on the client's own ledger spares the client its span).

Imports nothing heavy: the meter holds a :class:`Heard` on every call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ollama_meter._names import GATEWAY_TAGS
from ollama_meter.records import TraceParent

SPAN_HEADER = "X-Ometer-Span-Id"
"""The header a metered call's answer names its span in (``ometer log --json``'s ``id``)."""
LEDGER_HEADER = "X-Ometer-Ledger"
"""The header a gateway's metered answer names its ledger in (``Ledger.identity``)."""
TENANT_HEADER, DEPARTMENT_HEADER, USER_HEADER = (
    "X-Ometer-Tenant",
    "X-Ometer-Department",
    "X-Ometer-User",
)
REFUSED_HEADER = "X-Ometer-Refused"
"""The header a gateway's own refusal names its kind in (the meter's error type of it:
``budget_exceeded``, ``rate_limited``, ``forbidden``...): the call never reached Ollama, so a
client counts it against no server, and retries a budget's refusal no more than its own."""
CLIENT_SPAN_HEADER = "X-Ometer-Client-Span"
"""The client's own span id of the call (journaled): a gateway notes it on its span
(``CLIENT_SPAN_TAG``), so the client's journal entry is not recorded again if it dies."""
TAGS_HEADER = "X-Ometer-Tags"
"""The call's tags, a JSON object of text to text (ASCII: other characters as ``\\u`` escapes;
when that is longer than a line, UTF-8); past a line (:data:`TAGS_LINE_BYTES`), in parts:
this header, then :func:`tags_part` 2, 3... each an object of some of them."""
TAGS_LINE_BYTES = 8_000
"""The longest header line (name, ``": "``, value, CRLF) tags are sent in: what any proxy on
the way reads of one (nginx's buffer for a line is 8 KiB, aiohttp's and Apache's limit 8,190
bytes; Ollama's Go server and ``ometer serve`` read more). Tags went in one line of up to
64 KiB (64 tags of 256 CJK characters: 54 KB), and a proxy refused every call carrying them."""
TAGS_PARTS = 16
"""The most headers tags are sent in: 64 tags at their longest take 10."""


def tags_part(number: int) -> str:
    """The header of part ``number`` (from 1) of a call's tags."""
    return TAGS_HEADER if number == 1 else f"{TAGS_HEADER}-{number}"


_WORD = re.compile(r"[0-9A-Za-z_-]{1,64}")
"""What a ledger's id or a span's id looks like: a header that says anything else names none."""


def who_headers(
    tenant: str | None,
    department: str | None,
    user: str | None,
    tags: Mapping[str, str] | None = None,
    span_id: str | None = None,
    trace: TraceParent | None = None,
) -> dict[str, str]:
    """The headers a gateway (keys not required) charges a call by: the names the client's
    meter charges it to, and its tags, so the gateway's span, the call's record, is charged
    and labelled the same. None: the client names none, and the gateway charges its own
    default; no tags, no tags header. ``span_id``: the client's own span of the call;
    ``trace``: its exported span, the parent of the gateway's (W3C ``traceparent``)."""
    named = ((TENANT_HEADER, tenant), (DEPARTMENT_HEADER, department), (USER_HEADER, user))
    sends = {header: name for header, name in named if name is not None}
    if span_id is not None:
        sends[CLIENT_SPAN_HEADER] = span_id
    if trace is not None:
        sends.update(trace.headers())
    labels = {key: value for key, value in (tags or {}).items() if key not in GATEWAY_TAGS}
    if labels:
        sends.update(_tags_headers(labels))
    return sends


def _tags_headers(tags: Mapping[str, str]) -> dict[str, str]:
    """``tags`` in :data:`TAGS_HEADER`, as ASCII if its line is short enough, else as UTF-8 in
    as many parts as lines of :data:`TAGS_LINE_BYTES` need (a tag is 1,094 bytes at most)."""
    text = json.dumps(tags, separators=(",", ":"))
    if len(f"{TAGS_HEADER}: {text}\r\n") <= TAGS_LINE_BYTES:
        return {TAGS_HEADER: text}
    room = TAGS_LINE_BYTES - len(f"{tags_part(TAGS_PARTS)}: {{}}\r\n")
    parts: list[list[str]] = [[]]
    size = -1  # the commas between a part's items
    for key, value in tags.items():
        item = json.dumps({key: value}, separators=(",", ":"), ensure_ascii=False)[1:-1]
        length = len(item.encode()) + 1
        if parts[-1] and size + length > room:
            parts.append([])
            size = -1
        parts[-1].append(item)
        size += length
    return {tags_part(n): "{" + ",".join(items) + "}" for n, items in enumerate(parts, 1)}


@dataclass(slots=True)
class Heard:
    """One call's words with what answers it: the headers it sends, and what the last
    answer said of where the call was recorded (a gateway's ledger and span, or nothing)."""

    sends: Mapping[str, str] = field(default_factory=dict)
    """Sent as UTF-8 (an ASCII header's bytes are the same)."""
    ledger: str | None = None
    """The ledger the gateway that answered recorded the call in (None: no gateway said)."""
    span_id: str | None = None
    """The gateway's span of the call in that ledger."""
    answered: bool = False
    """An answer came to the attempt under way (whatever it said of the call's record)."""
    relied_on: bool = False
    """Set by the meter: the gateway's span is the call's record, the client wrote none."""
    delivered: bool = False
    """Ollama has the whole request of the attempt under way (its body was sent), and has
    not refused it: it is working on the call, so a caller who stops now consumed its prompt."""

    def attempt(self) -> None:
        """A new attempt is sent: what an earlier answer said is not this one's."""
        self.ledger = self.span_id = None
        self.answered = False

    def heard(self, headers: Mapping[str, str]) -> None:
        """An answer came with ``headers``: a gateway that recorded the call names both its
        ledger and its span; a header that is no id (or one without the other) names none."""
        ledger, span_id = headers.get(LEDGER_HEADER), headers.get(SPAN_HEADER)
        if ledger and span_id and _WORD.fullmatch(ledger) and _WORD.fullmatch(span_id):
            self.ledger, self.span_id = ledger, span_id
        else:
            self.attempt()
        self.answered = True
