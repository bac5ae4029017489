"""The meter's own cost per call, against a plain ``ollama.Client`` call in the same run.

Three clients call the emulator (no artificial latency), non-streamed chat, in
rounds so machine noise hits them alike:

  plain      ollama.Client                       (the baseline)
  metered    MeteredClient, nothing exported      (ledger write included)
  exported   MeteredClient, OTLP http to a local receiver

Prints median and p95 per call, and the median added over the baseline.

    python bench/overhead.py [--calls 400]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ollama

from ollama_meter import MeteredClient
from ollama_meter.testing import OllamaEmulator
from tests._otlp import OtlpHttpReceiver

MESSAGES = [{"role": "user", "content": "summarise the quarterly numbers"}]


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ometer-overhead-"))
    rx = OtlpHttpReceiver().__enter__()  # left open: the exporter flushes at exit
    with OllamaEmulator() as emu:
        plain = ollama.Client(host=emu.url)
        metered = MeteredClient(emu.url, db_url=f"sqlite:///{folder / 'a.db'}", department="bench")
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = rx.url
        exported = MeteredClient(emu.url, db_url=f"sqlite:///{folder / 'b.db'}", department="bench")
        del os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
        clients: dict[str, Callable[[], object]] = {
            "plain ollama.Client": lambda: plain.chat(model="llama3.1:8b", messages=MESSAGES),
            "MeteredClient, no export": lambda: metered.chat(
                model="llama3.1:8b", messages=MESSAGES
            ),
            "MeteredClient, OTLP export": lambda: exported.chat(
                model="llama3.1:8b", messages=MESSAGES
            ),
        }
        for call in clients.values():  # warm up: connections, model load, caches
            for _ in range(20):
                call()
        samples: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(args.calls):
            for name, call in clients.items():
                samples[name].append(timed(call))
    base = statistics.median(samples["plain ollama.Client"])
    print(f"non-streamed chat to the emulator, {args.calls} calls each, interleaved")
    print(f"{'client':<30} {'median ms':>10} {'p95 ms':>8} {'added ms':>9} {'ratio':>6}")
    for name, values in samples.items():
        median = statistics.median(values)
        p95 = statistics.quantiles(values, n=20)[-1]
        print(f"{name:<30} {median:>10.3f} {p95:>8.3f} {median - base:>9.3f} {median / base:>6.2f}")


if __name__ == "__main__":
    main()
