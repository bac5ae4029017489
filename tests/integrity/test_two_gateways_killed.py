"""Two gateways on one SQLite ledger, killed in turn (``kill -9``) while the other serves, each
kill with answered calls only in the journal (the ledger locked) and a stream in flight: each
restart records the dead one's calls while the other commits its own. Every answered call is
one span, each call in flight one ``interrupted`` span, and the rollups are what a rebuild of
the raw spans gives. At most 3 processes: this one (the emulator) and two gateways."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from collections import Counter
from pathlib import Path

import httpx
from sqlalchemy import select

from ollama_meter.ledger import Ledger, rebuild
from ollama_meter.ledger.models import SPANS
from ollama_meter.testing import OllamaEmulator, expected_counts
from tests.gateway.test_processes import start_gateway
from tests.ledger.test_transfer import _tables

HI = [{"role": "user", "content": "hello"}]
MODEL = "llama3.1:8b"
ROUNDS = 2  # one kill of each


def _call(url: str, user: str, *, stream: bool) -> None:
    body = {"model": MODEL, "messages": HI, "stream": stream}
    reply = httpx.post(f"{url}/api/chat", json=body, headers={"X-Ometer-User": user}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.text.rstrip().endswith("}") and '"done":true' in reply.text.splitlines()[-1]


def _cut(url: str, user: str, flowing: threading.Event) -> None:
    """A stream read until its gateway dies under it (``flowing`` once it has begun)."""
    body = {"model": MODEL, "messages": HI}
    headers = {"X-Ometer-User": user}
    try:
        with httpx.stream(
            "POST", f"{url}/api/chat", json=body, headers=headers, timeout=60
        ) as reply:
            for _ in reply.iter_lines():
                flowing.set()
    except httpx.HTTPError:
        pass  # the gateway died under it


def test_two_gateways_killed_in_turn_record_every_call_once(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    db = tmp_path / "l.db"
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{db}", "OMETER_LEDGER_WAIT": "300"}
    gateways = [start_gateway(env, emulator.url) for _ in range(2)]
    answered: list[str] = []
    in_flight: list[str] = []
    for n in range(ROUNDS):
        dying = n % 2
        locker = sqlite3.connect(db, isolation_level=None, timeout=60)
        locker.execute("BEGIN IMMEDIATE")  # every commit waits: the answered calls are journaled
        try:
            for g, (_, url) in enumerate(gateways):
                for k in range(3):
                    user = f"r{n}-g{g}-{k}"
                    _call(url, user, stream=bool(k % 2))
                    answered.append(user)
            # A stream that will not end by itself, in flight as its gateway dies.
            user = f"r{n}-cut"
            emulator.token_latency = 1.0
            flowing = threading.Event()

            reader = threading.Thread(target=_cut, args=(gateways[dying][1], user, flowing))
            reader.start()
            assert flowing.wait(60)
            in_flight.append(user)
            proc = gateways[dying][0]
            proc.send_signal(signal.SIGKILL)
            proc.wait(60)
            reader.join(60)
            emulator.token_latency = 0.0
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        # Restarted at once: it records what the dead one left while the other commits its own.
        gateways[dying] = start_gateway(env, emulator.url)
    for proc, _ in gateways:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(60) for proc, _ in gateways] == [0, 0]

    ledger = Ledger(f"sqlite:///{db}")
    with ledger.read() as conn:
        rows = list(conn.execute(select(SPANS.c.user, SPANS.c.status, SPANS.c.output_tokens)))
    by_user = Counter(row.user for row in rows)
    assert by_user == Counter(answered + in_flight)  # each once, and nothing else
    status = {row.user: (row.status, row.output_tokens) for row in rows}
    reply = expected_counts(MODEL, HI)[1]
    assert {status[user] for user in answered} == {("ok", reply)}
    assert {status[user][0] for user in in_flight} == {"interrupted"}
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept
    assert not list((tmp_path / "l.db.spool" / "journal").glob("*.journal"))
