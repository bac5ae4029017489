"""One call, one span, when the ledger under a running gateway changes: the id it names on
its answers is the ledger's at the path now, not the one it read when it started."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ollama_meter import MeteredClient
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hi"}]
LEDGER_HEADER = "X-Ometer-Ledger"


def test_a_new_ledger_file_at_the_path_is_named_by_its_own_id(
    emulator: OllamaEmulator, tmp_path: Path, serve_on: Callable[..., Gateway]
) -> None:
    """The ledger removed (or a backup restored) under a running gateway: the gateway writes
    to the file at the path, and so does a client on it. The gateway named the old file's id
    for as long as it ran, so every client call was recorded twice (the client's own span
    beside the gateway's), where one stray call at most is."""
    path = tmp_path / "l.db"
    url = f"sqlite:///{path}"
    gw = serve_on(emulator.url, url)
    body = {"model": "llama3.1:8b", "messages": HI, "stream": False}
    old = gw.client.post("/api/chat", json=body).headers[LEDGER_HEADER]
    gw.settle()
    for end in ("", "-wal", "-shm"):
        Path(f"{path}{end}").unlink(missing_ok=True)
    gw.client.post("/api/chat", json=body)  # the gateway meets the new file here
    gw.settle()
    named = gw.client.post("/api/chat", json=body).headers.get(LEDGER_HEADER)
    gw.settle()
    assert named != old
    with MeteredClient(gw.url, department="sales", db_url=url) as client:
        last = client.chat("llama3.1:8b", HI)
    gw.settle()
    spans = gw.ledger.latest(SpanFilter(), 10)
    assert [s.source for s in spans] == ["gateway"] * 3
    assert last.meter.recorded_by == gw.url and last.meter.id == spans[0].id
