"""One call, one span, when the ledger under a running gateway changes: the id it names on
its answers is the ledger's at the path now, not the one it read when it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import ANY
from zoneinfo import ZoneInfo

import pytest

from ollama_meter import MeteredClient
from ollama_meter.budgets import Budget, budget_status
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter import utc_now
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices
from tests.gateway.conftest import Gateway, left_mid_stream
from tests.gateway.test_processes import OMETER, logged

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


_KILLED_MID_STREAM = {
    "sync": """
import os, sys
from ollama_meter import MeteredClient
from ollama_meter.budgets import Budget, budget_status
client = MeteredClient(sys.argv[1], department="sales", db_url=sys.argv[2])
parts = client.chat("llama3.1:8b", [{"role": "user", "content": "a b c d"}], stream=True,
                    options={"num_predict": 200})
next(parts)
print("read", flush=True)
os.kill(os.getpid(), 9)
""",
    "async": """
import asyncio, os, sys
from ollama_meter import AsyncMeteredClient
async def main():
    client = AsyncMeteredClient(sys.argv[1], department="sales", db_url=sys.argv[2])
    parts = await client.chat("llama3.1:8b", [{"role": "user", "content": "a b c d"}],
                              stream=True, options={"num_predict": 200})
    await anext(parts)
    print("read", flush=True)
    os.kill(os.getpid(), 9)
asyncio.run(main())
""",
}


def _budgeted(emulator: OllamaEmulator, url: str, serve_on: Callable[..., Gateway]) -> Gateway:
    """A gateway on ``url`` with prices and a daily budget for sales."""
    gw = serve_on(emulator.url, url)
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(
        Budget(tenant="default", department="sales", period="day", limit=1_000_000, currency="USD")
    )
    return gw


def _the_one_record(gw: Gateway, span: Any) -> None:
    """The gateway's ``span`` is the call's one record once the dead client's journal is
    recovered, and the dead client's hold on the budget is given back (not left to lapse)."""
    assert gw.meter.recover_interrupted() == 0
    spans = gw.ledger.latest(SpanFilter(), 10)
    assert [(s.id, s.source) for s in spans] == [(span.id, "gateway")]
    assert gw.meter.budgets is not None
    gw.meter.budgets.close()
    (status,) = budget_status(gw.ledger, tz=ZoneInfo("UTC"), now=utc_now())
    assert (status.spent, status.held) == (span.cost_total, 0)


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_client_killed_mid_stream_leaves_the_gateways_span_alone(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway], driver: str
) -> None:
    """``kill -9`` of a client reading a stream the gateway on its ledger records: the
    gateway's span (its caller gone) is the call's one record. The client's journal kept
    the call open, and the next process on the ledger recorded it again as interrupted."""
    gw = _budgeted(emulator, sqlite_url, serve_on)
    emulator.token_latency = 0.05
    try:
        dead = subprocess.run(
            [sys.executable, "-c", _KILLED_MID_STREAM[driver], gw.url, sqlite_url],
            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2],
            timeout=60, check=False,
        )  # fmt: skip
        assert (dead.returncode, dead.stdout) == (-signal.SIGKILL, "read\n"), dead.stderr
        span = left_mid_stream(gw, emulator)
    finally:
        emulator.token_latency = 0.0
    _the_one_record(gw, span)


def test_the_tags_an_on_start_hook_adds_are_on_the_gateways_span(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway]
) -> None:
    """What an ``on_start`` hook adds to a call's tags is stored with the call; through a
    gateway on the client's ledger the gateway's span is the call's one record, and it
    carried only the client's own tags: the hook's were lost."""
    gw = serve_on(emulator.url, sqlite_url)

    def tag(span: Any) -> None:
        span.tags["job"] = "nightly"

    own = {"team": "ml"}
    with MeteredClient(gw.url, db_url=sqlite_url, tags=own, on_start=tag) as client:
        answer = client.chat("llama3.1:8b", HI)
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(), 1)
    assert (span.id, answer.meter.recorded_by) == (answer.meter.id, gw.url)
    assert span.tags == {"team": "ml", "job": "nightly", "ometer.client_span": ANY}


