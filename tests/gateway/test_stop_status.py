"""How ``ometer serve`` ends on a stop signal while the official client streams through it:
the exit status a service manager reads, and every call's span, exactly once."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import ollama
import pytest

from ollama_meter.gateway import GatewayServer, server_config
from ollama_meter.gateway._drain import STOPPED
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.records import SpanRecord
from ollama_meter.testing import OllamaEmulator, expected_counts
from tests.factories import make_span
from tests.gateway.test_processes import HEARING, logged, start_gateway

HI = [{"role": "user", "content": "hello"}]
MODEL = "llama3.1:8b"
CALLS = 3
FILES = 200


def _streams_through_a_stop(
    emulator: OllamaEmulator, tmp_path: Path, signum: int, drain: str | None = None
) -> tuple[int, dict[int, list[str]], str]:
    """``CALLS`` streams through a gateway sent ``signum`` once each has had its first chunk
    (``drain``: its ``OMETER_DRAIN_TIMEOUT``); returns its exit status, what each caller
    received (the error a stream ended with last), and the ledger's file."""
    db = tmp_path / "l.db"
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{db}"}
    if drain is not None:
        env["OMETER_DRAIN_TIMEOUT"] = drain
    proc, url = start_gateway(env, emulator.url)
    emulator.token_latency = 0.02  # the reply (29 chunks) takes a moment, well within the drain
    if drain is not None:
        emulator.token_latency = 0.2  # 6 s: within the default drain, far past a short one
    received: dict[int, list[str]] = {n: [] for n in range(CALLS)}
    flowing = threading.Barrier(CALLS + 1)

    def stream(n: int) -> None:
        client = ollama.Client(host=url)
        try:
            for chunk in client.chat(model=MODEL, messages=HI, stream=True):
                received[n].append(chunk.message.content or "")
                if len(received[n]) == 1:
                    flowing.wait(60)
                if chunk.done:
                    received[n].append("<done>")
        except ollama.ResponseError as exc:
            received[n].append(exc.error)

    callers = [threading.Thread(target=stream, args=(n,)) for n in range(CALLS)]
    for caller in callers:
        caller.start()
    flowing.wait(60)
    proc.send_signal(signum)
    for caller in callers:
        caller.join(60)
    return proc.wait(60), received, str(db)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_that_drained_every_call_exits_0(
    emulator: OllamaEmulator, tmp_path: Path, signum: int
) -> None:
    """``systemctl stop`` (SIGTERM), or a terminal gone (SIGHUP), while calls stream: each
    call finishes and is recorded once, and the gateway exits 0, a clean stop. It exited 143
    (129), which systemd counts as the unit failing (a process ometer ended with
    ``sys.exit(143)`` is not one the signal killed), as do Kubernetes and Docker."""
    status, received, db = _streams_through_a_stop(emulator, tmp_path, signum)
    assert status == 0
    assert all(chunks[-1] == "<done>" for chunks in received.values()), received
    tokens = expected_counts(MODEL, HI)
    with sqlite3.connect(db) as ledger:  # committed by the gateway itself, before it exited
        rows = ledger.execute(
            "SELECT status, input_tokens, output_tokens FROM spans ORDER BY id"
        ).fetchall()
    assert rows == [("ok", *tokens)] * CALLS
    assert len(logged({**os.environ, "OMETER_DB_URL": f"sqlite:///{db}"})) == CALLS


