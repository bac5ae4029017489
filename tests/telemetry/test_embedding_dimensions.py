"""An embedding's span says how many dimensions its vectors have, where the answer shows them.

The GenAI conventions recommend ``gen_ai.embeddings.dimension.count`` on an embeddings span;
ometer exported none, though every answer it read held the vectors. It is now the length of
the answer's vectors (a request's ``dimensions`` cut to it, Ollama's answer says so), on each
embedding route and through the Python API; a call that got no vectors has none.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ollama_meter import MeteredClient, load_settings
from ollama_meter.telemetry import telemetry_for
from ollama_meter.testing import OllamaEmulator
from tests._otlp import OtlpHttpReceiver, SpanView, spans, wait_for
from tests.gateway.conftest import Gateway

DIMENSIONS = "gen_ai.embeddings.dimension.count"
EMBEDDER = "nomic-embed-text:latest"


def _exported(rx: OtlpHttpReceiver, count: int) -> list[SpanView]:
    telemetry = telemetry_for(load_settings())
    assert telemetry is not None and telemetry.flush()
    views: list[SpanView] = wait_for(
        lambda: s if len(s := spans(rx)) >= count else None, what=f"{count} spans"
    )
    telemetry.shutdown()
    return sorted(views, key=lambda view: view.start_ns)


def _length(path: str, answer: dict[str, Any]) -> int:
    if path == "/api/embed":
        return len(answer["embeddings"][0])
    if path == "/api/embeddings":
        return len(answer["embedding"])
    return len(answer["data"][0]["embedding"])


@pytest.mark.parametrize("path", ["/api/embed", "/api/embeddings", "/v1/embeddings"])
@pytest.mark.parametrize("asked", [None, 64])
def test_each_embedding_route_exports_its_vectors_dimensions(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    path: str,
    asked: int | None,
) -> None:
    key = "prompt" if path == "/api/embeddings" else "input"
    body: dict[str, Any] = {"model": EMBEDDER, key: "a text to embed"}
    if asked is not None:
        body["dimensions"] = asked
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        gw = app_on(emulator.url, f"sqlite:///{tmp_path / 'gateway.db'}")
        answer = gw.client.post(path, json=body)
        assert answer.status_code == 200, answer.text
        refused = gw.client.post(path, json={"model": "no-such-model", key: "x"})
        assert refused.status_code == 404
        embedded, failed = _exported(rx, 2)
    length = _length(path, answer.json())
    assert length == (768 if asked is None or path == "/api/embeddings" else asked)
    assert embedded.attributes[DIMENSIONS] == length
    assert DIMENSIONS not in failed.attributes


def test_the_python_api_exports_its_vectors_dimensions(
    emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        client = MeteredClient(db_url=f"sqlite:///{tmp_path / 'l.db'}")
        answer = client.embed(model=EMBEDDER, input=["one", "two"])
        chat = client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}])
        embedded, chatted = _exported(rx, 2)
    assert chat.message.content
    assert embedded.attributes[DIMENSIONS] == len(answer.embeddings[0]) == 768
    assert DIMENSIONS not in chatted.attributes
