"""What a request's media may count beyond a picture each: sounds and moving pictures sent
where pictures go. A WAV is bounded by its length; a video has no bound.

Ollama hands every item of a request's ``images`` (and OpenAI's ``image_url`` data URLs,
Anthropic's base64 sources) to the model as bytes; models that hear (Gemma 4, Nemotron-H
omni) take a WAV file there as sound, whose tokens grow with its length: Gemma 4 cuts it
into pieces of 20 to 28 s and counts up to 750 tokens a piece. A picture's tokens are
bounded whatever its size (``IMAGE_TOKENS``, or more for a thin one:
:func:`stretched_tokens`), a sound's are not: a 24 MB WAV of 16 kHz is
25 minutes, about 40,000 tokens, bounded as one picture. The bound of a WAV is read from its
header: its samples at 16 kHz (as Ollama resamples them), a piece per 20 s started.

Qwen3-VL decodes an item as a picture first, and hands bytes that are none to ffmpeg as a
video, a frame a second, each frame up to a picture's tokens: an hour of small frames is a
few hundred kilobytes and some 150,000 tokens, as far as the caller's context goes. So an
item where Ollama reads a picture is bounded as one only when it is one still picture that
every model's decoder reads (PNG, JPEG, GIF, WebP, BMP: :func:`moving`); a moving picture,
a video or bytes that are no such picture have no bound (:class:`NoBound`). Only the items
Ollama reads as pictures are looked at so (:func:`picture_items`): elsewhere (a message's text,
a tool's arguments) bytes are text.

What an answer may honestly count of a still picture is wider than what a hard budget
reserves for one: :data:`PICTURE_TOKENS`, and past it a token a :data:`PIXELS_A_TOKEN` of
its pixels as its header says (:func:`picture_tokens`); a count past that is a server's lie.

Pure functions; no I/O but reading a file a Python caller names by path.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import struct
from collections.abc import Iterator, Mapping
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
MEDIA_READ = 64 * 2**20
"""How much of a file a Python caller names is read to tell what it is (no body holds more)."""
PICTURE_TOKENS = 32_768
"""The most prompt tokens a still picture counts, whatever its size, twice what any vision
model's own configuration gives one: Qwen2-VL and Qwen2.5-VL 16,384 (a token a 28-pixel
square, of at most 12,845,056 pixels); Ollama runs fewer (Qwen2.5-VL and Qwen3-VL at most
2,097,152 pixels, 2,675 and 2,048 tokens; Gemma 4 280; Gemma 3 256), Llama 3.2 Vision 4 tiles
of 1,601, LLaVA-NeXT 5 pieces of 576."""
PIXELS_A_TOKEN = 14 * 14
"""The fewest pixels a vision model makes a token of (a 14-pixel patch, merged with none):
past :data:`PICTURE_TOKENS`, a picture counts at most a token this many of its pixels. A model
may stretch a thin picture to fill its budget (Gemma 4 keeps each side a 48-pixel square at
least: a picture a pixel wide and 4 million tall is some 33,000 tokens)."""
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
        # What JSON makes, by its exact type first (each answers as below): a dict, a list and
        # a number each went through two ABC checks (os.PathLike, Mapping) on every call.
        if type(item) is dict:
            pending.extend(item.values())
        elif type(item) is list:
            pending.extend(item)
        elif type(item) in _NOTHING_HEARD:
            continue
        elif isinstance(item, str):
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


_NOTHING_HEARD = frozenset({bool, int, float, type(None)})
"""Types with no sound in them, whose classes have no ``model_fields``."""


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


def stretched_tokens(body: object, allowance: int) -> int:
    """What the still pictures in ``body`` may count past ``allowance`` tokens each, for their
    shape; :class:`NoBound` at the first item that moves (:func:`moving`).

    A model that scales a picture to fill a budget of squares, each side at least one square
    (Gemma 4 in Ollama: 280 tokens of 48-pixel squares, whatever the shape), counts a picture
    ``r`` times longer than wide at about ``sqrt(budget * r)``: 33,466 for one a pixel wide and
    four million tall, a 20 KB PNG. With ``allowance`` as the budget, a picture counts at most
    ``ceil(sqrt(allowance * r))``: ``allowance`` itself unless ``r`` is past it."""
    extra = 0
    for data in _stills(body):
        try:
            short, long = sorted(abs(side) for side in _dimensions(data))
        except struct.error:  # cut short: no decoder reads it
            continue
        if short:  # (a picture of no pixels: refused)
            least = -(-allowance * long // short)  # sqrt(allowance * r), rounded up
            root = math.isqrt(least)
            extra += max(0, root + (root * root < least) - allowance)
    return extra


def picture_tokens(body: object, pictures: int) -> int:
    """The most prompt tokens ``pictures`` pictures in ``body`` may count as an honest model
    counts them: :data:`PICTURE_TOKENS` each, and a token a :data:`PIXELS_A_TOKEN` of each
    still picture's pixels, as its header says. :class:`NoBound` for a moving one."""
    pixels = sum(map(picture_pixels, _stills(body)))
    return max(pictures, len(picture_items(body))) * PICTURE_TOKENS + pixels // PIXELS_A_TOKEN


