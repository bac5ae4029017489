"""What a request's audio may count: WAV files sent where pictures go, bounded by their length.

Ollama hands every item of a request's ``images`` (and OpenAI's ``image_url`` data URLs,
Anthropic's base64 sources) to the model as bytes; models that hear (Gemma 4, Nemotron-H
omni) take a WAV file there as sound, whose tokens grow with its length: Gemma 4 cuts it
into pieces of 20 to 28 s and counts up to 750 tokens a piece. A picture's tokens are
bounded whatever its size (``IMAGE_TOKENS``), a sound's are not: a 24 MB WAV of 16 kHz is
25 minutes, about 40,000 tokens, bounded as one picture. The bound of a WAV is read from its
header: its samples at 16 kHz (as Ollama resamples them), a piece per 20 s started.

Pure functions; no I/O but reading the start of a file a Python caller names by path.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from collections.abc import Mapping
from typing import Any

AUDIO_RATE = 16_000
"""The rate Ollama resamples a WAV to before its encoder hears it."""
AUDIO_PIECE_S = 20
"""Gemma 4 cuts sound into pieces of 20 s at least (28 s at most), each its own tokens."""
AUDIO_PIECE_TOKENS = 768
"""The most tokens a piece may count: Gemma 4's ``maxAudioSoftTokens`` (750; 28 s of 10 ms
frames made four times fewer is 700) and the markers around them."""
HEADER_BYTES = 65_536
"""How much of a WAV is read for its format: a ``fmt`` chunk later than that is no bound."""
_RIFF = b"RIFF"
_RIFF_B64 = "UklGR"  # "RIFF" in base64, whatever follows
_DATA_URL = "data:"


class NoBound(ValueError):
    """A WAV whose length cannot be read from its start: no bound holds what it counts."""


def audio_tokens(value: object) -> int:
    """The most tokens the sounds anywhere in ``value`` (a request body, or a part of one) may
    count: WAV files as base64 text (or a data URL), bytes, or a path (the ``ollama`` client's
    ``images``). Anything else counts 0 here. :class:`NoBound` when a WAV's header says nothing
    of its length."""
    total, pending = 0, [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            total += _text_tokens(item)
        elif isinstance(item, bytes | bytearray | memoryview):
            head = bytes(item[:HEADER_BYTES])
            if head.startswith(_RIFF):
                total += wav_tokens(head, len(item))
        elif isinstance(item, os.PathLike):
            total += _file_tokens(item)
        elif isinstance(item, Mapping):
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
        else:
            fields = getattr(type(item), "model_fields", None)  # the ollama client's models
            if isinstance(fields, Mapping):
                pending.extend(getattr(item, name, None) for name in fields)
    return total


def _text_tokens(text: str) -> int:
    start = 0
    if text.startswith(_DATA_URL):  # data:[type];base64,<payload>
        comma = text.find(",", 0, 256)
        start = comma + 1 if comma > 0 else 0
    if not text.startswith(_RIFF_B64, start):
        return 0
    encoded = text[start : start + HEADER_BYTES * 4 // 3]
    try:
        head = base64.b64decode(encoded[: len(encoded) // 4 * 4])
    except (binascii.Error, ValueError):
        return 0  # not base64: Ollama refuses it as a picture
    size = (len(text) - start) * 3 // 4
    return wav_tokens(head, size) if head.startswith(_RIFF) else 0


def _file_tokens(path: os.PathLike[Any]) -> int:
    try:
        with open(path, "rb") as file:
            head = file.read(HEADER_BYTES)
            size = os.fstat(file.fileno()).st_size
    except OSError:
        return 0  # the client cannot send it either
    return wav_tokens(head, size) if head.startswith(_RIFF) else 0


def wav_tokens(head: bytes, size: int) -> int:
    """The most tokens a WAV of ``size`` bytes starting with ``head`` may count, as Ollama
    reads it: its samples (all the file's bytes past the header, at most) resampled to
    16 kHz, a piece of :data:`AUDIO_PIECE_TOKENS` per :data:`AUDIO_PIECE_S` begun."""
    if head[8:12] != b"WAVE":
        return 0  # not a WAV: Ollama reads it as a picture
    offset = 12
    while offset + 8 <= len(head):
        chunk, length = (
            head[offset : offset + 4],
            int(struct.unpack_from("<I", head, offset + 4)[0]),
        )
        if chunk == b"fmt " and offset + 24 <= len(head):
            channels, rate = (int(v) for v in struct.unpack_from("<HI", head, offset + 10))
            bits = int(struct.unpack_from("<H", head, offset + 22)[0])
            frame = max(bits // 8, 1) * max(channels, 1)
            samples = max(size - 12, 0) // frame * AUDIO_RATE // max(rate, 1) + 1
            return (samples // (AUDIO_PIECE_S * AUDIO_RATE) + 1) * AUDIO_PIECE_TOKENS
        offset += 8 + length + (length & 1)
    raise NoBound(
        f"a WAV file whose format is not in its first {HEADER_BYTES:,} bytes: its length, "
        "and what its sound counts, cannot be known before the call"
    )
