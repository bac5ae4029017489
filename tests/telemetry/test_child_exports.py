"""A multiprocessing child's spans reach the collector before it exits.

Such a child leaves by ``os._exit``: it runs no :mod:`atexit` handler, only that module's
finalizers. Telemetry flushed at exit through :mod:`atexit` alone, so the spans of the calls a
pool worker or a ``Process`` made in its last seconds (the exporter sends every 5 s) were
never sent, while its ledger rows were written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_meter.testing import OllamaEmulator
from tests._otlp import OtlpHttpReceiver, spans

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


@pytest.mark.parametrize(
    ("made", "method"),
    [("in the parent", "fork"), ("in the child", "fork"), ("in the child", "forkserver")],
)
def test_the_spans_of_a_multiprocessing_childs_calls_are_exported_as_it_exits(
    emulator: OllamaEmulator, tmp_path: Path, made: str, method: str
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    with OtlpHttpReceiver() as rx:
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{rx.url}/v1/traces",
            "OTEL_BSP_SCHEDULE_DELAY": "600000",  # sent at exit only
            "PYTHONPATH": str(Path(__file__).parents[2]),
        }
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        run = subprocess.run(
            [sys.executable, str(script), emulator.url, url, made, method],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert (run.returncode, run.stderr) == (0, "")
        got = spans(rx)
    assert [span.name for span in got] == ["chat llama3.1:8b"]
