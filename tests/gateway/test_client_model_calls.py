"""``MeteredClient``'s calls that run no model, through ``ometer serve``: refused as the
gateway refuses model management to the ``ollama`` client (``ResponseError`` 403, its words),
let through as it lets them through when allowed, and never metered."""

from __future__ import annotations

from collections.abc import Callable

import ollama
import pytest

from ollama_meter import MeteredClient
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway
from tests.test_client_models import STEPS, outcome, sent

MANAGING = ["pull", "push, streamed", "create", "copy", "delete"]
READING = ["list", "show", "show a model not there"]


@pytest.mark.parametrize("allowed", [False, True], ids=["refused", "allowed"])
def test_model_calls_through_a_gateway_go_as_the_ollama_clients_do(
    serve: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str, allowed: bool
) -> None:
    gateway = serve(emulator.url, allow_admin=allowed)
    runs = []
    with MeteredClient(gateway.url, db_url=sqlite_url) as metered:
        for client in (ollama.Client(gateway.url), metered):
            emulator.reset()
            runs.append(([outcome(STEPS[s], client) for s in READING + MANAGING], sent(emulator)))
    assert runs[1] == runs[0]
    said, reached = runs[0]
    refusals = [o for o in said if o[0] is ollama.ResponseError and o[2] == 403]
    assert len(refusals) == (0 if allowed else len(MANAGING))
    assert all("start `ometer serve --allow-admin` to allow it" in o[1] for o in refusals)
    managed = ["/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete"]
    assert [path for _, path, _ in reached if path != "/api/show"] == (
        ["/api/tags"] + (managed if allowed else [])
    )
    gateway.settle()
    assert gateway.ledger.latest(SpanFilter(), 5) == []  # nothing ran: no span, either side
