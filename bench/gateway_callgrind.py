"""The gateway's event-loop instructions a call: ``ometer serve`` under callgrind.

Timings on a shared machine move more between runs than between builds; the instructions the
event loop runs for a call do not (runs of one build agree within 1 %). The emulator
(``python -m ollama_meter.testing``, no artificial latency) runs as usual, ``ometer serve``
(ledger on, a SQLite file) under ``valgrind --tool=callgrind --separate-threads=yes``; after
``--warm`` calls the counters are zeroed (``callgrind_control -z``), ``--calls`` sequential
calls are sent, the counters dumped, and the event loop's thread's instructions divided by
the calls are printed (the other threads, the commit thread's, apart).

    python bench/gateway_callgrind.py [--calls 300] [--warm 30] [--stream] [--body "agent chat"]
                                      [--python OTHER/.venv/bin/python] [--keep DIR]

``--python`` measures another install's gateway (say main's) the same way. ``--keep`` leaves
the callgrind files in DIR, for ``callgrind_annotate``. Needs valgrind (``apt-get install
valgrind``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.callers import CHAT, Caller, caller_options, describe, prepare
from bench.facts import BODIES
from bench.gateway import start
from ollama_meter.testing import unused_port


def _wait(url: str, proc: subprocess.Popen[bytes], seconds: float = 1200) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("ometer serve under callgrind exited before it answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit("ometer serve under callgrind did not start")


async def _calls(url: str, body: dict[str, object], n: int, caller: Caller = CHAT) -> None:
    async with aiohttp.ClientSession(url, headers=caller.headers) as client:
        for _ in range(n):
            async with client.post(caller.path, json=body) as reply:
                await reply.read()
                reply.raise_for_status()


def _totals(folder: Path, pid: int) -> dict[int, int]:
    """Instructions by thread, of the last dump callgrind wrote for ``pid``."""
    found: dict[int, int] = {}
    for path in folder.glob(f"callgrind.out.{pid}.*"):
        # callgrind.out.PID.PART-THREAD: PART counts the dumps; the zeroed run is the last
        match = re.fullmatch(rf"callgrind\.out\.{pid}\.(\d+)-(\d+)", path.name)
        if match is None or int(match.group(1)) != 1:
            continue
        text = path.read_text(errors="replace")
        total = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
        if total:
            found[int(match.group(2))] = int(total.group(1))
    return found


def sequential_options(doc: str | None, calls: int, warm: int) -> argparse.ArgumentParser:
    """The options of a bench that sends ``--calls`` sequential calls after ``--warm``."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=calls)
    parser.add_argument("--warm", type=int, default=warm)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--body", choices=list(BODIES), default="short chat")
    parser.add_argument("--python", default=sys.executable, help="the install to measure")
    caller_options(parser)
    return parser


def main() -> None:
    parser = sequential_options(__doc__, calls=300, warm=30)
    parser.add_argument("--keep", type=Path, help="leave the callgrind files in this folder")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="ometer-callgrind-"))
    folder.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{folder / 'ledger.db'}"
    caller = prepare(args, args.python, db_url)
    body = caller.body(BODIES[args.body], args.stream)
    emu_port = unused_port()
    emulator = f"http://127.0.0.1:{emu_port}"
    emu = start(["ollama_meter.testing", "--port", str(emu_port)], f"{emulator}/api/version")
    port = unused_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMETER_DB_URL": db_url}
    command = [
        "valgrind", "--tool=callgrind", "--separate-threads=yes",
        f"--callgrind-out-file={folder}/callgrind.out.%p",
        args.python, "-m", "ollama_meter", "serve", "--port", str(port), "--upstream", emulator,
        *caller.serve,
    ]  # fmt: skip
    gateway = subprocess.Popen(
        command,
        env=env,
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=(folder / "serve.log").open("wb"),
    )
    try:
        _wait(f"{url}/healthz", gateway)
        asyncio.run(_calls(url, body, args.warm, caller))
        time.sleep(1)  # the warm-up's spans committed
        subprocess.run(
            ["callgrind_control", "-z", str(gateway.pid)], check=True, capture_output=True
        )
        asyncio.run(_calls(url, body, args.calls, caller))
        subprocess.run(
            ["callgrind_control", "-d", str(gateway.pid)], check=True, capture_output=True
        )
        totals = _totals(folder, gateway.pid)
    finally:
        gateway.terminate()
        gateway.wait(60)
        emu.terminate()
        emu.wait(10)
    if not totals:
        raise SystemExit(f"no callgrind dump found in {folder}")
    loop = totals.get(1, 0)
    others = sum(count for thread, count in totals.items() if thread != 1)
    kind = "streamed" if args.stream else "non-streamed"
    print(f"{describe(args)}, {kind}, {args.calls} calls after {args.warm} ({args.python})")
    print(f"  event loop: {loop / args.calls / 1e6:.3f} million instructions a call")
    print(f"  other threads: {others / args.calls / 1e6:.3f} million a call")
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
