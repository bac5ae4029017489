"""A TLS mismatch with the place exports go, named as one and with what to check.

An ``https://`` endpoint of a collector that speaks plain HTTP, an ``http://`` one of a
collector that speaks TLS (it answers 400 in its own words, or a TLS alert), a certificate the
exporter does not trust: each was said as a collector away, or as "it answered HTTP 400". The
words the failure said are read here (OpenSSL's reason, over HTTP and gRPC alike) into
:class:`Trouble`, which the log line says in place of a status. Imports nothing heavy.
"""

from __future__ import annotations

import re
import ssl

from ollama_meter._causes import chain

_PLAIN = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG")
"""How OpenSSL fails a handshake answered in plain HTTP (``HTTP/1.1 400`` read as a record)."""
_UNTRUSTED = "CERTIFICATE_VERIFY_FAILED"
_TLS_SPOKEN = re.compile(
    rb"https (?:server|port|scheme)|ssl-enabled server|\x15\x03[\x00-\x04]", re.IGNORECASE
)
"""An answer to plain HTTP from a place that speaks TLS: a Go server's "Client sent an HTTP
request to an HTTPS server", nginx's "The plain HTTP request was sent to HTTPS port", Apache's
"speaking plain HTTP to an SSL-enabled server port ... use the HTTPS scheme", or a TLS alert
record. Its words, not any "https": a place's own 400 that links its documentation
(``https://...``, as Langfuse's answers do) was said as TLS, and "use https://" failed for good."""


class Trouble(str):
    """Why an export failed when the place gave no status that says it: said as it is."""


def plain_answer() -> Trouble:
    return Trouble(
        "TLS failed: the endpoint is https:// and the place answered plain HTTP; use http://, "
        "or turn TLS on at the collector"
    )


def tls_spoken(answer: bytes) -> Trouble | None:
    """``answer``, a 400 to plain HTTP, as a place that speaks TLS says it; None: not that."""
    if not _TLS_SPOKEN.search(answer[:1024]):
        return None
    return Trouble(
        "TLS failed: the endpoint is http:// and the place speaks TLS; use https:// (and "
        f"{CERTIFICATE} for a CA of your own)"
    )


CERTIFICATE = "OTEL_EXPORTER_OTLP_CERTIFICATE"
"""The CA file every OTLP/HTTP and gRPC exporter reads (or the signal's own ``_CERTIFICATE``)."""


def untrusted(reason: str) -> Trouble:
    return Trouble(
        f"TLS failed: its certificate is not trusted ({reason}); set {CERTIFICATE} to the file "
        "of the CA that signed it, or check that the endpoint's host is the one it names"
    )


def trouble_of(exc: BaseException) -> Trouble | None:
    """The TLS mismatch ``exc`` (what the HTTP client raised) says, or None."""
    for cause in chain(exc, _held):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return untrusted(cause.verify_message or _UNTRUSTED)
        if isinstance(cause, ssl.SSLError):
            said = f"{cause.reason} {cause}".upper().replace(" ", "_")
            if any(reason in said for reason in _PLAIN):
                return plain_answer()
            if _UNTRUSTED in said:
                return untrusted(_UNTRUSTED.lower().replace("_", " "))
    return None


def grpc_trouble(details: str) -> Trouble | None:
    """The TLS mismatch a gRPC failure's ``details`` say, or None."""
    if any(reason in details for reason in _PLAIN):
        return plain_answer()
    if _UNTRUSTED in details:
        why = details.rpartition(":")[2].strip() or _UNTRUSTED
        return untrusted(why)
    return None


def _held(cause: BaseException) -> BaseException | None:
    # requests wraps urllib3's error in its args, urllib3 the SSL error in ``reason``
    held = [*cause.args[:1], getattr(cause, "reason", None)]
    return next((one for one in held if isinstance(one, BaseException)), None)
