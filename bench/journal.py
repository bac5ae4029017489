"""What the crash journal costs the gateway: two gateways, journal on and off, same run.

The journal appends a line for every call before it goes upstream and one when its span
is durable, so that after ``kill -9`` every call Ollama received gets a span. This measures
throughput (requests/s at concurrency 32, non-streamed chat) and sequential p50 latency
through a gateway with the journal (the default) and one with ``OMETER_JOURNAL=false``, in
interleaved rounds against one emulator, and prints the medians and their ratio.

    python bench/journal.py [--rounds 5] [--burst 3000] [--sequential 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gateway import BODY, burst, sequential, start
from ollama_meter.testing import unused_port


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=3000)
    parser.add_argument("--sequential", type=int, default=300)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ometer-journal-bench-"))
    emu_port = unused_port()
    emulator = f"http://127.0.0.1:{emu_port}"
    emu = start(["ollama_meter.testing", "--port", str(emu_port)], f"{emulator}/api/version")
    gateways = {}
    for label, journal in (("journal on", "true"), ("journal off", "false")):
        port = unused_port()
        env = {
            **os.environ,
            "OMETER_DB_URL": f"sqlite:///{folder / label.replace(' ', '-')}.db",
            "OMETER_JOURNAL": journal,
        }
        url = f"http://127.0.0.1:{port}"
        proc = start(
            ["ollama_meter", "serve", "--port", str(port), "--upstream", emulator],
            f"{url}/healthz",
            env,
        )
        gateways[label] = (url, proc)
    rates: dict[str, list[float]] = {label: [] for label in gateways}
    p50s: dict[str, list[float]] = {label: [] for label in gateways}
    try:
        for round_ in range(args.rounds):
            order = list(gateways) if round_ % 2 == 0 else list(reversed(gateways))
            for label in order:
                url = gateways[label][0]
                rates[label].append(asyncio.run(burst(url, BODY, args.burst, 32)))
                p50s[label].append(
                    statistics.median(asyncio.run(sequential(url, BODY, args.sequential)))
                )
        print(f"{'gateway':<14} {'req/s (median)':>15} {'p50 ms (median)':>16}")
        for label in gateways:
            print(
                f"{label:<14} {statistics.median(rates[label]):>15.0f} {statistics.median(p50s[label]):>16.3f}"
            )
        on, off = (statistics.median(rates[k]) for k in ("journal on", "journal off"))
        print(
            f"\nthroughput with the journal: {on / off:.3f} of without ({(1 - on / off) * 100:+.1f} % cost)"
        )
        print(
            "rounds, req/s on / off: "
            + ", ".join(
                f"{a:.0f}/{b:.0f}"
                for a, b in zip(rates["journal on"], rates["journal off"], strict=True)
            )
        )
    finally:
        for _, proc in gateways.values():
            proc.terminate()
            proc.wait(timeout=30)
        emu.terminate()
        emu.wait(timeout=30)


if __name__ == "__main__":
    main()
