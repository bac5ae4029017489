"""A thin picture given to the Python API as the path of its file, in text or as a Path
inside an ``ollama.Message``: bounded by its shape, as in a body (``test_thin_pictures.py``).

The ``ollama`` client reads such a file and sends it; Gemma 4 counts 33,466 tokens of a picture
a pixel wide and four million tall, which was admitted on 4,096 and charged as counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest

from ollama_meter import BudgetExceeded, MeteredClient
from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from tests.factories import token_prices
from tests.gateway.test_lying_picture_counts import png
from tests.gateway.test_thin_pictures import _Gemma4, gemma4, gemma4_tokens

__all__ = ["gemma4"]  # the fixture, for pytest


@pytest.fixture
def client(gemma4: str, sqlite_url: str) -> Iterator[MeteredClient]:
    with MeteredClient(gemma4, db_url=sqlite_url, tenant="acme", department="sales") as client:
        client.meter.ledger.add_price_rule(token_prices())  # 1,000 USD per 1M prompt tokens
        client.meter.ledger.save_budget(Budget("acme", "sales", "day", 10_000_000, "USD"))
        yield client


def chat(client: MeteredClient, picture: Any, message: bool = False) -> Any:
    said: Any = {"role": "user", "content": "what is it?", "images": [picture]}
    if message:
        said = ollama.Message(**{**said, "images": [ollama.Image(value=picture)]})
    return client.chat(model="gemma4:e4b", messages=[said], options={"num_predict": 1})


NAMES = ["thin.png", "aaaa.png", "x/y.png"]  # text that is base64 too, or is not


@pytest.mark.parametrize("message", [False, True], ids=["dict", "ollama.Message"])
@pytest.mark.parametrize("name", NAMES)
def test_a_thin_picture_named_by_its_path_is_refused_before_ollama(
    client: MeteredClient, tmp_path: Path, name: str, message: bool, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    Path(name).parent.mkdir(exist_ok=True)
    Path(name).write_bytes(png(1, 4_000_000))
    with pytest.raises(BudgetExceeded) as refused:
        chat(client, name, message)
    assert "this call may cost up to 128." in str(refused.value)
    assert _Gemma4.chats == 0
    spent = sum(s.cost_total for s in client.meter.ledger.latest(SpanFilter(), 10))
    assert spent == 0


@pytest.mark.parametrize("message", [False, True], ids=["dict", "ollama.Message"])
@pytest.mark.parametrize("name", NAMES)
def test_a_plain_picture_named_by_its_path_is_bounded_as_one_and_answered(
    client: MeteredClient, tmp_path: Path, name: str, message: bool, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    Path(name).parent.mkdir(exist_ok=True)
    Path(name).write_bytes(png(640, 480))
    answer = chat(client, name, message)
    assert answer.message.content == "a line"
    assert _Gemma4.chats == 1
    assert answer.meter is not None and answer.meter.input_tokens == 20 + gemma4_tokens(640, 480)
