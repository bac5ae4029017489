"""One process serving several departments through the Python API: one breaker per host, and
each call names its caller (the client's tenant and department), as through the gateway.

Named by no one, three of sales' calls failing (a 500 its own requests cause) opened the
model's circuit in the process, and support's client was refused the model for a minute.
"""

from __future__ import annotations

import asyncio

import pytest

from ollama_meter import AsyncMeteredClient, MeteredClient
from ollama_meter.errors import CircuitOpen, UpstreamServerError
from ollama_meter.testing import Fault, OllamaEmulator

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_one_departments_failures_refuse_its_own_client_and_not_anothers(
    emulator: OllamaEmulator, sqlite_url: str, flavour: str
) -> None:
    def chat(department: str) -> object:
        if flavour == "sync":
            with MeteredClient(emulator.url, db_url=sqlite_url, department=department) as c:
                return c.chat(model="llama3.1:8b", messages=HI)

        async def achat() -> object:
            async with AsyncMeteredClient(
                emulator.url, db_url=sqlite_url, department=department
            ) as c:
                return await c.chat(model="llama3.1:8b", messages=HI)

        return asyncio.run(achat())

    emulator.inject(Fault.HTTP_500, times=1000)
    for _ in range(3):  # the breaker's threshold
        with pytest.raises(UpstreamServerError):
            chat("sales")
    emulator.clear_faults()
    with pytest.raises(CircuitOpen) as refused:
        chat("sales")
    assert "called by default/sales, failed 3 calls in a row" in str(refused.value)
    assert chat("support") is not None  # another department's client still reaches the model
    emulator.inject(Fault.HTTP_500, times=1000)  # now the model is broken
    for department in ("support", "legal", "support"):  # a run of two callers' failures
        with pytest.raises(UpstreamServerError):
            chat(department)
    emulator.clear_faults()
    with pytest.raises(CircuitOpen) as closed:
        chat("ops")
    assert "model 'llama3.1:8b' on" in str(closed.value) and "called by" not in str(closed.value)
