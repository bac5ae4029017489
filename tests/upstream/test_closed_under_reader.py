"""A connection of the Python API's client closed by one thread while another reads it (the
client's ``close()`` from a shutdown handler): the socket's number is not given back while
that thread is in its read, so no connection or file opened meanwhile can take it and be
waited on in its place; the reader's wait ends, and it closes the socket on its way out.

Before, the close gave the number back at once: a thread about to wait on it (the GIL
released, not yet in ``poll``) waited on whatever took the number next (CI run 168: a
``chat`` thread waited on a file nobody wrote, for its five-minute read timeout).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpcore
import pytest
from httpcore._backends.sync import SyncStream

from ollama_meter.upstream._sdk_kept import _Backend, _Stream

GENEROUS = 60.0


class _Held(SyncStream):
    """httpcore's stream, its reader held inside ``read`` once the socket gave it bytes (as
    a thread the system has not run again yet)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.inside, self.leave = threading.Event(), threading.Event()

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = super().read(max_bytes, timeout)
        self.inside.set()
        self.leave.wait(GENEROUS)
        return data


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def _reading(stream: _Stream, got: list[bytes | BaseException]) -> threading.Thread:
    def read() -> None:
        try:
            got.append(stream.read(100, GENEROUS))
        except BaseException as exc:
            got.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def test_a_socket_closed_while_another_thread_reads_it_keeps_its_number_till_that_thread_leaves(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    held = _Held(ours)
    stream = _Stream(held)
    got: list[bytes | BaseException] = []
    theirs.sendall(b"x")
    reader = _reading(stream, got)
    assert held.inside.wait(GENEROUS)
    stream.close()  # the client closing, from another thread
    assert ours.fileno() != -1, "the number went back while a thread was reading it"
    assert theirs.recv(10) == b"", "the other end did not see the connection shut down"
    held.leave.set()
    reader.join(GENEROUS)
    assert got == [b"x"]
    assert ours.fileno() == -1, "the reader did not close it on its way out"


def test_a_close_alone_ends_the_wait_of_a_thread_reading_the_connection(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _theirs = pair
    stream = _Stream(SyncStream(ours))
    got: list[bytes | BaseException] = []
    reader = _reading(stream, got)
    stream.close()  # before, while or after the reader starts its wait: it ends either way
    reader.join(GENEROUS)
    assert not reader.is_alive()
    (result,) = got
    assert result == b"" or isinstance(result, httpcore.ReadError), repr(result)
    assert ours.fileno() == -1


def test_a_stream_made_after_its_client_closed_is_shut_down_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    backend = _Backend(None, _Stream)
    backend.cut()
    stream = _Stream(SyncStream(ours), backend)
    assert stream.read(100, GENEROUS) == b""
    assert theirs.recv(10) == b""
