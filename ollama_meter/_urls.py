"""Where ometer sends things: URLs, host names and email addresses as settings give them
(checked once, so a typo is an error at start-up, not every delivery failing unseen), and a
URL as ometer says it in logs, warnings and the ledger: never its credentials."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ollama_meter.records._limit import MAX_SLOTS


def shown(url: str, *, path: bool = True) -> str:
    """``url`` without user, password, query or fragment; without its path too unless ``path``.

    An endpoint may carry credentials (``https://user:token@collector``, ``?api-key=``),
    and a webhook's path is its secret (Slack's, for one); logs and the ledger are read
    by more people than the configuration.
    """
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path if path else "", "", ""))


def quoted(value: str) -> str:
    """``value`` as an error says it: quoted, and cut to its start when long (a setting of
    megabytes would otherwise be the error, in a log line or on a terminal)."""
    return repr(value) if len(value) <= 200 else f"{value[:120]!r}... ({len(value):,} characters)"


def _unprintable(value: str) -> bool:
    """A space, line break or control character: never part of a URL, host or address, and
    where a header or a request line would split (urlsplit quietly drops some of them)."""
    return any(c.isspace() or not c.isprintable() for c in value)


NO_PORT_0 = "has port 0, which no server listens on; give the port it listens on"

_IPV4_LIKE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
"""A host httpx reads as an IPv4 address (and refuses when it is none, as the client is made)."""
MAX_HOST_NAME = 253
"""The longest name DNS (and so the resolver, as the call goes out) takes."""
MAX_URL = 65_536 - 64
"""The longest address httpx sends a request to (65,536), less room for an API's path."""


def host_problem(host: str) -> str | None:
    """Why a URL's host (``urlsplit``'s ``hostname``) is none a call could be made to, or None.

    What httpx refuses as the client is made (an IPv4 address past 255, a name IDNA 2008
    cannot write) or the socket as the call goes out (a part of a name past 63 characters,
    or empty) would be an error of another library at each use, or each call's span a
    malformed request, when it is the address that is wrong.
    """
    if ":" in host:  # an IPv6 literal: urlsplit checked it
        return None
    if _IPV4_LIKE.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return "has a host that is no IPv4 address (four numbers of 0 to 255)"
        return None
    try:
        if host.isascii():
            written = host.encode("idna")
        else:
            import idna  # httpx's own reading of such a name

            written = idna.encode(host)
    except (UnicodeError, ValueError):
        return "has a host name with a part that is empty or longer than 63 characters, or not IDNA"
    if len(written.rstrip(b".")) > MAX_HOST_NAME:
        return f"has a host name longer than {MAX_HOST_NAME} characters"
    return None


def http_url(value: str, example: str, *, secret_path: bool = False) -> str:
    """``value`` stripped, its scheme in lower case, if it is an http(s) URL with a host;
    ValueError saying why not (the URL as :func:`shown` says it: an error reaches logs too)."""
    raw = value.strip()
    said = _said(raw, path=not secret_path)
    if _unprintable(raw):
        raise ValueError(f"{said} has a space, line break or control character in it")
    try:
        parts = urlsplit(raw)
        port = parts.port  # raises for a port that is not one
    except ValueError:
        raise ValueError(f"{said} is not a URL with a valid host and port") from None
    problem = host_problem(parts.hostname or "") or (
        f"is longer than {MAX_URL:,} characters" if len(raw) > MAX_URL else None
    )
    if problem is not None:
        raise ValueError(f"{said} {problem}")
    if port == 0:
        raise ValueError(f"{said} {NO_PORT_0}, such as {example}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{said} is not an http(s) URL such as {example}")
    # The scheme in lower case, as urlsplit reads it (the same in any case, RFC 3986): what
    # reads the URL by its text, a gRPC exporter plain for "http://" only, took "HTTP://" for TLS.
    return parts.scheme + raw[len(parts.scheme) :]


LANGFUSE_OTLP = "/api/public/otel"
"""Langfuse's OTLP endpoint, under where Langfuse is."""


