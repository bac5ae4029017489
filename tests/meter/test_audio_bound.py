"""A WAV sent where pictures go is bounded by its length, not as one picture.

Ollama gives a model every item of a request's ``images`` (OpenAI's ``image_url`` data URLs,
Anthropic's base64 sources, the Responses API's ``input_image``) as bytes, and models that
hear (Gemma 4, Nemotron-H omni) take a WAV there as sound: Gemma 4 resamples it to 16 kHz,
cuts it into pieces of 20 to 28 s and counts up to 750 tokens a piece. Bounded as a picture
(4,096 tokens), 25 minutes of sound (58,000 tokens or so) was admitted under a hard budget
with room for a tenth of it.
"""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter._media import NoBound, wav_tokens
from ollama_meter.meter._request import facts_of
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

RATE, PIECE_MIN, PIECE_MAX, PIECE_TOKENS = 16_000, 20 * 16_000, 28 * 16_000, 750


def wav(frames: int, rate: int, width: int = 1, channels: int = 1) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(b"\x01" * frames * width * channels)
    return out.getvalue()


def ollama_counts(frames: int, rate: int) -> int:
    """What Gemma 4 in Ollama counts for it at most: resampled to 16 kHz, then pieces of at
    most 28 s, each cut at the quietest place after 20 s (here: as early as it may be)."""
    samples = int(frames / rate * RATE)
    pieces, offset = 0, 0
    while offset < samples:
        pieces += 1
        if samples - offset <= PIECE_MAX:
            break
        offset += PIECE_MIN + 400  # the earliest cut: the first window's middle past 20 s
    return max(pieces, 1) * PIECE_TOKENS


def wire_bodies(encoded: str) -> dict[str, dict[str, Any]]:
    """The sound in each wire format's place for a picture."""
    url = f"data:;base64,{encoded}"
    return {
        "chat": {"messages": [{"role": "user", "content": "hi", "images": [encoded]}]},
        "generate": {"prompt": "hi", "images": [encoded]},
        "openai.chat": {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
            ]
        },
        "openai.responses": {
            "input": [{"role": "user", "content": [{"type": "input_image", "image_url": url}]}]
        },
        "anthropic.messages": {
            "max_tokens": 1,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "audio/wav",
                                "data": encoded,
                            },
                        }
                    ],
                }
            ],
        },
    }


def heard(operation: str, body: dict[str, Any], silent: dict[str, Any]) -> int:
    """Tokens the bound holds for the sound: the body's bound past the same body's with a
    picture in its place."""
    return (
        facts_of(operation, body).bound(1).input_tokens
        - facts_of(operation, silent).bound(1).input_tokens
    )


@settings(max_examples=60, deadline=None)
@given(
    seconds=st.floats(0.01, 200),
    rate=st.sampled_from([100, 1_000, 8_000, 16_000, 44_100]),
    width=st.sampled_from([1, 2]),
    channels=st.sampled_from([1, 2]),
    operation=st.sampled_from(
        ["chat", "generate", "openai.chat", "openai.responses", "anthropic.messages"]
    ),
)
def test_the_bound_holds_what_ollama_counts_for_a_wav_in_any_wire_format(
    seconds: float, rate: int, width: int, channels: int, operation: str
) -> None:
    frames = max(int(seconds * rate), 1)
    encoded = base64.b64encode(wav(frames, rate, width, channels)).decode()
    picture = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64).decode()
    body = {"model": "gemma4", **wire_bodies(encoded)[operation]}
    silent = {"model": "gemma4", **wire_bodies(picture)[operation]}
    assert heard(operation, body, silent) >= ollama_counts(frames, rate)


def test_raw_bytes_and_paths_from_python_callers_are_bounded_alike(tmp_path: Path) -> None:
    sound = wav(300 * 1_000, 1_000)  # five minutes
    path = tmp_path / "clip.wav"
    path.write_bytes(sound)
    silent = {"model": "gemma4", "prompt": "hi", "images": [b"\x89PNG"]}
    for sent in (sound, path):
        body = {"model": "gemma4", "prompt": "hi", "images": [sent]}
        assert heard("generate", body, silent) >= ollama_counts(300 * 1_000, 1_000)


def test_a_wav_whose_format_is_not_in_its_start_has_no_bound() -> None:
    head = b"RIFF\x00\x00\x00\x00WAVE" + b"LIST" + (70_000).to_bytes(4, "little") + b"\x00" * 100
    with pytest.raises(NoBound, match="first 65,536 bytes"):
        wav_tokens(head, 1_000_000)


def test_a_hard_budget_refuses_a_long_sound_it_admitted_as_one_picture(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())  # 1000 USD per 1M input tokens
    gw.ledger.save_budget(Budget("acme", "sales", "day", 10_000_000, "USD"))  # 10 USD
    sound = base64.b64encode(wav(1_500 * 1_000, 1_000)).decode()  # 25 minutes, 2 MB
    body = {
        "model": "llama3.1:8b",
        "stream": False,
        "options": {"num_predict": 1},
        "messages": [{"role": "user", "content": "transcribe", "images": [sound]}],
    }
    headers = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales"}
    reply = gw.client.post("/api/chat", json=body, headers=headers)
    assert reply.status_code == 429, reply.text[:300]  # ~58,000 tokens: 58 USD at most
    assert not emulator.requests_to("/api/chat")
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.error_type, span.cost_total) == ("rejected", "budget_exceeded", 0)
