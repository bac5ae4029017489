"""A ledger copied with ``cp`` keeps the original's id in ``ledger_meta``: an ometer client on
the copy, calling through a gateway on the original, took the gateway's answer (naming that
id) for its own ledger's and wrote no span of the call: the copy, its ledger, lacked the call.
The id now belongs to the file it was made in: a copy (another file) is named anew when a
process first reads it, and the original keeps its own.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from ollama_meter import MeteredClient
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hi"}]


def _named(path: Path) -> str:
    """The id of a new ledger at ``path``, whole in the file (closed: its WAL written back)."""
    ledger = Ledger(f"sqlite:///{path}")
    named = ledger.identity()
    assert named is not None
    ledger.dispose()
    return named


def test_a_client_on_a_copy_of_the_gateways_ledger_records_its_own_span(
    emulator: OllamaEmulator, tmp_path: Path, serve_on: Callable[..., Gateway]
) -> None:
    original, copy = tmp_path / "ledger.db", tmp_path / "copy.db"
    named = _named(original)
    shutil.copyfile(original, copy)
    gw = serve_on(emulator.url, f"sqlite:///{original}")
    with MeteredClient(gw.url, department="sales", db_url=f"sqlite:///{copy}") as client:
        answer = client.chat("llama3.1:8b", HI)
    gw.settle()
    (theirs,) = gw.ledger.latest(SpanFilter(), 10)
    (mine,) = Ledger(f"sqlite:///{copy}").latest(SpanFilter(), 10)
    assert (theirs.source, mine.source, mine.status) == ("gateway", "sdk", "ok")
    assert answer.meter.id == mine.id
    assert gw.ledger.identity() == named != Ledger(f"sqlite:///{copy}").identity()


def test_the_original_keeps_its_id_and_a_copy_is_named_once(tmp_path: Path) -> None:
    original, copy = tmp_path / "ledger.db", tmp_path / "copy.db"
    named = _named(original)
    shutil.copyfile(original, copy)
    copied = [Ledger(f"sqlite:///{copy}").identity() for _ in range(3)]  # three processes
    assert copied[0] == copied[1] == copied[2] != named
    assert Ledger(f"sqlite:///{original}").identity() == named
    assert Ledger(f"sqlite:///{copy}").identity(make=False) == copied[0]
