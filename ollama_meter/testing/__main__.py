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
    args = parser.parse_args(argv)

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    emulator = OllamaEmulator(
        host=args.host, port=args.port, latency=args.latency, token_latency=args.token_latency
    )
    with emulator:
        print(f"Ollama emulator listening on {emulator.url}", flush=True)
        # A bounded wait keeps the main thread responsive to signals everywhere.
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
