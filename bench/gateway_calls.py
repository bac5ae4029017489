"""The function calls the gateway's event loop makes for one call: ``ometer serve`` under cProfile.

Counting calls is deterministic where timing on a shared machine is not: a cut to the request
path shows as fewer calls a call whatever the load. The emulator (``python -m
ollama_meter.testing``, no artificial latency) runs as in ``bench/gateway.py``; ``ometer serve``
(ledger on, a SQLite file) runs with cProfile attached to its main thread (the event loop) by a
signal after ``--warm`` calls, and detached after ``--calls`` sequential calls. The calls a call
are printed by where the function lives (built-ins, each ometer package, each library), and with
``--top N`` the N functions called most.

    python bench/gateway_calls.py [--calls 3000] [--warm 50] [--stream] [--body "agent chat"]
                                  [--python OTHER/.venv/bin/python] [--top 30] [--save FILE]

``--python`` counts another install's gateway (say main's) the same way.
"""

from __future__ import annotations

import asyncio
import collections
import os
import pstats
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.callers import describe, prepare
from bench.facts import BODIES
from bench.gateway import start
from bench.gateway_callgrind import _calls, sequential_options
from ollama_meter.testing import unused_port

PROFILED = """
import cProfile, os, signal, sys
profile = cProfile.Profile()
def attach(*_):
    profile.enable()
    open(os.environ["OMETER_BENCH_PROFILE"] + ".on", "w").close()
def detach(*_):
    profile.disable()
    profile.dump_stats(os.environ["OMETER_BENCH_PROFILE"])
signal.signal(signal.SIGUSR1, attach)
signal.signal(signal.SIGUSR2, detach)
sys.argv = ["ometer", *sys.argv[1:]]
from ollama_meter.__main__ import main
main()
"""


def group(path: str) -> str:
    """Where a profiled function lives: ``built-in``, ``ometer <package>`` or a library."""
    if path == "~":
        return "built-in"
    parts = Path(path).parts
    if "ollama_meter" in parts:
        rest = parts[parts.index("ollama_meter") + 1 :]
        return f"ometer {rest[0].removesuffix('.py')}" if len(rest) > 1 else "ometer (top)"
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    return "python's library"


def _wait_for(path: Path, url: str) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit("the gateway never attached its profiler")
        time.sleep(0.2)
        if not path.exists():
            httpx.get(url, timeout=5)  # wakes an idle event loop to run the signal's handler


def main() -> None:
    parser = sequential_options(__doc__, calls=3000, warm=50)
    parser.add_argument("--top", type=int, default=0, help="also list the N most called")
    parser.add_argument("--save", type=Path, help="copy the profile here, for pstats")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ometer-calls-"))
    stats_file = folder / "gateway.prof"
    db_url = f"sqlite:///{folder / 'ledger.db'}"
    caller = prepare(args, args.python, db_url)
    body = caller.body(BODIES[args.body], args.stream)
    emu_port = unused_port()
    emulator = f"http://127.0.0.1:{emu_port}"
    emu = start(["ollama_meter.testing", "--port", str(emu_port)], f"{emulator}/api/version")
    port = unused_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "OMETER_DB_URL": db_url,
        "OMETER_BENCH_PROFILE": str(stats_file),
    }
    serve = ["serve", "--port", str(port), "--upstream", emulator, *caller.serve]
    try:  # a gateway that does not start (a --python not found) leaves no emulator behind
        gateway = start(["-c", PROFILED, *serve], f"{url}/healthz", env, args.python, module=False)
    except BaseException:
        emu.terminate()
        raise
    try:
        asyncio.run(_calls(url, body, args.warm, caller))
        time.sleep(1)  # the warm-up's spans committed
        gateway.send_signal(signal.SIGUSR1)
        _wait_for(Path(f"{stats_file}.on"), f"{url}/healthz")
        asyncio.run(_calls(url, body, args.calls, caller))
        time.sleep(0.5)  # what the event loop does after the last answer
        gateway.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 60
        while not stats_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
            httpx.get(f"{url}/healthz", timeout=5)
        time.sleep(0.5)  # the dump written whole
    finally:
        gateway.terminate()
        gateway.wait(60)
        emu.terminate()
        emu.wait(10)
    if args.save:
        shutil.copyfile(stats_file, args.save)
    stats = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    shutil.rmtree(folder, ignore_errors=True)
    by_group: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    for (path, line, name), (_, calls, *_rest) in stats.items():
        by_group[group(path)] += calls
        by_function[f"{name} ({Path(path).name}:{line})"] += calls
    total = sum(by_group.values())
    kind = "streamed" if args.stream else "non-streamed"
    print(f"{describe(args)}, {kind}, {args.calls} calls after {args.warm} ({args.python})")
    print(f"  {total / args.calls:8.1f} function calls a call on the event loop")
    for name, calls in by_group.most_common():
        print(f"  {calls / args.calls:8.1f}  {name}")
    if args.top:
        print(f"the {args.top} functions called most, a call:")
        for name, calls in by_function.most_common(args.top):
            print(f"  {calls / args.calls:8.1f}  {name}")


if __name__ == "__main__":
    main()