def test_a_drain_the_setting_shortened_stops_the_streams_still_running_with_a_clear_end(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """``OMETER_DRAIN_TIMEOUT`` is the drain's length: streams still running when it ends
    get the gateway's last answer as their last item, each span is written as the caller's
    stop, and the stop is still a clean one."""
    status, received, db = _streams_through_a_stop(emulator, tmp_path, signal.SIGTERM, "0.001")
    assert status == 0
    assert all(chunks[-1] == STOPPED for chunks in received.values()), received
    with sqlite3.connect(db) as ledger:
        statuses = ledger.execute("SELECT status, count(*) FROM spans").fetchall()
    assert statuses == [("client_abort", CALLS)]


def test_ctrl_c_still_ends_as_interrupted(emulator: OllamaEmulator, tmp_path: Path) -> None:
    """Ctrl-C drains as SIGTERM does but ends 130, as an interrupted command: a shell script
    that ran the gateway in the foreground stops there too."""
    status, received, db = _streams_through_a_stop(emulator, tmp_path, signal.SIGINT)
    assert status == 128 + signal.SIGINT
    assert all(chunks[-1] == "<done>" for chunks in received.values()), received
    with sqlite3.connect(db) as ledger:
        assert ledger.execute("SELECT status, count(*) FROM spans").fetchall() == [("ok", CALLS)]


def spooled(url: str) -> tuple[Ledger, list[SpanRecord]]:
    """The ledger at ``url`` with ``FILES`` spool files to record (4 spans each): a gateway
    starting on it takes a moment to record them, before it listens."""
    ledger = Ledger(url)
    spans: list[SpanRecord] = []
    for n in range(FILES):
        batch = [make_span(cost_tokens=n * 10 + i, cost_total=n * 10 + i) for i in range(4)]
        ledger.spool.put(batch)
        spans.extend(batch)
    return ledger, spans


def test_a_stop_while_it_starts_exits_0_and_the_spool_is_recorded_once(tmp_path: Path) -> None:
    """SIGTERM while the gateway starts (here: recording a large spool, before it listens) is
    a stop like any other: exit 0 (it was 143), and the spool's spans each recorded once, by
    whichever process gets to them (the stopped one, or the next ``ometer``)."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    ledger, spans = spooled(url)
    env = {**os.environ, "OMETER_DB_URL": url}
    proc = subprocess.Popen(
        [*HEARING, "serve", "--port", "0", "--upstream", "http://127.0.0.1:9"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(ledger.spool.pending()) == FILES and proc.poll() is None:
        assert time.monotonic() < deadline, "the gateway never began recording its spool"
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, said = proc.communicate(timeout=60)
    assert proc.returncode == 0, said
    assert "Traceback" not in said
    assert len(logged(env)) == len(spans)  # the next command records what was left (800)
    assert ledger.spool.pending() == []
    stored = ledger.latest(SpanFilter(), len(spans) + 10)
    assert sorted(s.id for s in stored) == sorted(s.id for s in spans)
    (total,) = ledger.spend(SpanFilter())
    assert (total.cost, total.requests) == (sum(s.cost_total for s in spans), len(spans))


def test_ctrl_backslash_stops_at_once_each_call_answered_and_written(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """SIGQUIT (Ctrl-\\ in the gateway's terminal: quit now) killed the process on the spot,
    with a core dump: each stream cut with no last item (the official client raised "peer
    closed connection"), the calls left to the next metering process as ``interrupted``, their
    output charged as nothing. Now it stops as a second stop signal does: no drain, each
    stream ends with the gateway's error item, each span written by the gateway itself with
    what was streamed; it exits 131 (128 + SIGQUIT), as a shell reports it, no core dumped."""
    db = tmp_path / "l.db"
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{db}"}
    proc, url = start_gateway(env, emulator.url)
    emulator.token_latency = 1.0  # no reply ends by itself before the stop
    received: dict[int, list[str]] = {n: [] for n in range(CALLS)}
    flowing = threading.Barrier(CALLS + 1)

    def stream(n: int) -> None:
        client = ollama.Client(host=url)
        try:
            for chunk in client.chat(model=MODEL, messages=HI, stream=True):
                received[n].append(chunk.message.content or "")
                if len(received[n]) == 1:
                    flowing.wait(60)
        except ollama.ResponseError as exc:
            received[n].append(f"error: {exc.error}")

    callers = [threading.Thread(target=stream, args=(n,)) for n in range(CALLS)]
    for caller in callers:
        caller.start()
    flowing.wait(60)
    proc.send_signal(signal.SIGQUIT)
    assert proc.wait(60) == 128 + signal.SIGQUIT
    for caller in callers:
        caller.join(60)
    stopped = "error: the gateway stopped before this call was answered; send it again"
    assert [chunks[-1] for chunks in received.values()] == [stopped] * CALLS, received
    with sqlite3.connect(db) as ledger:  # committed by the gateway itself, before it exited
        rows = ledger.execute("SELECT status, output_tokens FROM spans").fetchall()
    assert sorted(rows) == sorted(("client_abort", len(r) - 1) for r in received.values())


def _raised(signum: int) -> None:
    raise SystemExit(128 + signum)  # as ometer's own handler ends the process


@pytest.mark.parametrize(
    ("signals", "status"),
    [
        ((signal.SIGTERM,), None),
        ((signal.SIGHUP, signal.SIGTERM), None),
        ((signal.SIGQUIT,), 131),
        ((signal.SIGTERM, signal.SIGTERM, signal.SIGTERM), 143),
        ((signal.SIGHUP, signal.SIGTERM, signal.SIGHUP), 129),
        ((signal.SIGQUIT, signal.SIGTERM), 143),  # the last one says
    ],
)
def test_the_signal_after_the_drain_was_cut_forces_the_end_and_a_forced_end_is_no_clean_one(
    signals: tuple[int, ...], status: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third stop signal (the second after a SIGQUIT) forces the end, whichever it is: a
    third SIGTERM was ignored (uvicorn forces on SIGINT only). A forced end leaves its calls
    to the journal: it exits as the signal says, not 0."""
    monkeypatch.setattr(signal, "raise_signal", _raised)  # never this test run's own end
    server = GatewayServer(server_config(lambda *_: None, host="127.0.0.1", port=0))
    with pytest.raises(SystemExit) if status else contextlib.nullcontext() as ended:
        with server.capture_signals():
            for sig in signals:
                server.handle_exit(sig, None)
            assert server.should_exit
            forced = len(signals) + (signals[0] == signal.SIGQUIT) == 3  # SIGQUIT: two at once
            assert server.force_exit == forced
    if status:
        assert ended.value.code == status
