"""A URL as ometer says it in logs, warnings and the ledger: never its credentials."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def shown(url: str, *, path: bool = True) -> str:
    """``url`` without user, password, query or fragment; without its path too unless ``path``.

    An endpoint may carry credentials (``https://user:token@collector``, ``?api-key=``),
    and a webhook's path is its secret (Slack's, for one); logs and the ledger are read
    by more people than the configuration.
    """
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path if path else "", "", ""))
