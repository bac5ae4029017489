"""An SMTP session bounded however the server behaves: in the bytes it reads, and by
:meth:`Session.cut` in time; and which says whether the server was sent the message whole
(:attr:`Session.sent`), after which it may have it, answered or not."""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
from typing import Any

SMTP_REPLY_BYTES = 256 * 1024
"""Bytes an SMTP server may send in one session: a few hundred make a normal one."""


class Session(smtplib.SMTP):
    """An SMTP session bounded in the bytes it reads and, by :meth:`cut`, in time.

    ``timeout`` bounds each read, not the session: a server that never ends a multi-line
    reply (or trickles it) held the alert thread for ever, smtplib collecting every line.
    """

    def __init__(
        self, timeout: float, tls: ssl.SSLContext | None = None, answer: float | None = None
    ) -> None:
        super().__init__(timeout=timeout)  # no host: connect() below, once it can be cut
        self._left = SMTP_REPLY_BYTES
        self._tls = tls
        self._answer = timeout if answer is None else answer
        self._in_data = False
        self.sent = False
        """Whether the server was sent a message whole (its final "."): it may have it from
        then on, whether or not it answers (a content filter scanning it first)."""

    def data(self, msg: Any) -> tuple[int, bytes]:
        self._in_data = True
        try:
            return super().data(msg)
        finally:
            self._in_data = False

    def send(self, s: Any) -> None:
        super().send(s)
        if self._in_data and isinstance(s, bytes) and s.endswith(b"\r\n.\r\n"):
            self.sent = True
            if self.sock is not None:  # the answer to a whole message may take longer
                self.sock.settimeout(self._answer)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # smtplib's own hook (SMTP_SSL overrides it too); typeshed leaves it out.
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        if self._tls is None:
            return sock
        return self._tls.wrap_socket(sock, server_hostname=host)  # implicit TLS: SMTPS

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None and self.sock is not None:  # a new socket (connect, STARTTLS)
            self.file = Counted(self, self.sock.makefile("rb"))
        return super().getreply()

    def count(self, line: bytes) -> bytes:
        self._left -= len(line)
        if self._left < 0:
            raise OSError(f"the server sent more than {SMTP_REPLY_BYTES} bytes")
        return line

    def cut(self) -> None:
        """End the session from another thread: a read waiting in it returns at once."""
        with contextlib.suppress(OSError, AttributeError, ValueError):
            if self.sock is not None:
                self.sock.shutdown(socket.SHUT_RDWR)


class Counted:
    """The reader smtplib reads replies from, its bytes counted against the session's."""

    def __init__(self, session: Session, reader: Any) -> None:
        self.session, self.reader = session, reader

    def readline(self, size: int = -1) -> bytes:
        return self.session.count(self.reader.readline(size))

    def close(self) -> None:
        self.reader.close()