def langfuse_traces(base: str) -> str:
    """Where Langfuse at ``base`` takes spans. Its pages give its OTLP endpoint (``.../api/
    public/otel``) to set an exporter up with: pasted as its URL, every export went to that
    path twice and was refused (404). So it is taken as Langfuse's, with or without
    ``/v1/traces``; any other path is where Langfuse is served (a path of its own)."""
    base = base.rstrip("/")
    if base.endswith(f"{LANGFUSE_OTLP}/v1/traces"):
        base = base.removesuffix("/v1/traces")
    return f"{base.removesuffix(LANGFUSE_OTLP)}{LANGFUSE_OTLP}/v1/traces"


def _said(url: str, *, path: bool) -> str:
    """``url`` for an error message: as :func:`shown`, even when it does not parse."""
    try:
        said = shown(url, path=path)
    except ValueError:  # e.g. an unclosed [: the host as far as it goes
        scheme, sep, rest = url.partition("://")
        said = scheme + sep + re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
    hidden = not path and said.rstrip("/") != url.rstrip("/")
    return quoted(said) + (" (the rest not shown)" if hidden else "")


def host_name(value: str, *, port_setting: str) -> str:
    """``value`` if it is a host name or an IP address; ValueError saying why not."""
    if ":" in value and value.count(":") == 1:
        raise ValueError(f"{value!r} is not a host name; give the port in {port_setting}")
    try:
        if ":" in value:
            ipaddress.IPv6Address(value)
        elif _unprintable(value) or any(c in "/@?#[]<>%\\" for c in value):
            raise ValueError
        else:
            value.encode("idna")
    except (ValueError, UnicodeError):
        raise ValueError(
            f"{value!r} is not a host name or IP address such as mail.example.org"
        ) from None
    return value


_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[^\s@<>()\[\],;:\"\\]+")
_NAMED = re.compile(r"([^<>()\[\],;:\"\\@]*?)\s*<([^<>]*)>")


