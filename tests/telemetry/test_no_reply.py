"""A call the model gave no reply exports none: no ``gen_ai.output.messages`` of empty text.

The GenAI conventions' embeddings span has no output messages (its vectors are no message),
and an output message is one "returned by the model". With content capture on, ometer
exported an assistant message of empty text on every embedding, and on every call that failed
before a word came (a model not found, a refusal, a timeout): Langfuse showed each as a reply
``""``. Langfuse's usage of an embedding said ``"output": 0`` beside its input, as the span's
``gen_ai.usage.output_tokens=0`` did before (``test_embedding_tokens``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter import MeteredClient, load_settings
from ollama_meter.records import Status
from ollama_meter.telemetry import _semconv as sc, telemetry_for
from ollama_meter.testing import OllamaEmulator
from tests._otlp import OtlpHttpReceiver, spans, wait_for
from tests.telemetry.test_content_shape import _exported

CALL = (("call_1", "get_weather", {"city": "Paris"}),)


@settings(max_examples=120, deadline=None)
@given(
    operation=st.sampled_from(sorted(sc.OPERATION_NAMES)),
    reply=st.none() | st.just("") | st.text(min_size=1, max_size=20),
    called=st.booleans(),
    status=st.sampled_from(list(Status)),
)
def test_only_a_reply_the_model_gave_is_exported(
    operation: str, reply: str | None, called: bool, status: Status
) -> None:
    attributes = _exported(
        None,
        operation=operation,
        prompt="hi",
        reply=reply,
        called=CALL if called else (),
        status=status,
        input_tokens=7,
        output_tokens=0 if sc.input_only(operation) else 3,
    )
    embedding = sc.input_only(operation)
    gave = bool(reply) or called or (reply is not None and status == Status.OK)
    exported = attributes.get(sc.GEN_AI_OUTPUT_MESSAGES)
    assert (exported is not None) == (gave and not embedding), exported
    if exported is not None:
        (message,) = json.loads(str(exported))
        assert message["parts"] and message["role"] == "assistant"
    assert sc.GEN_AI_INPUT_MESSAGES in attributes  # the prompt goes, whatever came back
    usage = json.loads(str(attributes[sc.LANGFUSE_USAGE]))
    assert usage == (
        {"input": 7, "total": 7} if embedding else {"input": 7, "output": 3, "total": 10}
    )


def test_an_embedding_and_a_failed_call_reach_a_collector_with_no_reply(
    emulator: OllamaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the Python API and a real OTLP receiver: a chat's reply goes; an embedding's
    and a missing model's none."""
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        monkeypatch.setenv("OMETER_CAPTURE_CONTENT", "true")
        client = MeteredClient(db_url=f"sqlite:///{tmp_path / 'l.db'}")
        client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}])
        client.embed(model="nomic-embed-text:latest", input="hi")
        with pytest.raises(Exception, match="nope"):
            client.chat(model="nope:1b", messages=[{"role": "user", "content": "hi"}])
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None and telemetry.flush()
        views = wait_for(lambda: s if len(s := spans(rx)) == 3 else None, what="three spans")
        telemetry.shutdown()
    chat, embed, failed = sorted(views, key=lambda v: v.start_ns)
    assert json.loads(chat.attributes[sc.GEN_AI_OUTPUT_MESSAGES])[0]["parts"][0]["content"]
    for view in (embed, failed):
        assert sc.GEN_AI_OUTPUT_MESSAGES not in view.attributes
        assert json.loads(view.attributes[sc.GEN_AI_INPUT_MESSAGES])[0]["role"] == "user"
    assert json.loads(embed.attributes[sc.LANGFUSE_USAGE]) == {"input": 1, "total": 1}
    assert failed.attributes[sc.ERROR_TYPE] == "model_not_found"