def test_ometer_chat_inside_ometer_run_db_writes_to_the_runs_ledger(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """``ometer run --db X -- prog``: an ometer client in prog charged the run's tenant and
    department but wrote to its own ledger (the default one), so the call was recorded in
    both, the client's span in a ledger the run was told not to use. The program is given
    the run's ledger as it is given the run's names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMETER_") and k != "HOME"}
    env.update(OLLAMA_HOST=emulator.url, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "d"))
    run_db = f"sqlite:///{tmp_path / 'run.db'}"
    chat = [*OMETER, "chat", "-m", "llama3.1:8b", "--no-stream", "hi"]
    done = subprocess.run(
        [*OMETER, "run", "--db", run_db, "--", *chat],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "recorded by the gateway at" in done.stderr, done.stderr
    spans = logged({**env, "OMETER_DB_URL": run_db})
    assert [s["source"] for s in spans] == ["gateway"]


_WAITS_FOR_THE_ANSWER = """
import sys
from ollama_meter import MeteredClient
client = MeteredClient(sys.argv[1], department="sales", db_url=sys.argv[2],
                       on_start=lambda span: print(span.id, flush=True))
answer = client.chat("llama3.1:8b", [{"role": "user", "content": "a b c d"}],
                     stream=sys.argv[3] == "stream", options={"num_predict": 200})
next(iter(answer)) if sys.argv[3] == "stream" else None
print("answered", flush=True)
"""


def _killed_before_the_answer(
    emulator: OllamaEmulator, upstream: str, url: str, how: str = "whole", gw: Gateway | None = None
) -> str:
    """A client process on the ledger ``url`` calling ``upstream``, ``kill -9``'d while Ollama
    holds its answer back (a whole one, or a stream's first part): its own span id of the
    call. Given the gateway it called, once that gateway has recorded the call."""
    emulator.latency = 30.0  # the answer never comes while the client lives
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", _WAITS_FOR_THE_ANSWER, upstream, url, how],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        assert child.stdout is not None
        named = child.stdout.readline().strip()
        deadline = time.monotonic() + 60
        while emulator.in_flight == 0:
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the client's call never reached Ollama"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=60)
        assert (child.returncode, out) == (-signal.SIGKILL, ""), err
        while gw is not None and not gw.ledger.latest(SpanFilter(), 1):
            assert time.monotonic() < deadline, "the gateway never noticed its caller leave"
            time.sleep(0.05)
    finally:
        emulator.latency = 0.0
    return named


@pytest.mark.parametrize("how", ["whole", "stream"])
def test_a_client_killed_before_the_answer_leaves_the_gateways_span_alone(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway], how: str
) -> None:
    """``kill -9`` of a client waiting for an answer (a whole one, or a stream's first part)
    from a gateway on its ledger: the gateway's abort span is the call's one record. The
    client's journal entry, never closed (no answer named the gateway), was recorded again
    as interrupted by the next process on the ledger: the call counted twice."""
    gw = _budgeted(emulator, sqlite_url, serve_on)
    named = _killed_before_the_answer(emulator, gw.url, sqlite_url, how, gw)
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.source, span.status) == ("gateway", "client_abort")
    assert span.tags == {"ometer.client_span": named}
    _the_one_record(gw, span)


def test_a_caller_naming_anothers_span_spares_no_copy_charged_otherwise(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway]
) -> None:
    """A client calling Ollama itself (no gateway) is killed before the answer; a hostile
    caller names that client's span id to a gateway on the same ledger, charged to another
    department. The dead client's call is still recorded, as interrupted: a gateway span
    only stands for a client's call charged alike, and the caller's word spares nothing else.
    A malformed id, or the gateway's note set as a tag, is not noted."""
    gw = serve_on(emulator.url, sqlite_url)
    named = _killed_before_the_answer(emulator, emulator.url, sqlite_url)
    body = {"model": "llama3.1:8b", "messages": HI, "stream": False}
    for header in (named, named.lower(), f"{named}X", "../" + named[3:]):
        said = {"X-Ometer-Client-Span": header, "X-Ometer-Department": "ops"}
        assert gw.client.post("/api/chat", json=body, headers=said).status_code == 200
    tagged = {"X-Ometer-Tags": json.dumps({"ometer.client_span": named})}
    refused = gw.client.post("/api/chat", json=body, headers=tagged)
    assert refused.status_code == 400 and "gateway's own tag" in refused.json()["error"]
    gw.settle()
    noted = [s.tags.get("ometer.client_span") for s in gw.ledger.latest(SpanFilter(), 10)]
    assert noted == [None, None, None, None, named]
    assert gw.meter.recover_interrupted() == 1
    (recovered,) = [s for s in gw.ledger.latest(SpanFilter(), 10) if s.source != "gateway"]
    assert (recovered.id, recovered.status, recovered.department) == (
        named,
        "interrupted",
        "sales",
    )


@pytest.mark.parametrize("how", ["whole", "stream"])
def test_a_client_killed_before_the_answer_through_two_gateways_is_one_record(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway], how: str
) -> None:
    """``kill -9`` of a client waiting for an answer through a gateway in front of another,
    all three on one ledger (``ometer chat`` inside ``ometer run`` in front of ``ometer
    serve``): the inner gateway's abort span is the call's one record. The outer gateway
    named its own span onward, so nothing in the ledger named the client's: its journal entry
    was recorded again as interrupted (or the outer wrote its abort beside the inner's)."""
    inner = _budgeted(emulator, sqlite_url, serve_on)
    outer = serve_on(inner.url, sqlite_url)
    named = _killed_before_the_answer(emulator, outer.url, sqlite_url, how, inner)
    outer.settle()
    deadline = time.monotonic() + 10
    while outer.meter.budgets is not None and outer.meter.budgets._leases:
        assert time.monotonic() < deadline, "the outer gateway never ended the call"
        time.sleep(0.05)
    outer.settle()
    spans = inner.ledger.latest(SpanFilter(), 10)
    assert [(s.source, s.status, s.tags) for s in spans] == [
        ("gateway", "client_abort", {"ometer.client_span": named})
    ]
    (span,) = spans
    assert outer.meter.budgets is not None
    outer.meter.budgets.close()
    _the_one_record(inner, span)
