"""An export line that says a call was unpriced costs nothing and names no price rule.

No ometer writes one that does: a call no rule prices gets the zero cost of
``compute_cost(None, ...)`` (every part 0, no rule id) on every path that prices one (the
meter, the gateway through it, recovery, ``reprice``). ``db import`` took ``"unpriced":
true`` beside a cost of 0.031000: reports then showed the cost summed in, starred as "matched
no price rule and count as 0", and counted the call among the unpriced ones to fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, strategies as st

from ollama_meter import MeteredClient
from ollama_meter.ledger import (
    Ledger,
    SpanFilter,
    export_lines,
    span_from_line,
    span_to_dict,
)
from ollama_meter.ledger._spool import decode_span, encode_span
from ollama_meter.records import MAX_CALL_COST, SpanRecord, format_micros
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span, token_prices

PARTS = ("tokens", "compute", "energy", "fee")


def _span(parts: dict[str, int], unpriced: bool, rule: int | None) -> SpanRecord:
    return make_span(
        cost_tokens=parts["tokens"],
        cost_compute=parts["compute"],
        cost_energy=parts["energy"],
        cost_fee=parts["fee"],
        cost_total=sum(parts.values()),
        price_rule_id=rule,
        unpriced=unpriced,
    )


@given(
    parts=st.fixed_dictionaries(
        {part: st.sampled_from([0, 0, 1]) | st.integers(0, MAX_CALL_COST // 4) for part in PARTS}
    ),
    unpriced=st.booleans(),
    rule=st.none() | st.integers(1, 2**31 - 1),
)
def test_an_unpriced_call_imports_only_with_no_cost_and_no_price_rule(
    parts: dict[str, int], unpriced: bool, rule: int | None
) -> None:
    row = _span(parts, unpriced, rule)
    line = span_to_dict(row)
    costs = sum(parts.values())
    if not unpriced or (costs == 0 and rule is None):
        span = span_from_line(json.dumps(line).encode())
        assert (span.unpriced, span.cost_total, span.price_rule_id) == (unpriced, costs, rule)
        assert decode_span(encode_span(row)) == span
        return
    if costs:
        said = (
            f'"unpriced": true with a cost of {format_micros(costs)}: a call no price rule '
            "priced costs 0 in every part (cost and cost_parts)"
        )
    else:
        said = f'"unpriced": true with price_rule_id {rule}: a call no price rule priced names none'
    with pytest.raises(ValueError) as refused:
        span_from_line(json.dumps(line).encode())
    assert str(refused.value) == said
    with pytest.raises(ValueError) as refused:
        decode_span(encode_span(row))  # a gateway's spool line
    assert str(refused.value) == said


def test_db_import_refuses_an_unpriced_line_with_a_cost_naming_it(
    cli: Any, sqlite_url: str, tmp_path: Path
) -> None:
    good = span_to_dict(_span({"tokens": 31_000, "compute": 0, "energy": 0, "fee": 0}, False, 1))
    bad = span_to_dict(_span({"tokens": 31_000, "compute": 0, "energy": 0, "fee": 0}, True, None))
    export = tmp_path / "spans.jsonl"
    export.write_text(f"{json.dumps(good)}\n{json.dumps(bad)}\n")
    done = cli("db", "import", str(export), "--db", sqlite_url)
    assert (done.code, done.stdout) == (2, "")
    assert done.stderr == (
        'error: line 2: "unpriced": true with a cost of 0.031000: a call no price rule priced '
        "costs 0 in every part (cost and cost_parts); the 1 span(s) before it are recorded, "
        "fix the line and import again (spans already there are skipped)\n"
    )
    assert Ledger(sqlite_url).count() == 1


def test_the_meter_writes_an_unpriced_call_at_no_cost_and_no_rule_and_it_imports_again(
    db_url: str, emulator: OllamaEmulator
) -> None:
    with MeteredClient(department="sales", tenant="acme", db_url=db_url) as client:
        client.meter.ledger.add_price_rule(token_prices("llama*"))
        client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}])
        client.chat(model="mistral:7b", messages=[{"role": "user", "content": "hi"}])
        ledger = client.meter.ledger
        spans = {span.request_model: span for span in ledger.latest(SpanFilter(), 5)}
        lines = list(export_lines(ledger))
    priced, unpriced = spans["llama3.1:8b"], spans["mistral:7b"]
    assert not priced.unpriced and priced.cost_total > 0 and priced.price_rule_id is not None
    assert unpriced.unpriced and unpriced.input_tokens > 0
    costs = (unpriced.cost_tokens, unpriced.cost_compute, unpriced.cost_energy)
    assert (*costs, unpriced.cost_fee, unpriced.cost_total, unpriced.price_rule_id) == (
        0, 0, 0, 0, 0, None,
    )  # fmt: skip
    imported = sorted((span_from_line(line) for line in lines), key=lambda span: span.id)
    assert imported == sorted(spans.values(), key=lambda span: span.id)
