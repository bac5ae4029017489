"""A multiprocessing child's spans reach the collector before it exits.

Such a child leaves by ``os._exit``: it runs no :mod:`atexit` handler, only that module's
finalizers. Telemetry flushed at exit through :mod:`atexit` alone, so the spans of the calls a
pool worker or a ``Process`` made in its last seconds (the exporter sends every 5 s) were
never sent, while its ledger rows were written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests._otlp import OtlpHttpReceiver, spans, wait_for

CHILD = """
import multiprocessing, sys
from ollama_meter import MeteredClient

host, url, made, method = sys.argv[1:]
client = None


def call():
    own = client or MeteredClient(host, db_url=url)
    own.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}])


if __name__ == "__main__":
    if made == "in the parent":
        client = MeteredClient(host, db_url=url)
    child = multiprocessing.get_context(method).Process(target=call)
    child.start()
    child.join()
    assert child.exitcode == 0, child.exitcode
"""


def _run(
    tmp_path: Path, source: str, *args: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``source`` with ``args`` (after the emulator's and a ledger's URL, which the caller
    passes) against a collector; how it ended, and the names of the spans the collector got."""
    script = tmp_path / "program.py"
    script.write_text(source)
    with OtlpHttpReceiver() as rx:
        environment = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{rx.url}/v1/traces",
            "PYTHONPATH": str(Path(__file__).parents[2]),
            **env,
        }
        run = subprocess.run(
            [sys.executable, str(script), *args],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return run, [span.name for span in spans(rx)]


@pytest.mark.parametrize(
    ("made", "method"),
    [("in the parent", "fork"), ("in the child", "fork"), ("in the child", "forkserver")],
)
def test_the_spans_of_a_multiprocessing_childs_calls_are_exported_as_it_exits(
    emulator: OllamaEmulator, tmp_path: Path, made: str, method: str
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    sent_at_exit_only = {"OTEL_BSP_SCHEDULE_DELAY": "600000"}
    run, got = _run(tmp_path, CHILD, emulator.url, url, made, method, **sent_at_exit_only)
    assert (run.returncode, run.stderr) == (0, "")
    assert got == ["chat llama3.1:8b"]


POOL = """
import multiprocessing, sys
from ollama_meter import MeteredClient

host, url, method = sys.argv[1:]


def call(n):
    MeteredClient(host, db_url=url).chat(
        model="llama3.1:8b", messages=[{"role": "user", "content": f"hi {n}"}]
    )


if __name__ == "__main__":
    with multiprocessing.get_context(method).Pool(2) as pool:
        pool.map(call, range(4))
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_the_spans_of_pool_workers_ended_by_sigterm_are_exported(
    emulator: OllamaEmulator, tmp_path: Path, method: str
) -> None:
    """``with multiprocessing.Pool() as pool:`` ends its workers by SIGTERM as the block exits
    (``Pool.terminate``). The signal's default action killed them at once: no finalizer ran,
    and the spans of their calls, waiting for the exporter's next batch, never left (0 of 4
    reached the collector; the ledger had all 4 rows). Under ``ometer run`` the same workers'
    clients lost their spans of the gateway's calls."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    run, got = _run(tmp_path, POOL, emulator.url, url, method)
    assert (run.returncode, run.stderr) == (0, "")
    assert got == ["chat llama3.1:8b"] * 4
    assert len(Ledger(url).latest(SpanFilter(), limit=10)) == 4


BLOCKED = """
import multiprocessing, signal, sys, threading
from ollama_meter import MeteredClient

host, url = sys.argv[1:]


def work(ready):
    MeteredClient(host, db_url=url).chat(
        model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}]
    )
    # As a worker waiting on the pool's queue lock when the signal came to another thread:
    # the main thread never runs Python again.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    ready.set()
    threading.Event().wait()


if __name__ == "__main__":
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    child = context.Process(target=work, args=(ready,))
    child.start()
    assert ready.wait(60)
    child.terminate()
    child.join(20)
    if child.exitcode is None:
        child.kill()
    print(child.exitcode)
"""


def test_a_child_whose_main_thread_never_runs_python_again_still_dies_of_sigterm(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """A Python signal handler runs only when the main thread next runs Python. A pool's
    worker blocked on the queue's lock as the SIGTERM came (to another of its threads, or
    just before the wait began) never ran it: it neither sent its spans nor died, and the
    pool's exit waited for it for ever (seen once in 15 runs of a two-worker pool). The
    signal reaches a thread of ometer's that stops telemetry and ends the process, with the
    status SIGTERM gives."""
    run, got = _run(tmp_path, BLOCKED, emulator.url, f"sqlite:///{tmp_path / 'ledger.db'}")
    assert (run.returncode, run.stdout, run.stderr) == (0, f"{-signal.SIGTERM}\n", "")
    assert got == ["chat llama3.1:8b"]


PLAIN = """
import signal, sys, time
from ollama_meter import MeteredClient

host, url, wait = sys.argv[1:]
MeteredClient(host, db_url=url).chat(
    model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}]
)
print("called", flush=True)
if wait == "sleep":
    time.sleep(60)  # a service's worker, waiting for its next job when it is stopped
else:
    signal.pause()  # returns once a handler ran: the program ends on its own
"""


@pytest.mark.parametrize("wait", ["sleep", "pause"])
def test_a_plain_programs_spans_are_exported_when_it_is_ended_by_sigterm(
    emulator: OllamaEmulator, tmp_path: Path, wait: str
) -> None:
    """A program using the Python API, stopped by SIGTERM (``systemctl stop``, Kubernetes,
    ``timeout``) while its last spans wait for the exporter's next batch: the signal's default
    killed it at once, and they never reached the collector (the ledger had the call). Its
    spans are sent, and it dies of the signal as before: also one whose main thread, given
    back by the handler, would end the program on its own meanwhile (``signal.pause``)."""
    script = tmp_path / "program.py"
    script.write_text(PLAIN)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with OtlpHttpReceiver() as rx:
        environment = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{rx.url}/v1/traces",
            "OMETER_EXPORT_TIMEOUT": "60",
            "PYTHONPATH": str(Path(__file__).parents[2]),
        }
        with subprocess.Popen(
            [sys.executable, str(script), emulator.url, url, wait],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as program:
            assert program.stdout is not None
            assert program.stdout.readline() == "called\n"
            rx.answering.clear()  # a collector that takes a while: the program ends meanwhile
            program.send_signal(signal.SIGTERM)
            wait_for(lambda: rx.requests, 60, what="the export")
            with contextlib.suppress(subprocess.TimeoutExpired):
                program.wait(1)  # an exit before the answer: the spans cut, exit 0
            rx.answering.set()
            out, err = program.communicate(timeout=60)
        got = spans(rx)
    assert (program.returncode, out, err) == (-signal.SIGTERM, "", "")
    assert [(span.name, span.attributes["ometer.status"]) for span in got] == [
        ("chat llama3.1:8b", "ok")
    ]
    (row,) = Ledger(url).latest(SpanFilter(), limit=10)
    assert got[0].attributes["ometer.span.id"] == row.id


OWN_HANDLER = """
import os, signal, sys, time
from ollama_meter import MeteredClient

host, url = sys.argv[1:]
MeteredClient(host, db_url=url).chat(
    model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}]
)
signal.signal(signal.SIGTERM, lambda signum, frame: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(1)  # room for anything else that heard the signal to act on it
print("went on")
"""


def test_a_sigterm_handler_the_program_sets_later_is_the_one_that_answers(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """A program that sets a SIGTERM handler of its own after its first client (the CLI, a
    web server, a worker that finishes its job first) replaced ometer's: but the thread that
    hears signals through the wakeup pipe still ended the process on any SIGTERM, the
    program's handler run or not (a test worker was killed by a SIGTERM its handler had
    taken). The program's handler answers, and the program goes on."""
    run, got = _run(tmp_path, OWN_HANDLER, emulator.url, f"sqlite:///{tmp_path / 'ledger.db'}")
    assert (run.returncode, run.stdout, run.stderr) == (0, "handled\nwent on\n", "")
    assert got == ["chat llama3.1:8b"]  # sent at exit, as any program's