def _stills(body: object) -> Iterator[bytes]:
    """The bytes of each still picture in ``body`` (not a WAV, not an item Ollama refuses);
    :class:`NoBound` at the first that moves."""
    for item in picture_items(body):
        data = _picture_bytes(item)
        if not data or (data.startswith(_RIFF) and data[8:12] == b"WAVE"):
            continue  # nothing (Ollama refuses it), or a sound
        if problem := moving(data):
            raise NoBound(
                f"{problem}, where a picture goes: a model may read it as a video (Qwen3-VL "
                "hands what is no picture to ffmpeg, a frame a second), whose tokens cannot be "
                "known before the call; send still pictures (PNG, JPEG, GIF, WebP, BMP)"
            )
        yield data


def picture_pixels(data: bytes) -> int:
    """The pixels a still picture's header says it has (0 where it says nothing readable)."""
    try:
        width, height = _dimensions(data)
    except struct.error:  # cut short: no decoder reads it
        return 0
    return abs(width * height)


def _dimensions(data: bytes) -> tuple[int, int]:
    """A still picture's width and height (either way round) as its header says; 0 and 0
    where it says nothing readable."""
    if data.startswith(b"\x89PNG"):
        return struct.unpack_from(">II", data, 16)  # IHDR, the first chunk
    if data.startswith(b"GIF8"):
        return struct.unpack_from("<HH", data, 6)  # the logical screen
    if data.startswith(b"BM"):
        return struct.unpack_from("<ii", data, 18)  # BITMAPINFOHEADER (and later)
    if data.startswith(b"\xff\xd8\xff"):
        frame = _jpeg_frame(data)
        return (0, 0) if frame is None else struct.unpack_from(">HH", data, frame + 5)
    kind = data[12:16]
    if kind == b"VP8 ":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L":
        bits = int.from_bytes(struct.unpack_from("4s", data, 21)[0], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":
        width, height = (
            int.from_bytes(s, "little") + 1 for s in struct.unpack_from("3s3s", data, 24)
        )
        return width, height
    return 0, 0


def picture_size(body: object) -> int:
    """Characters (or bytes) of the pictures in ``body`` given as text or bytes: what
    :func:`stretched_tokens` reads of them (decoding 30 MB of them takes some 80 ms)."""
    return sum(len(item) for item in picture_items(body) if isinstance(item, str | bytes))


def picture_items(body: object) -> list[object]:
    """Every item Ollama reads as a picture, in any wire format: native ``images`` (of the
    body, or of a message), OpenAI's ``image_url`` parts (a data URL, or an object whose
    ``url`` is one), the Responses API's ``input_image``, Anthropic's base64 ``source``s, in
    a message's content or a tool result's (a Responses ``function_call_output``'s too).
    Keys in any case, as Go's decoder reads them."""
    found: list[object] = []
    request = _mapping(body)
    if request is None:
        return found
    found += _listed(_field(request, "images"))
    for key in ("messages", "input"):
        for message in _listed(_field(request, key)):
            _parts([message], found)
    return found


def _parts(parts: list[object], found: list[object]) -> None:
    """The pictures of messages or content parts (and of the parts they hold), into ``found``."""
    pending = list(parts)
    while pending:
        part = _mapping(pending.pop())
        if part is None:
            continue
        found += _listed(_field(part, "images"))
        for url in _listed(_field(part, "image_url"), whole=True):
            inner = _mapping(url)
            found += [url] if inner is None else _listed(_field(inner, "url"), whole=True)
        for source in map(_mapping, _listed(_field(part, "source"), whole=True)):
            if source is not None and str(_field(source, "type")).casefold() == "base64":
                found += _listed(_field(source, "data"), whole=True)
        pending += _listed(_field(part, "content")) + _listed(_field(part, "output"))


def _mapping(value: object) -> Mapping[Any, Any] | None:
    """A mapping, or the fields of a model the ``ollama`` client takes (``ollama.Message``)."""
    if type(value) is dict or isinstance(value, Mapping):  # (a dict without the ABC's check)
        return value
    names = getattr(type(value), "model_fields", None)
    return (
        {name: getattr(value, name, None) for name in names} if isinstance(names, Mapping) else None
    )


def _field(item: Mapping[Any, Any], name: str) -> object:
    """The field ``name`` as Go's decoder reads it: a key equal to it in any case, the last."""
    found = None
    for key, value in item.items():
        if isinstance(key, str) and key.casefold() == name:
            found = value
    return found


def _listed(value: object, *, whole: bool = False) -> list[object]:
    """The members of a list; ``whole``: a value that is no list is one member."""
    if isinstance(value, list | tuple):
        return list(value)
    return [value] if whole and value is not None else []


def _picture_bytes(item: object) -> bytes:
    """The bytes of a picture item: base64 text (or a data URL), bytes, a path, or the
    ``ollama`` client's ``Image``; nothing when it is none of these or not base64."""
    value = getattr(item, "value", item)  # ollama.Image
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, os.PathLike):
        try:
            with open(value, "rb") as file:
                return file.read(MEDIA_READ)
        except OSError:
            return b""  # the client cannot send it either
    if not isinstance(value, str):
        return b""
    start = 0
    if value.startswith(_DATA_URL):  # data:[type];base64,<payload>
        comma = value.find(",", 0, 256)
        start = comma + 1 if comma > 0 else 0
    try:
        return base64.b64decode(value[start:])
    except (binascii.Error, ValueError):
        return b""  # not base64: Ollama refuses it


