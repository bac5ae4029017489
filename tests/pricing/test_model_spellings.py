"""A caller cannot pick a price by spelling a model: every name Ollama runs as one model is
priced by the rule that prices that model."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, strategies as st

from ollama_meter.pricing import PriceRule, select_rule
from ollama_meter.records import model_key
from ollama_meter.testing import OllamaEmulator

_RULES = [
    PriceRule("*", "USD", id=1, input_per_1m=Decimal("0.01")),
    PriceRule("llama3.1:*", "USD", id=2, input_per_1m=Decimal(1)),
    PriceRule("llama3.1:70b", "USD", id=3, input_per_1m=Decimal(50)),
]


@given(
    scheme=st.sampled_from(["https://", "http://", "HTTPS://", "ftp://"]),
    registry=st.sampled_from(["registry.ollama.ai", "Registry.Ollama.AI"]),
    model=st.sampled_from(["llama3.1:70b", "llama3.1:8b", "llama3.1", "qwen2.5:7b"]),
)
def test_a_model_named_with_its_registrys_scheme_is_priced_as_that_model(
    scheme: str, registry: str, model: str
) -> None:
    """Ollama reads a name's host past any 'scheme://' (types/model/name.go, ParseNameBare):
    'https://registry.ollama.ai/library/llama3.1:70b' runs llama3.1:70b, and its answer
    names the model as asked. ometer read it as a model of host 'https:', so no rule for
    llama3.1 priced it: the 70b paid the catch-all's 0.01, or nothing with no '*' rule."""
    spelled = f"{scheme}{registry}/library/{model}"
    day = date(2026, 11, 1)
    assert select_rule(_RULES, spelled, day) == select_rule(_RULES, model, day)
    assert model_key(spelled) == model_key(model)


def test_a_call_spelled_with_a_scheme_costs_what_the_model_costs(
    cli: Any, sqlite_url: str, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    assert cli("pricing", "set", "*", "--input-per-1m", "0.01").code == 0
    assert cli("pricing", "set", "llama3.1:8b", "--input-per-1m", "1000").code == 0
    for model in ("llama3.1:8b", "https://registry.ollama.ai/library/llama3.1:8b"):
        result = cli("chat", "-m", model, "one two three")
        assert result.code == 0, result.stderr
    spelled, plain = sorted(json.loads(cli("log", "--json").stdout), key=lambda s: s["model"])
    assert spelled["model"] == "https://registry.ollama.ai/library/llama3.1:8b"
    assert plain["model"] == "llama3.1:8b"
    assert spelled["input_tokens"] == plain["input_tokens"] > 0
    assert spelled["cost"] == plain["cost"] == f"{plain['input_tokens'] * 1000 / 10**6:.6f}"
    assert spelled["price_rule_id"] == plain["price_rule_id"]
