"""Stop signals outside a serving gateway (``_stops.py``): SIGQUIT (Ctrl-\\) while a gateway
starts and in ``ometer chat``, and any stop signal while ``ometer`` loads its modules.

A serving gateway stops on SIGQUIT at once, each call answered and written, exit 131, and on
SIGTERM or SIGHUP cleanly, exit 0 (``tests/gateway/test_stop_status.py``). Before it listened,
SIGQUIT took its default, a core dump; so did Ctrl-\\ in ``ometer chat``, its call left to the
next process as ``interrupted``. And any stop signal in the quarter second ``ometer`` loads its
modules killed it outright (a gateway's SIGTERM then read as 143, a failed stop, by systemd).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.test_processes import HEARING, logged
from tests.gateway.test_stop_status import FILES, spooled
from tests.test_client_closed_under import GENEROUS, _until


def test_ctrl_backslash_while_the_gateway_starts_ends_it_131_and_dumps_no_core(
    tmp_path: Path,
) -> None:
    """As after it started: exit 131, no traceback; the spool it was recording is recorded
    once, by it or by the next ``ometer``."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    ledger, spans = spooled(url)
    env = {**os.environ, "OMETER_DB_URL": url}
    proc = subprocess.Popen(
        [*HEARING, "serve", "--port", "0", "--upstream", "http://127.0.0.1:9"],
        env=env,
        cwd=tmp_path,  # where a core would be dumped
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _until(
        lambda: len(ledger.spool.pending()) < FILES or proc.poll() is not None,
        "the gateway began recording its spool",
    )
    proc.send_signal(signal.SIGQUIT)
    _, said = proc.communicate(timeout=GENEROUS)
    assert proc.returncode == 128 + signal.SIGQUIT, said
    assert "Traceback" not in said
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("core")]
    assert len(logged(env)) == len(spans)
    assert sorted(s.id for s in ledger.latest(SpanFilter(), len(spans) + 10)) == sorted(
        s.id for s in spans
    )


def test_ctrl_backslash_in_chat_ends_it_131_and_its_call_is_written(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'l.db'}"
    env = {**os.environ, "OLLAMA_HOST": emulator.url, "OMETER_DB_URL": db}
    emulator.token_latency = 5.0  # the reply does not end before the signal
    proc = subprocess.Popen(
        [*HEARING, "chat", "--dept", "sales", "say hi"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _until(lambda: emulator.in_flight == 1 or proc.poll() is not None, "the call reached Ollama")
    proc.send_signal(signal.SIGQUIT)
    _, said = proc.communicate(timeout=GENEROUS)
    assert proc.returncode == 128 + signal.SIGQUIT, said
    assert "Traceback" not in said
    (span,) = Ledger(db).latest(SpanFilter(), 5)  # written by chat itself, not the next process
    assert (span.department, span.status) == ("sales", "client_abort")


LOADING = (
    "import os, runpy, signal, sys\n"
    "signal.signal(signal.SIGHUP, signal.SIG_DFL)\n"
    "from ollama_meter._stops import hold\n"
    "hold()\n"
    "os.kill(os.getpid(), {sig})  # as ometer starts to load its modules\n"
    "sys.argv[0] = 'ometer'\n"
    "runpy.run_module('ollama_meter', run_name='__main__')\n"
)


@pytest.mark.parametrize(
    ("command", "sig", "status"),
    [
        (["serve", "--port", "0", "--upstream", "http://127.0.0.1:9"], signal.SIGTERM, 0),
        (["serve", "--port", "0", "--upstream", "http://127.0.0.1:9"], signal.SIGHUP, 0),
        (["serve", "--port", "0", "--upstream", "http://127.0.0.1:9"], signal.SIGQUIT, 131),
        (["chat", "hi"], signal.SIGTERM, 143),
        (["log"], signal.SIGQUIT, 131),
    ],
)
def test_a_stop_signal_while_ometer_loads_is_the_commands_to_act_on(
    emulator: OllamaEmulator, tmp_path: Path, command: list[str], sig: int, status: int
) -> None:
    """The signal, noted while the modules load, stops the command as soon as it can act: a
    gateway stopped by SIGTERM or SIGHUP exits 0 (as while it starts, or serves), the rest as
    the signal says, none killed by it."""
    env = {
        **os.environ,
        "OLLAMA_HOST": emulator.url,
        "OMETER_DB_URL": f"sqlite:///{tmp_path / 'l.db'}",
    }
    done = subprocess.run(
        [sys.executable, "-c", LOADING.format(sig=int(sig)), *command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=GENEROUS,
        check=False,
    )
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr
    assert emulator.calls == []  # stopped before it called Ollama