_JPEG_READ = frozenset({0xC0, 0xC1, 0xC2})
"""The JPEG frames Go's decoder reads (baseline, extended, progressive; 8 bits)."""
_JPEG_PICTURES = 8
"""Pictures a still JPEG may hold: its own, EXIF thumbnails, a phone's HDR gain map and
previews (MPF). Read as a motion JPEG (25 pictures a second), so many are one frame at most."""


def moving(data: bytes) -> str | None:
    """None when ``data`` is one still picture that every model's decoder reads as one (PNG,
    JPEG, GIF, WebP, BMP); else what it is: a moving picture, or no such picture."""
    if data.startswith(b"\x89PNG"):
        return _png(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg(data)
    if data.startswith(b"GIF8"):
        return _gif(data)
    if data.startswith(_RIFF) and data[8:12] == b"WEBP":
        animated = data[12:16] == b"VP8X" and len(data) > 20 and data[20] & 0x02
        return "an animated WebP" if animated else None
    if data.startswith(b"BM"):
        return None
    return "bytes that are no still picture (PNG, JPEG, GIF, WebP, BMP)"


def _png(data: bytes) -> str | None:
    """An APNG (an ``acTL`` chunk before the picture's data) moves; a PNG does not."""
    offset = 8
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        if kind == b"acTL":
            return "an animated PNG"
        if kind in (b"IDAT", b"IEND"):
            break
        offset += 12 + length
    return None


def _jpeg(data: bytes) -> str | None:
    """A JPEG Go's decoder reads, holding no more pictures than a photograph does; one it
    cannot read (lossless, arithmetic, 12 bits) goes to ffmpeg, which reads every picture in
    it as a frame (a motion JPEG)."""
    if data.count(b"\xff\xd8\xff") > _JPEG_PICTURES:
        return f"a JPEG holding more than {_JPEG_PICTURES} pictures (a motion JPEG)"
    frame = _jpeg_frame(data)
    if frame is None:
        return "a JPEG with no frame Go's decoder reads"
    precision = data[frame + 4] if frame + 4 < len(data) else 0
    if data[frame + 1] in _JPEG_READ and precision == 8:
        return None
    return "a JPEG of a kind Go's decoder does not read (lossless, arithmetic or 12-bit)"


def _jpeg_frame(data: bytes) -> int | None:
    """Where a JPEG's first frame header (its SOF marker) is, before its first scan."""
    offset = 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        if marker == 0xFF:  # a fill byte
            offset += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            offset += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return offset
        if marker == 0xDA:
            break
        offset += 2 + int.from_bytes(data[offset + 2 : offset + 4], "big")
    return None


def _gif(data: bytes) -> str | None:
    """A GIF of one picture; one of several is an animation (ffmpeg reads each as frames)."""
    pictures, offset = 0, 13
    if len(data) > 10 and data[10] & 0x80:  # a global colour table
        offset += 3 << ((data[10] & 0x07) + 1)
    while offset < len(data):
        block = data[offset]
        if block == 0x3B:  # the trailer
            break
        if block == 0x21:  # an extension: its label, then sub-blocks
            offset = _sub_blocks(data, offset + 2)
        elif block == 0x2C:  # a picture: its descriptor, colours, code size, sub-blocks
            pictures += 1
            if pictures > 1:
                return "an animated GIF"
            flags = data[offset + 9] if offset + 9 < len(data) else 0
            offset += 10 + ((3 << ((flags & 0x07) + 1)) if flags & 0x80 else 0)
            offset = _sub_blocks(data, offset + 1)
        else:
            return "a GIF Go's decoder does not read"
    return None


def _sub_blocks(data: bytes, offset: int) -> int:
    """Where the sub-blocks starting at ``offset`` end (past their empty one)."""
    while offset < len(data) and data[offset]:
        offset += 1 + data[offset]
    return offset + 1
