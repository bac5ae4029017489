"""What a fleet's servers say that is not so, and what the gateway then tells its callers.

A server's ``Retry-After`` passed on as it came told a client ``-5`` or ``abc``; a stream a
server broke off counted as one it served; servers without ``/api/ps`` made ``ollama ps``
a 502 though every one of them answered; a list nested some 960 levels deep broke
``/api/tags`` for every caller, and a long one was read on the event loop; a server silent to
discovery was said to need a larger ``OMETER_UPSTREAM_TIMEOUT``; a server answering any
model name had every made-up name kept as loaded. The gateway runs in this process; the
servers are emulators, or a small server answering what a test tells it.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

from ollama_meter.gateway._json import MAX_DEPTH
from ollama_meter.testing import Fault, OllamaEmulator
from tests._raw_http import RawServer, _Listener
from tests.gateway.conftest import TestClient, threads_profiled

LLAMA = "llama3.1:8b"
HI = [{"role": "user", "content": "hi"}]
TAGS = json.dumps({"models": [{"model": LLAMA, "name": LLAMA}]}).encode()


class _Refusing(RawServer):
    """Lists the model, and refuses every call with ``status`` and ``Retry-After: said``."""

    def __init__(self, status: int, said: str) -> None:
        self.status, self.said = status, said
        super().__init__(lambda: b"", threaded=True)

    def reply(self, head: bytes, body: bytes) -> bytes:
        status, payload, extra = (
            self.status,
            b'{"error":"busy"}',
            b"retry-after: %s\r\n" % (self.said.encode()),
        )
        if head.split(b" ")[1] in (b"/api/tags", b"/api/ps"):
            status, payload, extra = 200, TAGS, b""
        return (
            b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\nconnection: close\r\n%s"
            b"content-length: %d\r\n\r\n%s" % (status, extra, len(payload), payload)
        )


@pytest.mark.parametrize(
    ("said", "passed"),
    [
        ("7", "7"),
        ("0", "0"),
        ("1.5", "2"),  # seconds with a fraction (some proxies): rounded up, never sooner
        ("0.001", "1"),
        ("-5", None),
        ("abc", None),
        ("1e3", None),
        ("Wed, 21 Oct 2099 07:28:00 GMT", "Wed, 21 Oct 2099 07:28:00 GMT"),
    ],
)
@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("servers", [1, 2])
def test_a_servers_retry_after_is_passed_on_as_seconds_or_a_date_or_not_at_all(
    said: str,
    passed: str | None,
    status: int,
    servers: int,
    in_process: Callable[..., TestClient],
) -> None:
    refusing = [_Refusing(status, said) for _ in range(servers)]
    try:
        client = in_process(*(s.url for s in refusing), retries=0, breaker_failures=100)
        call = {"model": LLAMA, "messages": HI, "stream": False}
        reply = client.post("/api/chat", json=call)
    finally:
        for server in refusing:
            server.close()
    assert reply.status_code == status
    assert reply.headers.get("retry-after") == passed
    if passed is None:  # the gateway retried; told no wait, a client is told not to
        assert reply.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("fault", [Fault.DROP, Fault.MIDSTREAM_ERROR, Fault.STALL])
def test_a_stream_a_server_broke_off_is_not_one_it_served(
    fault: Fault,
    emulators: Callable[..., OllamaEmulator],
    in_process: Callable[..., TestClient],
) -> None:
    one, two = emulators(LLAMA), emulators(LLAMA)
    client = in_process(
        one.url, two.url, discovery_interval=3600, breaker_failures=100, upstream_timeout=1
    )
    one.inject(fault, times=2, after_tokens=1)
    call = {"model": LLAMA, "messages": HI, "stream": True}
    # All on the first server: it has the model loaded after the first (loaded goes first).
    for _ in range(2):
        with client.stream("POST", "/api/chat", json=call) as broken:
            assert b'"error"' in b"".join(broken.iter_bytes())
    answered = client.post("/api/chat", json=call)
    assert answered.status_code == 200
    assert len(one.requests_to("/api/chat")) == 3 and not two.requests_to("/api/chat")
    served = {s["url"]: s["served"] for s in client.get("/api/dash").json()["servers"]}
    assert served == {one.url: 1, two.url: 0}


def test_servers_without_api_ps_answer_it_with_nothing_loaded(
    liar: Callable[[dict[str, tuple[int, bytes]]], str],
    in_process: Callable[..., TestClient],
) -> None:
    # An Ollama older than /api/ps (0.1.38), or a compatible server: in the fleet, answering.
    old = [liar({"/api/tags": (200, TAGS)}) for _ in range(2)]
    client = in_process(*old)
    assert [s["state"] for s in client.get("/healthz").json()["servers"]] == ["up", "up"]
    loaded = client.get("/api/ps")
    assert loaded.status_code == 200, loaded.text
    assert loaded.json() == {"models": []}
    assert [m["model"] for m in client.get("/api/tags").json()["models"]] == [LLAMA]


def _nested(depth: int) -> bytes:
    item = b'{"model": "deep:latest", "x": ' + b"[" * depth + b"]" * depth + b"}"
    return b'{"models": [' + item + b"]}"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 950, 960, 970])
def test_a_server_listing_models_nested_past_what_the_gateway_writes_is_left_out(
    depth: int,
    liar: Callable[[dict[str, tuple[int, bytes]]], str],
    emulators: Callable[..., OllamaEmulator],
    in_process: Callable[..., TestClient],
) -> None:
    # Read, an item some 960 levels deep could not be written again (the event loop's stack
    # is deeper than the parser's was): /api/tags raised RecursionError for every caller.
    good = emulators(LLAMA)
    deep = liar({"/api/tags": (200, _nested(depth)), "/api/ps": (200, _nested(depth))})
    client = in_process(good.url, deep)
    for path, listed in (("/api/tags", [LLAMA]), ("/api/ps", [])):  # nothing loaded yet
        answer = client.get(path)
        assert answer.status_code == 200, answer.text
        assert [m["model"] for m in answer.json()["models"]] == listed
    (_, shown) = client.get("/api/dash").json()["servers"]
    assert shown["state"] == "down"
    assert shown["problem"] == f"{deep}/api/tags answered JSON nested deeper than 512 levels"


@pytest.fixture
def parsed_on() -> Iterator[list[tuple[int, str, int]]]:
    """(thread id, what, bytes) of each JSON text read (``loads``) and each discovery run."""
    seen: list[tuple[int, str, int]] = []

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if event != "call":
            return
        if code.co_name == "loads" and code.co_filename.endswith("json/__init__.py"):
            seen.append((threading.get_ident(), "loads", len(frame.f_locals.get("s") or b"")))
        elif code.co_name in ("_discover", "union") and code.co_filename.endswith("_fleet.py"):
            seen.append((threading.get_ident(), code.co_name, 0))

    with threads_profiled(hook):
        yield seen


def test_a_long_list_of_models_is_read_off_the_event_loop(
    liar: Callable[[dict[str, tuple[int, bytes]]], str],
    emulators: Callable[..., OllamaEmulator],
    in_process: Callable[..., TestClient],
    parsed_on: list[tuple[int, str, int]],
) -> None:
    # 8 MiB of models took 0.16 s to read, each discovery and each /api/tags: every call
    # through the gateway waited for it.
    models = [{"model": f"m{at}:latest", "digest": "a" * 64} for at in range(5_000)]
    long = json.dumps({"models": models}).encode()
    many = liar({"/api/tags": (200, long), "/api/ps": (200, long)})
    client = in_process(emulators(LLAMA).url, many)
    assert len(client.get("/api/tags").json()["models"]) == 5_001
    loop = {ident for ident, what, _ in parsed_on if what in ("_discover", "union")}
    assert len(loop) == 1
    long_reads = [(ident, size) for ident, what, size in parsed_on if size == len(long)]
    assert len(long_reads) == 3  # /api/tags and /api/ps by discovery, /api/tags by the caller
    assert not [size for ident, size in long_reads if ident in loop]


class _Mute(_Listener):
    """Takes each connection and says nothing (an Ollama wedged, a port behind a firewall
    that accepts): held until the test ends."""

    def __init__(self) -> None:
        self.held: list[socket.socket] = []
        super().__init__()

    def _accepted(self, conn: socket.socket) -> None:
        self.held.append(conn)


def test_a_server_silent_to_discovery_is_said_to_be_so_without_advice_that_cannot_help(
    emulators: Callable[..., OllamaEmulator], in_process: Callable[..., TestClient]
) -> None:
    # Discovery waits 5 s whatever OMETER_UPSTREAM_TIMEOUT says: its problem advised raising it.
    mute = _Mute()
    url = mute.url
    try:
        client = in_process(url, emulators(LLAMA).url)
        answered = client.post("/api/chat", json={"model": LLAMA, "messages": HI, "stream": False})
        assert answered.status_code == 200
        (shown, _) = client.get("/api/dash").json()["servers"]
    finally:
        mute.close()
    assert (shown["state"], shown["problem"]) == (
        "down",
        f"{url}/api/tags did not answer in 5 s",
    )


class _AnyModel(RawServer):
    """Lists no model and answers a chat to any model name it is given (llama.cpp's server
    does, some proxies too)."""

    def reply(self, head: bytes, body: bytes) -> bytes:
        payload = b'{"models": []}'
        if head.startswith(b"POST"):
            said = {"role": "assistant", "content": "ok"}
            answer = {"model": json.loads(body)["model"], "message": said, "done": True}
            payload = json.dumps({**answer, "prompt_eval_count": 1, "eval_count": 1}).encode()
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
        )


@pytest.mark.parametrize("servers", [1, 2])
def test_model_names_a_caller_makes_up_are_not_kept_as_loaded(
    servers: int, in_process: Callable[..., TestClient]
) -> None:
    # Each name a server answered was kept as loaded there, for ever with one server (no
    # discovery reads /api/ps again): 20 calls of 100 KB names, 2 MB; a body may be 32 MiB.
    answering = [_AnyModel(lambda: b"", threaded=True) for _ in range(servers)]
    try:
        client = in_process(*(s.url for s in answering), discovery_interval=3600)
        for at in range(20):
            call = {"model": f"m{at}-" + "x" * 100_000, "messages": HI, "stream": False}
            assert client.post("/api/chat", json=call).status_code == 200
        fleet = client.app_state["gateway"].fleet
        assert [server.loaded for server in fleet.servers] == [set()] * servers
    finally:
        for server in answering:
            server.close()
