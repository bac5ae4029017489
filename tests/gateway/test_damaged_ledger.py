"""The gateway's SQLite ledger damaged under it: calls are answered, their spans spooled,
``/healthz`` says why writes fail, and a good copy put back is written from the next call."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import ollama

from ollama_meter.ledger import Ledger, SpanFilter, backup
from ollama_meter.testing import OllamaEmulator, expected_reply
from tests.gateway.conftest import Gateway
from tests.gateway.test_processes import OMETER, logged, start_gateway
from tests.integrity.test_damaged_file import damage, restore

HI = [{"role": "user", "content": "hello from the crm bot"}]
EXPECTED = expected_reply("llama3.1:8b", HI)
OK = {"status": "ok", "ledger": "ok", "upstream": "ok"}


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
    ledger.drain_slice = 60.0  # the three spooled files in the next write, however busy
    _chat(gw)
    assert gw.client.get("/healthz").json() == OK
    spans = ledger.latest(SpanFilter(), 100)
    assert len(spans) == 6 and ledger.spool.pending() == []
    assert {(s.status, s.input_tokens, s.output_tokens) for s in spans} == {
        ("ok", EXPECTED.prompt_tokens, EXPECTED.output_tokens)
    }


def _health(url: str) -> tuple[int, dict[str, str]]:
    answer = httpx.get(f"{url}/healthz", timeout=10)
    return answer.status_code, answer.json()


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60  # a busy machine: a wait, not a measure
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_gateway_process_serves_through_a_damaged_ledger_and_takes_a_copy_put_back(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """The whole attack, as processes: ``ometer serve`` answers while its ledger is damaged,
    ``/healthz`` and ``ometer log`` say why, and a backup copied over the file (``cp``) is
    written from the next call, readable by every other process while the gateway runs (its
    connections to the damaged file held locks that made it "database is locked")."""
    path = tmp_path / "l.db"
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{path}"}
    proc, url = start_gateway(env, emulator.url)
    client = ollama.Client(host=url)
    try:
        for _ in range(2):
            client.chat(model="llama3.1:8b", messages=HI)
        _until(lambda: len(logged(env)) == 2, "the first spans committed")
        copy = Ledger(f"sqlite:///{path}")
        backup(copy, tmp_path / "copy.db")
        copy.dispose()
        damage(path, "garbage in the spans' pages")
        for _ in range(3):
            assert client.chat(model="llama3.1:8b", messages=HI).message.content == (
                EXPECTED.content
            )
        _until(lambda: _health(url)[0] == 503, "/healthz to say the ledger fails")
        said = _health(url)[1]["ledger"]
        assert f"{path}" in said and "database disk image is malformed" in said, said
        told = subprocess.run(
            [*OMETER, "log"], env=env, capture_output=True, text=True, check=False
        )
        assert told.returncode == 1
        assert (
            f"error: the ledger at {path} failed: database disk image is malformed: the file is "
            "damaged or is not an ometer ledger. Restore it from a backup"
        ) in told.stderr, told.stderr
        restore(tmp_path / "copy.db", path, "copied over the file")
        client.chat(model="llama3.1:8b", messages=HI)
        _until(lambda: _health(url) == (200, OK), "/healthz to say ok again")
        spans = logged(env)  # another process, the gateway still running
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert len(spans) == 6
    assert {(s["status"], s["input_tokens"], s["output_tokens"]) for s in spans} == {
        ("ok", EXPECTED.prompt_tokens, EXPECTED.output_tokens)
    }
