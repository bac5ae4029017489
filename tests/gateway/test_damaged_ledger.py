"""The gateway's SQLite ledger damaged under it: calls are answered, their spans spooled,
``/healthz`` says why writes fail, and a good copy put back is written from the next call."""

from __future__ import annotations

import re
from pathlib import Path

from ollama_meter.ledger import SpanFilter, backup
from ollama_meter.testing import expected_reply
from tests.gateway.conftest import Gateway
from tests.integrity.test_damaged_file import damage, restore

HI = [{"role": "user", "content": "hello from the crm bot"}]
EXPECTED = expected_reply("llama3.1:8b", HI)


def _chat(gw: Gateway) -> None:
    reply = gw.client.post(
        "/api/chat", json={"model": "llama3.1:8b", "messages": HI, "stream": False}
    )
    assert reply.status_code == 200 and reply.json()["message"]["content"] == EXPECTED.content
    gw.settle()


def test_healthz_says_the_ledger_fails_while_its_writes_do(
    sqlite_app: Gateway, sqlite_url: str, tmp_path: Path
) -> None:
    """Its probe reads one row, which a damaged page elsewhere leaves readable: ``/healthz``
    said ok while every call's span went to the spool."""
    gw = sqlite_app
    ledger = gw.meter.ledger  # the gateway's own (the fixture's would hold the file too)
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    for _ in range(2):
        _chat(gw)
    backup(ledger, tmp_path / "copy.db")
    damage(path, "garbage in the spans' pages")
    for _ in range(3):
        _chat(gw)  # answered all the same
    health = gw.client.get("/healthz")
    assert health.status_code == 503, health.text
    said = health.json()
    assert (said["status"], said["upstream"]) == ("degraded", "ok")
    assert re.fullmatch(
        r"failed: writes fail since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, their spans kept in "
        + re.escape(
            f"{ledger.spool.directory} until one succeeds: could not write 1 span(s) to the "
            f"ledger at {path}: database disk image is malformed: the file is damaged or is not "
            "an ometer ledger. Restore it from a backup (`ometer db backup FILE` makes one; a "
            "running gateway writes to the copy from its next write), or move it aside to start "
            "a new ledger; spans wait in the spool meanwhile"
        ),
        said["ledger"],
    ), said["ledger"]
    assert sum(p.read_bytes().count(b"\n") for p in ledger.spool.pending()) == 3

    restore(tmp_path / "copy.db", path, "copied over the file")
    _chat(gw)
    assert gw.client.get("/healthz").json() == {"status": "ok", "ledger": "ok", "upstream": "ok"}
    spans = ledger.latest(SpanFilter(), 100)
    assert len(spans) == 6 and ledger.spool.pending() == []
    assert {(s.status, s.input_tokens, s.output_tokens) for s in spans} == {
        ("ok", EXPECTED.prompt_tokens, EXPECTED.output_tokens)
    }
