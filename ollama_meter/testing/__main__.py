"""``python -m ollama_meter.testing``: serve the Ollama emulator in the foreground.

Owns the command line only: parse options, start, print the URL on one line,
and stop cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from types import FrameType

from ollama_meter.testing._emulator import OllamaEmulator
from ollama_meter.testing._models import (
    DEFAULT_MODELS,
    REAL_TIME,
    REAL_TIME_MODELS,
    EmulatedModel,
)
from ollama_meter.testing._names import find_model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ollama_meter.testing",
        description="Serve an Ollama emulator with deterministic replies until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=11434, help="port (default 11434; 0 = any free)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds before the first byte of a reply"
    )
    parser.add_argument(
        "--token-latency", type=float, default=0.0, help="seconds between streamed chunks"
    )
    parser.add_argument(
        "--progress-latency",
        type=float,
        default=0.0,
        help="seconds between the progress lines of a pull, a push or a create",
    )
    parser.add_argument(
        "--models",
        help="comma-separated models it has pulled, a subset of: "
        + ", ".join(m.name for m in DEFAULT_MODELS)
        + " (default: all)",
    )
    parser.add_argument(
        "--real-time",
        action="store_true",
        help=f"models at a GPU's pace (a cold load of 1.2 s, 20 ms a token), {REAL_TIME} times "
        "slower than by default; either way every time it reports is spent for real",
    )
    args = parser.parse_args(argv)
    models = pulled(parser, args.models, REAL_TIME_MODELS if args.real_time else DEFAULT_MODELS)

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    emulator = OllamaEmulator(
        models=models,
        host=args.host,
        port=args.port,
        latency=args.latency,
        token_latency=args.token_latency,
        progress_latency=args.progress_latency,
    )
    with emulator:
        print(f"Ollama emulator listening on {emulator.url}", flush=True)
        # A bounded wait keeps the main thread responsive to signals everywhere.
        while not done.wait(0.5):
            pass
    return 0


def pulled(
    parser: argparse.ArgumentParser,
    names: str | None,
    models: tuple[EmulatedModel, ...] = DEFAULT_MODELS,
) -> tuple[EmulatedModel, ...]:
    """The ``models`` ``--models`` names (all of them when not given); exits with a usage error."""
    if names is None:
        return models
    chosen: list[EmulatedModel] = []
    for name in (part.strip() for part in names.split(",")):
        model = find_model(models, name) if name else None
        if model is None:
            parser.error(
                f"--models: {name!r} is not an emulated model; "
                f"choose from {', '.join(m.name for m in DEFAULT_MODELS)}"
            )
        if model not in chosen:
            chosen.append(model)
    return tuple(chosen)


if __name__ == "__main__":
    raise SystemExit(main())
