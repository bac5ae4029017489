"""Which of a caller's request headers travel on to Ollama: what is not this hop's, nor a credential.

Owns :func:`forward_headers`, for metered and passed-through calls alike. The caller's
credentials are the gateway's to read, never Ollama's (nor its logs', nor a proxy's beside
it): every header a key or the admin token may come in, a ``Cookie`` (a browser sends every
cookie of the gateway's host name, whatever port set it: another local app's session), and
every ``X-Ometer-*`` header, the gateway's own vocabulary with its caller.
"""

from __future__ import annotations

import functools
from typing import Any

HOP_BY_HOP = frozenset({
    "host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
    "upgrade", "proxy-authorization", "proxy-authenticate", "origin",  # _origins.py
    "authorization", "x-api-key", "cookie",
    # How this hop's bodies travel, the gateway's own to say: it has the whole request body
    # (a caller's "Expect: 100-continue" passed on had the client wait, with no timeout, for
    # a "100 Continue" a server may never send), and it decodes the answer and relays it
    # plain (a caller's "br" passed on got answers in a coding it cannot read).
    "expect", "accept-encoding",
})  # fmt: skip

OWN_PREFIX = "x-ometer-"
"""The gateway's own headers with its caller (a key, attribution, tags, the client's span):
none is Ollama's, and a gateway behind this one would read them as this caller's word."""


def forwarded(name: str) -> bool:
    """Whether a request header named ``name`` (any case) is passed on to Ollama."""
    lower = name.lower()
    return lower not in HOP_BY_HOP and not lower.startswith(OWN_PREFIX)


def forward_headers(headers: Any) -> dict[str, str]:
    """The headers of ``headers`` passed on to Ollama (a later one of a name over an earlier).
    Starlette's are read as they came (``raw``: the names in lower case), each name's fate
    looked up once, not every header decoded and its name read again at every call."""
    raw = getattr(headers, "raw", None)
    if raw is None:
        return {k: v for k, v in headers.items() if forwarded(k)}
    sent: dict[str, str] = {}
    for name, value in raw:
        if (key := _sent_as(name)) is not None:
            sent[key] = value.decode("latin-1")
    return sent


@functools.lru_cache(maxsize=256)
def _sent_as(name: bytes) -> str | None:
    """A header's name as it is passed on (as Starlette reads it), or None: it is not."""
    key = name.decode("latin-1")
    return key if forwarded(key) else None
