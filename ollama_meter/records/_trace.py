"""The W3C trace context a call came with (``traceparent``, ``tracestate``), as read or sent.

A caller (an ometer client, an application instrumented with OpenTelemetry) names its span of
a call in ``traceparent``; the gateway's span of the call is then its child, and what the
gateway calls is told the gateway's span in turn. The headers come from anyone: what is not
W3C's is no parent (a new trace), never an error, and is read in time bounded by
:data:`MAX_TRACEPARENT` and :data:`MAX_TRACESTATE` however long it is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

TRACEPARENT, TRACESTATE = "traceparent", "tracestate"
"""The headers' names, in lower case as W3C asks a sender (a reader takes any case)."""
MAX_TRACEPARENT = 512
"""Characters of a ``traceparent`` read at most: 55 in version 00; a later version may add
fields, and past this it is no parent."""
MAX_TRACESTATE = 16 * 1024
"""Characters of the ``tracestate`` headers together read at most: 32 members of a 256-character
key and value take 16,447; past this the state is left out (the parent kept)."""
_MAX_MEMBERS = 32

_PARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.S)
_MEMBER = re.compile(
    r"([a-z0-9][a-z0-9_*/@-]{0,255})=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])"
)
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A span in a W3C trace: its trace's id (32 hex digits), its own (16), its flags (bit 0:
    sampled) and the trace's ``tracestate`` (empty: none), as the headers carry them."""

    trace_id: str
    span_id: str
    flags: int = 1
    state: str = ""

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)

    def headers(self) -> dict[str, str]:
        """``traceparent`` (version 00) naming this span, and ``tracestate`` if there is one."""
        sent = {TRACEPARENT: f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"}
        if self.state:
            sent[TRACESTATE] = self.state
        return sent


def trace_parent(traceparents: Sequence[str], tracestates: Sequence[str]) -> TraceParent | None:
    """The parent the headers name (each header's values, in the order they came), or None:
    no ``traceparent``, two of them (W3C's own tests), or one that is not W3C's.

    Version 00 is its four fields exactly; a later one (but ``ff``, forbidden) is read as
    00's, whatever follows them after a dash, and only its sampled flag kept, as the spec asks
    (its other flags may mean anything). The ``tracestate`` headers are one list (RFC 7230):
    kept as a list of its members, or left out whole when the spec does not allow it (a
    member that is no ``key=value``, a key twice, more than 32), as OpenTelemetry's
    propagator does; never the parent with it."""
    if len(traceparents) != 1 or len(traceparents[0]) > MAX_TRACEPARENT:
        return None
    read = _PARENT.fullmatch(traceparents[0].strip(" \t"))
    if read is None:
        return None
    version, trace_id, span_id, flags, more = read.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if version == "00" and more is not None:
        return None
    bits = int(flags, 16) if version == "00" else int(flags, 16) & 1
    return TraceParent(trace_id, span_id, bits, _state(tracestates))


def _state(headers: Sequence[str]) -> str:
    if sum(len(header) for header in headers) > MAX_TRACESTATE:
        return ""
    members: list[str] = []
    keys: set[str] = set()
    for header in headers:
        for item in header.split(","):
            if not (said := item.strip(" \t")):  # empty members are allowed (and not sent on)
                continue
            member = _MEMBER.fullmatch(said)
            if member is None or member[1] in keys or len(members) == _MAX_MEMBERS:
                return ""
            keys.add(member[1])
            members.append(said)
    return ",".join(members)
