"""A name Ollama cannot parse tells the fleet nothing of the model it looks like.

Ollama neither trims a model's name nor folds it past ASCII: ``"llama3.1:8b "`` (a space from
a config file), a tab before a name, a Kelvin sign for a ``k``, are no names to it, and it
answers ``model '...' not found``. The gateway's own key for such a name is the model's
(``model_key`` trims and lower-cases: reports count it so), and it took that 404 as the server
lacking the model itself: one caller's typo took the model out of every server's list until
the next discovery, and other callers' calls went to servers without it (a 404 to
``ollama show``, a request to a server that cannot serve it, a cold load elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.config import load_settings
from ollama_meter.gateway._fleet import Fleet
from ollama_meter.records import model_key
from ollama_meter.testing import OllamaEmulator
from ollama_meter.testing._models import DEFAULT_MODELS
from ollama_meter.testing._names import find_model
from tests.gateway.conftest import Gateway

LLAMA, QWEN = "llama3.1:8b", "qwen2.5:7b"
NO_NAMES = [
    "llama3.1:8b ",
    "\tllama3.1:8b",
    "LLAMA3.1:8B\n",
    "llama3.1:8b\x1f",
    "Llama3.1:8b\u3000",
]
"""Spellings Ollama answers 404 (not a name its ``ParseName`` takes) whose key is llama's."""


@pytest.fixture
def fleet(serve_on: Callable[..., Gateway], sqlite_url: str) -> Callable[..., Gateway]:
    def start(*upstreams: str) -> Gateway:
        # Discovery far off: what a call teaches the fleet stays until the test ends.
        settings = {"upstreams": ",".join(upstreams), "discovery_interval": 3600}
        return serve_on(upstreams[0], sqlite_url, config=settings)

    return start


@pytest.mark.parametrize("typo", NO_NAMES)
def test_a_name_ollama_cannot_parse_leaves_the_model_where_it_is(
    emulators: Callable[..., OllamaEmulator], fleet: Callable[..., Gateway], typo: str
) -> None:
    qwen, llama = emulators(QWEN), emulators(LLAMA)
    gw = fleet(qwen.url, llama.url)  # the server without llama first: where a lost model goes
    assert model_key(typo) == LLAMA and find_model(llama.models, typo) is None
    refused = httpx.post(f"{gw.url}/api/generate", json={"model": typo, "prompt": "hi"})
    assert refused.status_code == 404, refused.text
    shown = httpx.post(f"{gw.url}/api/show", json={"model": LLAMA}, timeout=30)
    assert shown.status_code == 200, shown.text
    ran = httpx.post(
        f"{gw.url}/api/generate", json={"model": LLAMA, "prompt": "hi", "stream": False}
    )
    assert ran.status_code == 200, ran.text
    # Only the server that has llama was asked, the typo too: no other has it.
    assert not qwen.requests_to("/api/generate") and not qwen.requests_to("/api/show")


SERVERS = ("http://127.0.0.1:1", "http://127.0.0.1:2")
BLANKS = st.text(st.sampled_from(" \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u3000"), max_size=2)
"""What Python's ``str.strip`` takes off a name and Ollama does not."""
spelled = st.builds(
    lambda before, name, after: before + name + after,
    BLANKS,
    st.sampled_from(["llama3.1:8b", "LLAMA3.1:8B", "Llama3.1:8B"]),
    BLANKS,
) | st.sampled_from(
    ["registry.ollama.ai/library/llama3.1:8b", "https://registry.ollama.ai/library/LLAMA3.1:8b"]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=spelled)
def test_the_fleet_forgets_a_model_only_for_a_name_ollama_resolves_to_it(name: str) -> None:
    """Whatever the spelling, a server's 404 to it takes llama off that server's list exactly
    when Ollama (the emulator's resolution, which parses names as Ollama does) reads the
    spelling as llama."""
    settings_ = load_settings(db_url="sqlite:////tmp/unused.db", upstreams=",".join(SERVERS))
    fleet = Fleet.from_settings(settings_)
    server = fleet.servers[0]
    server.models = frozenset({LLAMA, QWEN})
    server.loaded = {LLAMA}
    fleet.lacks(server, name)
    resolved = find_model(DEFAULT_MODELS, name) is not None
    assert server.has(LLAMA) is not resolved
    assert (LLAMA in server.loaded) is not resolved
