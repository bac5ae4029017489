"""Where the gateway's own time goes in a call: ``ometer serve`` sampled by py-spy.

The emulator (``python -m ollama_meter.testing``, no artificial latency) and ``ometer serve``
(ledger on, a SQLite file) run as in ``bench/gateway.py``; sequential chat calls go through
the gateway while py-spy samples it (``--nonblocking``: the gateway is never paused). Each
sample of the event loop's thread is put in the first step of the call whose frame it holds,
and the table gives each step's share of the samples the event loop spent in Python
("other": mostly stacks py-spy read cut short, of the same steps; their innermost frames are
printed). A socket write counts apart: the process it wakes may run on the gateway's core
while the write returns (Ollama's own work, or the caller's), so its share is not the
gateway's.

    python bench/gateway_profile.py [--calls 3000] [--stream] [--body "agent chat"] [--rate 500]
                                    [--py-spy PATH]

py-spy is not one of ometer's dependencies: ``pip install py-spy`` into the venv first.
Sampling slows the calls (their p50 is printed, for what it is worth).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import inspect
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from bench.facts import BODIES
from bench.gateway import sequential, start
from ollama_meter.testing import unused_port

TO_OLLAMA = "socket write to Ollama (its wake-up)"
TO_CALLER = "socket write to the caller (its wake-up)"
STEPS = (  # the first whose frame a sample holds: inner steps before the ones around them
    ("metrics counted after the answer", ("GatewayMetrics._count_pending",)),
    ("closing the call: span measured, priced, journaled", ("Meter._close",)),
    ("opening the call: span made", ("Relay._open",)),
    ("its slot: fair queue, journal line", ("take_slot",)),
    ("headers for Ollama", ("upstream_headers",)),
    (
        "aiohttp: request sent, answer read",
        ("PooledUpstream._sent", "ClientRequest.write_bytes", "ResponseHandler.", "_Counted."),
    ),
    ("reading the answer", ("_Answered.whole", "_Answered.stream", "ReadAhead.")),
    ("the rest of the relay (moves, breaker, release)", ("Relay.metered",)),
    ("parsing and checking the body", ("parse_request",)),
    ("reading the body", ("read_body",)),
    ("attribution, keys, rate limits (the rest of Gateway.metered)", ("Gateway.metered",)),
    ("sending the answer", ("Whole.__call__", "Streamed.__call__")),
    ("Starlette and the four guard middlewares", ("Starlette.__call__",)),
    ("uvicorn and httptools", ("HttpTools", "RequestResponseCycle")),
)


def py_spy(given: str | None) -> str:
    found = given or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    found = found or shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy is not installed: run `pip install py-spy` in this venv")
    return found


def _uvicorn_writes() -> tuple[str, ...]:
    """The frames (function, file and line) where uvicorn writes an answer to its socket."""
    lines, first = inspect.getsourcelines(RequestResponseCycle.send)
    return tuple(
        f"RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py:{first + i})"
        for i, text in enumerate(lines)
        if "transport.write" in text
    )


def write_of(leaf: str, uvicorn_writes: tuple[str, ...]) -> str | None:
    """Which socket write a sample's innermost frame is in, if any."""
    if leaf.startswith("StreamWriter._writelines"):  # aiohttp's, of the request to Ollama
        return TO_OLLAMA
    if leaf.startswith("_HeadHeld.write") or leaf in uvicorn_writes:
        return TO_CALLER
    return None


Counts = collections.Counter[str]


def shares(raw: Path) -> tuple[Counts, int, Counts, Counts]:
    """Samples by step of the event loop's Python, their total, the rest by kind, and those of
    no step by their innermost frame."""
    steps: collections.Counter[str] = collections.Counter()
    others: collections.Counter[str] = collections.Counter()
    rest: collections.Counter[str] = collections.Counter()
    python = 0
    uvicorn_writes = _uvicorn_writes()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        if "Thread._bootstrap" in stack:
            rest["other threads (the ledger's commit)"] += n
        elif frames[-1].startswith("Runner.run"):
            rest["event loop outside Python (waiting, uvloop, httptools)"] += n
        elif write := write_of(frames[-1], uvicorn_writes):
            rest[write] += n
        else:
            python += n
            label = next((label for label, keys in STEPS if any(k in stack for k in keys)), None)
            steps[label or "other"] += n
            others[frames[-1]] += 0 if label else n
    return steps, python, rest, others


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--stream", action="store_true", help="streamed chat (default: whole)")
    parser.add_argument("--body", choices=list(BODIES), default="short chat")
    parser.add_argument("--rate", type=int, default=500, help="samples a second")
    parser.add_argument("--py-spy", dest="spy", help="the py-spy program (default: the venv's)")
    args = parser.parse_args()
    spy = py_spy(args.spy)
    folder = Path(tempfile.mkdtemp(prefix="ometer-gw-profile-"))
    emulator = f"http://127.0.0.1:{(emu_port := unused_port())}"
    emu = start(
        ["ollama_meter.testing", "--port", str(emu_port), "--latency", "0"],
        f"{emulator}/api/version",
    )
    url = f"http://127.0.0.1:{(port := unused_port())}"
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{folder / 'gateway.db'}"}
    serve = ["ollama_meter", "serve", "--port", str(port), "--upstream", emulator]
    gateway = start(serve, f"{url}/healthz", env)
    body = {**BODIES[args.body], "stream": args.stream}
    raw = folder / "samples.txt"
    try:
        asyncio.run(sequential(url, body, 200))
        record = [spy, "record", "--nonblocking", "-r", str(args.rate), "-f", "raw"]
        sampler = subprocess.Popen(
            [*record, "-o", str(raw), "-p", str(gateway.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)  # py-spy attached
        times = asyncio.run(sequential(url, body, args.calls))
        sampler.send_signal(signal.SIGINT)  # it writes what it sampled, then ends
        sampler.wait(timeout=60)
    finally:
        for running in (gateway, emu):
            running.terminate()
            running.wait(timeout=30)
    if not raw.exists():
        raise SystemExit(f"py-spy wrote no samples (may it trace process {gateway.pid}?)")
    steps, python, rest, others = shares(raw)
    kind = "streamed" if args.stream else "non-streamed"
    print(
        f"{args.calls} {kind} calls ({args.body}), p50 {statistics.median(times):.3f} ms while sampled"
    )
    print(f"\n{'step of the event loop in Python':<64} {'samples':>8} {'share':>7}")
    for label, n in steps.most_common():
        print(f"{label:<64} {n:>8} {n / python:>7.1%}")
    print("\nother, by innermost frame:")
    for frame, n in others.most_common(8):
        print(f"  {frame[:86]:<86} {n:>6}")
    print(f"\n{'not the event loop in Python':<64} {'samples':>8} {'vs it':>7}")
    for label, n in rest.most_common():
        print(f"{label:<64} {n:>8} {n / python:>7.2f}x")


if __name__ == "__main__":
    main()