def email_addresses(value: str, *, one: bool) -> list[str]:
    """The addresses in ``value`` (comma-separated unless ``one``), each ``name@domain`` or
    ``Name <name@domain>``; ValueError saying which is not one."""
    items = [value.strip()] if one else [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise ValueError(f"{value!r} has no address; give e.g. it@example.org, cfo@example.org")
    for item in items:
        named = _NAMED.fullmatch(item)
        address = named.group(2) if named else item
        if not item or _unprintable(address) or not _ADDRESS.fullmatch(address):
            shown_item = f"{item!r} in {value!r}" if len(items) > 1 else repr(value)
            raise ValueError(
                f"{shown_item} is not an email address such as it@example.org"
                + ("" if one else " (separate several with commas)")
            )
        if named and _unprintable(named.group(1).replace(" ", "")):
            raise ValueError(f"the name in {item!r} has a line break or control character in it")
    return items


_LOGIN = re.compile(r"(^|//)[^/?#]*@")
"""A URL's login (``user:password@``), after its ``//`` (or at the start, with no scheme), to
its authority's last ``@`` (a password may hold one); every one in a value (a list of URLs)."""


def without_login(url: str) -> str:
    """``url`` as given but each login in it, for an error to show (an Ollama behind a proxy
    that asks for one is ``http://user:password@host``); the rest is what was mistyped."""
    return _LOGIN.sub(r"\1***@", url)


def normalize_host(value: str) -> str:
    """Turn ``OLLAMA_HOST`` forms (``0.0.0.0``, ``host:port``, full URLs) into a base URL.

    Mirrors how the Ollama CLI (and the ``ollama`` client) reads the variable: scheme defaults
    to http and the port to 11434, but a scheme given without a port is that scheme's port (80,
    443: an Ollama behind a web proxy), ``:port`` is a port on this machine, and the spaces
    and quotes around it are trimmed (a docker env_file keeps the quotes of
    ``OLLAMA_HOST="http://gpu1:11434"``).
    """
    raw = value.strip().strip("\"'")
    if not raw:
        raise ValueError("is empty; expected a URL such as http://127.0.0.1:11434")
    said = quoted(without_login(raw))
    if _unprintable(raw):  # urlsplit drops \t \r \n unseen
        raise ValueError(
            f"{said} has a space, line break or control character in it; expected a URL "
            "such as http://127.0.0.1:11434"
        )
    if raw.startswith(":"):  # a port alone: on this machine
        raw = "127.0.0.1" + raw
    schemed = "://" in raw
    if not schemed:
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:  # an unclosed [, a port that is no number or past 65535
        raise ValueError(
            f"{said} is not a URL with a valid host and port, such as http://127.0.0.1:11434"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{said} is not an http(s) URL such as http://127.0.0.1:11434")
    if port is None:
        port = (443 if parts.scheme == "https" else 80) if schemed else 11434
    if port == 0:
        raise ValueError(f"{said} {NO_PORT_0}, such as http://127.0.0.1:11434")
    problem = host_problem(parts.hostname) or (
        f"is longer than {MAX_URL:,} characters" if len(raw) > MAX_URL else None
    )
    if problem is not None:
        raise ValueError(f"{said} {problem}; expected a URL such as http://127.0.0.1:11434")
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/')}"


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """One Ollama server behind the gateway, and how many calls it may run at once."""

    url: str
    slots: int | None = None
    """None: no limit in the gateway (Ollama queues what it cannot run)."""


def parse_upstreams(value: str, *, slots: int | None = None) -> tuple[UpstreamSpec, ...]:
    """``url[#slots=N],url...`` (``OMETER_UPSTREAMS``, ``--upstream``) → the servers.

    ``slots`` applies to every server that names no slots of its own.
    """
    specs: list[UpstreamSpec] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        url, _, options = part.partition("#")
        own = slots
        if options:
            name, _, number = options.partition("=")
            number = number.strip()
            said = quoted(without_login(part))
            if name.strip() != "slots" or not (number.isascii() and number.isdigit()):
                raise ValueError(
                    f"{said}: after # only slots=N is understood, e.g. http://gpu1:11434#slots=4"
                )
            own = int(number)
            if not 1 <= own <= MAX_SLOTS:
                raise ValueError(f"{said}: slots must be between 1 and {MAX_SLOTS:,}")
        spec = UpstreamSpec(normalize_host(url), own)
        if any(s.url == spec.url for s in specs):
            raise ValueError(f"{spec.url} is given twice")
        specs.append(spec)
    if not specs:
        raise ValueError("names no server; expected e.g. http://gpu1:11434,http://gpu2:11434")
    return tuple(specs)


def credential_problem(text: str, *, public: bool) -> str | None:
    """Why a key or login cannot be sent as it is, or None."""
    if any(c in "\r\n" for c in text):
        return "has a line break in it (read from a file with its line break?); give it on one line"
    if not (text.isascii() and text.isprintable()):
        return (
            "has a character that is not printable ASCII, which the HTTP header or SMTP login "
            "it goes in cannot carry; give it as issued (letters, digits and punctuation)"
        )
    if public and ":" in text:
        return "has a ':' in it, where Langfuse's login would end it; give the pk-lf-... key alone"
    return None


_PASSWORD = re.compile(r"(://[^:/@]*:).*@")
SECRET_QUERY = frozenset({"password", "sslpassword"})
"""Query keys of a database URL that hold a password: libpq takes ``?password=`` as it takes
``user:password@``, and ``?sslpassword=`` unlocks the client's key."""
_QUERY_PASSWORD = re.compile(rf"([?&](?:{'|'.join(sorted(SECRET_QUERY))})=)[^&#]*", re.IGNORECASE)


def hide_password(url: str) -> str:
    """A database URL without its password (``scheme://user:password@``, to the last ``@``:
    a password may hold one; ``?password=`` and ``?sslpassword=``), for an error to show."""
    return _QUERY_PASSWORD.sub(r"\1***", _PASSWORD.sub(r"\1***@", url))


_ENDS_PASSWORD = re.compile(r"[^:/]*:[^@]*@")
"""A URL's user and password, to the ``@`` that ends them, after ``scheme://``: as SQLAlchemy
reads them (the password ends at its first ``@``)."""

UNESCAPED_AT = (
    "has an @ after the one that ends its password: @ in the password must be written %40 "
    "(and % as %25); the URL was not used"
)


def unescaped_at(value: str) -> bool:
    """Whether a server URL's password (or its database name) holds an ``@`` not written
    ``%40``. SQLAlchemy ends the password at the first ``@`` and takes the rest for the
    host: every error ("failed to resolve host") and the URL as shown printed the
    password's tail, and the server was never asked."""
    rest = value.partition("://")[2]
    given = _ENDS_PASSWORD.match(rest)
    return given is not None and "@" in rest[given.end() :].partition("?")[0]


def database_url(value: str) -> str:
    """``OMETER_DB_URL`` (or ``--db``) checked: a URL SQLAlchemy reads, a SQLite one naming a
    file, a server's in UTF-8; ValueError saying which and what to give."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from ollama_meter._paths import sqlite_url_problem

    said = repr(hide_password(value))  # an error reaches logs too
    if unescaped_at(value):
        raise ValueError(f"{said} {UNESCAPED_AT}")
    try:
        url = make_url(value)
        port_ok = url.port is None or 0 < url.port < 65536
    except (ArgumentError, ValueError):  # ValueError: a port that is no number
        port_ok = False
    if not port_ok:
        raise ValueError(
            f"{said} is not a database URL; expected e.g. sqlite:////path/ledger.db "
            "or postgresql+psycopg://user:pass@host:5432/db"
        )
    if problem := sqlite_url_problem(url.get_backend_name(), url.database, bool(url.query)):
        raise ValueError(f"{said} {problem}; give a file, e.g. sqlite:////var/lib/ometer/ledger.db")
    if url.get_backend_name() != "sqlite" and any("\udc80" <= c <= "\udcff" for c in value):
        # Bytes that are not UTF-8 (a Latin-1 shell) arrive as lone surrogates: a file's
        # name may hold them, a server's address, user, password or database cannot.
        raise ValueError(
            f"{said} is not UTF-8 text; write the URL in UTF-8 (a character that is "
            "not ASCII in a user name or password percent-encoded, e.g. %C3%A9 for é)"
        )
    return value


def absolute_sqlite(value: str) -> str | None:
    """A checked database URL naming a SQLite file relative to the working folder, with that
    folder's path put in front; None for any other URL. Written as the text it came as, the
    folder's ``%`` and ``?`` escaped (SQLAlchemy reads ``%xx`` and a query in a path), so
    the URL names the very file, whatever bytes its name holds."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    url = make_url(value)
    if url.get_backend_name() != "sqlite" or url.database is None:
        return None
    if Path(url.database).expanduser().is_absolute():  # '~/x.db' is the home folder's, as opened
        return None
    absolute = str(Path.cwd() / url.database)  # './x.db' is x.db; '..' is left as given
    return f"{url.drivername}:///{absolute.replace('%', '%25').replace('?', '%3F')}"


_said_relative: set[tuple[str, str, str]] = set()


def warn_relative(where: str, given: str, absolute: str) -> None:
    """Say, once a process, that ``where`` (``OMETER_DB_URL`` or ``--db``) named a SQLite file
    relative to the working folder, which file that is here, and the URL that names it from
    anywhere: a gateway started in /srv and a cron job run in the home folder each had a
    ledger of their own, each silently missing the other's calls."""
    import logging

    from sqlalchemy.engine import make_url

    if (where, given, absolute) in _said_relative:
        return
    _said_relative.add((where, given, absolute))
    logging.getLogger("ollama_meter.config").warning(
        "%s %r is relative to the working folder: here it is the ledger %s, and a command run "
        "from another folder (cron runs in the home folder) reads and writes another; give it "
        "absolute: %s",
        where,
        given,
        make_url(absolute).database,
        absolute,
    )
