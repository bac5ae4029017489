"""A hard budget's bound holds the prompt Ollama writes of a generate's own ``template``.

Ollama renders ``/api/generate``'s ``template`` with Go's text/template before it counts a
token: ``{{ .Prompt }}`` written forty times sends the prompt forty times, and
``{{ printf "%0999999d" 0 }}`` or ``{{ range 100000 }}`` write a million bytes from twenty,
bounded only by the context size the caller sets (``num_ctx``). Counted by its bytes, such a
call was admitted on a bound of one copy of the prompt (5.6 USD against a 10 USD budget) and
charged forty (40 USD). Under a hard budget a template is taken only when nothing in it can
write more than the request's texts once each: the prompt, system and suffix, each printed
at most once, conditions on fields, comments; anything else is refused before Ollama.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter import MeteredClient
from ollama_meter.budgets import Budget
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

SALES = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales"}
PROMPT = "word " * 1000  # 1,000 tokens to the emulator, 5,000 bytes
LIMIT = 10_000_000  # 10 USD: room for one copy of the prompt's bound (about 5.6 USD)


def budgeted(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, url: str, limit: int = LIMIT
) -> Gateway:
    gw = app_on(emulator.url, url)
    gw.ledger.add_price_rule(token_prices())  # 1000 USD per 1M input tokens
    gw.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=limit, currency="USD")
    )
    return gw


def generate(template: str, **more: Any) -> dict[str, Any]:
    return {
        "model": "llama3.1:8b",
        "prompt": PROMPT,
        "template": template,
        "stream": False,
        "options": {"num_predict": 1},
        **more,
    }


def test_a_template_that_prints_the_prompt_forty_times_is_refused_before_ollama(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = budgeted(app_on, emulator, sqlite_url)
    reply = gw.client.post("/api/generate", json=generate("{{ .Prompt }}" * 40), headers=SALES)
    assert reply.status_code == 429, reply.text[:300]
    assert "template" in reply.json()["error"]
    assert not emulator.calls
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.error_type, span.cost_total) == ("rejected", "budget_exceeded", 0)


@pytest.mark.parametrize(
    "template",
    [
        '{{ printf "%0999999d" 0 }}',
        "{{ range 100000 }}word {{ end }}",
        "{{ range .Messages }}{{ .Content }}{{ end }}",
        '{{ define "t" }}{{ .Prompt }}{{ end }}{{ template "t" . }}{{ template "t" . }}',
        "{{ $p := .Prompt }}{{ $p }}{{ $p }}",
        "{{ .Prompt | print }}",
        "{{/* }} */}}{{ .Prompt }}{{ .Prompt }}",
    ],
)
def test_a_template_that_can_write_more_than_the_requests_texts_is_refused(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str, template: str
) -> None:
    gw = budgeted(app_on, emulator, sqlite_url)
    reply = gw.client.post("/api/generate", json=generate(template), headers=SALES)
    assert reply.status_code == 429, reply.text[:300]
    assert "template" in reply.json()["error"]
    assert not emulator.calls


def test_the_python_api_refuses_such_a_template_too(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """The bound is the meter's, read from the request alike for every entry point."""
    with MeteredClient(department="sales", tenant="acme", db_url=sqlite_url) as client:
        client.meter.ledger.add_price_rule(token_prices())
        client.meter.ledger.save_budget(
            Budget(tenant="acme", department="sales", period="day", limit=LIMIT, currency="USD")
        )
        assert client.meter.budgets is not None
        client.meter.budgets.reload_soon()
        with pytest.raises(BudgetExceeded, match="its template writes"):
            client.generate(
                model="llama3.1:8b",
                prompt=PROMPT,
                template="{{ .Prompt }}" * 40,
                options={"num_predict": 1},
            )
    assert not emulator.calls


@pytest.mark.parametrize("body", [{"raw": True}, {}], ids=["raw", "no-budget"])
def test_a_template_ollama_does_not_render_or_no_hard_budget_covers_is_sent(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str, body: Any
) -> None:
    """``raw`` skips the template; without a hard budget the call is only metered."""
    gw = budgeted(app_on, emulator, sqlite_url) if body else app_on(emulator.url, sqlite_url)
    template = '{{ printf "%099d" 0 }}{{ .Prompt }}'
    reply = gw.client.post("/api/generate", json=generate(template, **body), headers=SALES)
    assert reply.status_code == 200, reply.text[:300]
    assert len(emulator.calls) == 1


_PIECES = st.sampled_from(
    [  # (text, what it does: prints a field once, steers, or may write anything)
        ("<|user|>\n", ""),
        ("{{ .Prompt }}", "Prompt"),
        ("{{- .Prompt -}}", "Prompt"),
        ("{{.System}}", "System"),
        ("{{ .Suffix }}", "Suffix"),
        ("{{ .Response }}", "Response"),
        ("{{ if .System }}", ""),
        ("{{- if .Think -}}", ""),
        ("{{ else if .Suffix }}", ""),
        ("{{ else }}", ""),
        ("{{ end }}", ""),
        ("{{/* a comment */}}", ""),
        ("{{ range 50 }}word {{ end }}", "*"),
        ('{{ printf "%s %s" .Prompt .Prompt }}', "*"),
        ("{{ .Prompt | print }}", "*"),
    ]
)


@pytest.fixture
def roomy(app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str) -> Gateway:
    """A gateway where acme/sales has a hard budget far above any one call."""
    return budgeted(app_on, emulator, sqlite_url, limit=10**12)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(pieces=st.lists(_PIECES, max_size=6), system=st.sampled_from(["", "be brief " * 50]))
def test_an_admitted_template_never_counts_past_the_bound_it_was_admitted_on(
    roomy: Gateway,
    emulator: OllamaEmulator,
    caplog: pytest.LogCaptureFixture,
    pieces: list[tuple[str, str]],
    system: str,
) -> None:
    """A template whose every action prints one of the request's texts once, or steers, is
    taken, and what Ollama counts of it stays within its bound (the meter warns of a call
    that counted past it); any other is refused before Ollama."""
    template = "".join(text for text, _ in pieces)
    printed = [does for _, does in pieces if does]
    bounded = "*" not in printed and len(printed) == len(set(printed))
    before = len(emulator.calls)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "ollama_meter.meter"):
        body = generate(template, system=system)
        reply = roomy.client.post("/api/generate", json=body, headers=SALES)
        roomy.settle()
    if bounded:
        assert reply.status_code == 200, (template, reply.text[:300])
        assert not [r for r in caplog.records if "past the" in r.getMessage()], template
    else:
        assert reply.status_code == 429, (template, reply.text[:300])
        assert "template" in reply.json()["error"]
        assert len(emulator.calls) == before
