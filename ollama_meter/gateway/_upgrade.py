"""An ``Upgrade`` a caller offers and the gateway does not take: ignored, the request read on.

A client may offer to switch protocols on any request (``Connection: Upgrade`` with
``Upgrade: h2c``: curl's ``--http2`` on an ``http://`` URL, Java's ``HttpClient`` and Spring's
``RestClient``, which Spring AI's Ollama client uses, and Ktor do it on every POST). RFC 9110
§7.8 lets a server ignore the offer and answer as if it had not been made, as Ollama does.
httptools stops at the end of such a request's head instead (``HttpParserUpgrade``), its
message complete with no body, and uvicorn answered that with the app (a 400, the body is not
JSON, with a span) and two warnings, one telling the operator to install a WebSocket library.

Here the request is taken up again as plain HTTP/1.1: a new parser is given the head's
framing (method, version, ``Content-Length`` or ``Transfer-Encoding``), heard by nobody, then
the rest of the bytes (the body, the requests behind it). The gateway serves no WebSocket.
"""

from __future__ import annotations

from typing import Any

import httptools

_FRAMING = (b"content-length", b"transfer-encoding")


def offered(protocol: Any) -> bool:
    """Whether the request being parsed offers an upgrade the server does not take: its
    "complete" message is the parser's stop at its head, not its end (the body is to come)."""
    return bool(protocol.parser.should_upgrade()) and not protocol._should_upgrade()


def feed(protocol: Any, data: bytes) -> None:
    """uvicorn's ``HttpToolsProtocol.data_received``, an upgrade not taken read on as HTTP/1.1."""
    protocol._unset_keepalive_if_required()
    while True:
        try:
            protocol.parser.feed_data(data)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            protocol.logger.warning(msg)
            protocol.send_400_response(msg)
        except httptools.HttpParserUpgrade as stop:
            if protocol._should_upgrade():
                protocol.handle_websocket_upgrade()
                return
            _take_up(protocol)
            data = data[stop.args[0] :]
            if data:
                continue
        return


def _take_up(protocol: Any) -> None:
    """A new parser for ``protocol``, at the body of the request whose head it has read."""
    method = protocol.scope["method"].encode()
    version = protocol.parser.get_http_version().encode()
    framing = [n + b": " + v + b"\r\n" for n, v in protocol.headers if n in _FRAMING]
    relay = _Relay(protocol)
    protocol.parser = httptools.HttpRequestParser(relay)
    head = b"%s / HTTP/%s\r\n%s\r\n" % (method, version, b"".join(framing))
    protocol.parser.feed_data(head)  # a request with no body is complete here


class _Relay:
    """The protocol's parser callbacks, but for the head a new parser is fed again (its
    framing only): that is no request of its own."""

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._head = True

    def on_message_begin(self) -> None:
        if not self._head:
            self._protocol.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._head:
            self._protocol.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._head:
            self._protocol.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._head:
            self._head = False
        else:
            self._protocol.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._protocol.on_body(body)

    def on_message_complete(self) -> None:
        self._protocol.on_message_complete()


__all__ = ["feed", "offered"]
