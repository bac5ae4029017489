"""Stopping the gateway (SIGTERM: systemd stop or restart) while calls run and wait."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time

import httpx
import pytest

from ollama_meter.config import load_settings
from ollama_meter.gateway import GatewayServer, create_app, listening_socket, server_config
from ollama_meter.ledger import SpanFilter, open_ledger
from ollama_meter.testing import OllamaEmulator

HI = [{"role": "user", "content": "hello"}]
PAGE = "http://localhost:5173"


def test_calls_still_running_when_the_drain_ends_get_a_clear_answer(
    emulator: OllamaEmulator, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A call still waiting in the queue when the drain ended got a plain-text ``500 Internal
    Server Error``, a stream still running was cut with no last line, and each left a
    traceback in the log. Now the one is answered 503 in its route's format, with a
    Retry-After, the other ends with an error item, and each span is written."""
    settings = load_settings(db_url=sqlite_url, ollama_host=emulator.url, slots=1)
    sock = listening_socket("127.0.0.1", 0)  # bound here: no other program can take it
    port = int(sock.getsockname()[1])
    config = server_config(create_app(settings), host="127.0.0.1", port=port)
    server = GatewayServer(config, drain_s=0.5)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    emulator.token_latency = 0.5  # a reply of 8 words or more: longer than the drain
    answers: dict[str, httpx.Response] = {}
    streamed: list[bytes] = []
    first = threading.Event()

    def stream() -> None:
        body = {"model": "llama3.1:8b", "messages": HI}
        with httpx.stream("POST", f"{url}/api/chat", json=body, timeout=30) as reply:
            for line in reply.iter_lines():
                streamed.append(line.encode())
                first.set()

    def whole(path: str, body: dict[str, object]) -> None:
        page = {"Origin": PAGE} if path.startswith("/v1/") else {}  # a web page's call
        answers[path] = httpx.post(f"{url}{path}", json=body, headers=page, timeout=30)

    callers = [
        threading.Thread(target=stream),
        threading.Thread(
            target=whole,
            args=("/api/chat", {"model": "llama3.1:8b", "messages": HI, "stream": False}),
        ),
        threading.Thread(
            target=whole,
            args=("/v1/chat/completions", {"model": "llama3.1:8b", "messages": HI}),
        ),
    ]
    callers[0].start()
    assert first.wait(30)
    for caller in callers[1:]:
        caller.start()
    deadline = time.monotonic() + 30
    while "ometer_requests_in_flight 3.0" not in httpx.get(f"{url}/metrics").text:
        assert time.monotonic() < deadline  # the two others wait for the one slot
        time.sleep(0.02)
    with caplog.at_level(logging.INFO):
        server.should_exit = True  # what SIGTERM does
        thread.join(timeout=30)
        for caller in callers:
            caller.join(timeout=30)
    assert not thread.is_alive()
    stopping = "the gateway stopped before this call was answered; send it again"
    assert json.loads(streamed[-1]) == {"error": stopping}
    ollama, openai = answers["/api/chat"], answers["/v1/chat/completions"]
    assert (ollama.status_code, ollama.json(), ollama.headers["retry-after"]) == (
        503,
        {"error": stopping},
        "1",
    )
    assert (openai.status_code, openai.json()["error"]["message"]) == (503, stopping)
    assert openai.headers["access-control-allow-origin"] == PAGE  # the page reads it too
    assert "Exception in ASGI application" not in caplog.text
    assert "the drain ended after 0.5 s: stopped 3 call(s) still running" in caplog.text
    spans = open_ledger(settings.ledger_url).latest(SpanFilter(), 10)
    assert sorted(s.status for s in spans) == ["client_abort"] * 3


def test_a_second_ctrl_c_ends_the_drain_with_clear_answers_not_tracebacks(
    emulator: OllamaEmulator, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C twice (or SIGTERM, then Ctrl-C): uvicorn's forced exit cancelled the calls under
    the server, a stream cut with no last line, two tracebacks in the log. Now the second
    signal ends the drain at once, as its end would: each call answered, each span written."""
    settings = load_settings(db_url=sqlite_url, ollama_host=emulator.url)
    sock = listening_socket("127.0.0.1", 0)
    port = int(sock.getsockname()[1])
    server = GatewayServer(server_config(create_app(settings), host="127.0.0.1", port=port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    emulator.token_latency = 0.5  # far longer than the test: only the signals end it
    streamed: list[bytes] = []
    first = threading.Event()

    def stream() -> None:
        body = {"model": "llama3.1:8b", "messages": HI}
        url = f"http://127.0.0.1:{port}/api/chat"
        with httpx.stream("POST", url, json=body, timeout=30) as reply:
            for line in reply.iter_lines():
                streamed.append(line.encode())
                first.set()

    caller = threading.Thread(target=stream)
    caller.start()
    assert first.wait(30)
    with caplog.at_level(logging.INFO):
        server.handle_exit(signal.SIGTERM, None)  # what the signals do, from their handler
        server.handle_exit(signal.SIGINT, None)
        thread.join(timeout=30)
        caller.join(timeout=30)
    assert not thread.is_alive() and not caller.is_alive()
    stopping = "the gateway stopped before this call was answered; send it again"
    assert json.loads(streamed[-1]) == {"error": stopping}
    assert "Traceback" not in caplog.text and "Exception in ASGI application" not in caplog.text
    assert "the drain was cut short: stopped 1 call(s) still running" in caplog.text
    spans = open_ledger(settings.ledger_url).latest(SpanFilter(), 10)
    assert [s.status for s in spans] == ["client_abort"]
