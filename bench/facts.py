"""What reading a request costs the meter per call (``facts_of``), for a few chat bodies.

Every call through the gateway, the Python API or the CLI is read before it goes
upstream. Each body is read in a loop (``timeit``); a round runs each install's reading
in a fresh process, rounds interleaved so machine noise hits them alike, and the median
and the least of the rounds' best loops are printed, in microseconds a call:

  short chat     one user message (the gateway benchmark's body)
  agent chat     a system prompt, a tool call and its result, three tools with schemas
  long chat      forty turns of a few sentences each

With ``--shape``, each read is followed by reading what the model's template writes of
it (``RequestFacts.shape``): what a call under a hard budget pays.

    python bench/facts.py [--rounds 7] [--shape] [--against OTHER/.venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now in a city, in degrees Celsius.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city's name."},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TOOLS = [
    WEATHER,
    {**WEATHER, "function": {**WEATHER["function"], "name": "get_forecast"}},
    {**WEATHER, "function": {**WEATHER["function"], "name": "get_rain"}},
]
SENTENCES = "The quarterly numbers are in, and sales rose four percent over the summer. " * 3
BODIES = {
    "short chat": {
        "model": "llama3.1:8b",
        "messages": [{"role": "user", "content": "hello there"}],
        "stream": False,
    },
    "agent chat": {
        "model": "llama3.1:8b",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. " * 10},
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                ],
            },
            {"role": "tool", "content": '{"temperature": 21, "sky": "clear"}'},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "tools": TOOLS,
        "options": {"num_ctx": 8192},
        "stream": True,
    },
    "long chat": {
        "model": "llama3.1:8b",
        "messages": [
            {"role": "user" if i % 2 == 0 else "assistant", "content": SENTENCES} for i in range(40)
        ],
        "stream": True,
    },
}
MEASURE = """
import json, sys, timeit
from ollama_meter.meter._request import facts_of
bodies, shape = json.loads(sys.argv[1]), sys.argv[2] == "1"
read = (lambda b: facts_of("chat", b).shape) if shape else (lambda b: facts_of("chat", b))
out = {}
for name, body in bodies.items():
    timer = timeit.Timer(lambda: read(body))
    loops, _ = timer.autorange()
    out[name] = min(timer.repeat(5, loops)) / loops * 1e6
print(json.dumps(out))
"""


def measure(python: str, shape: bool) -> dict[str, float]:
    """Microseconds a call per body, best of five loops, in a fresh ``python`` process."""
    # Run from a folder of no checkout, so each interpreter reads its own install.
    done = subprocess.run(
        [python, "-c", MEASURE, json.dumps(BODIES), "1" if shape else "0"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    return dict(json.loads(done.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--shape", action="store_true", help="read the shape too")
    parser.add_argument("--against", metavar="PYTHON", help="another install's Python")
    args = parser.parse_args()
    pythons = {"this": sys.executable}
    if args.against:
        pythons["against"] = args.against
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in pythons}
    for _ in range(args.rounds):
        for name, python in pythons.items():
            runs[name].append(measure(python, args.shape))
    print(f"facts_of, µs a call, of {args.rounds} rounds (best of 5 loops each): median, least")
    print(f"{'body':<14}" + "".join(f"{name:>20}" for name in pythons))
    for body in BODIES:
        cells = [
            f"{statistics.median(r[body] for r in runs[name]):>10.2f}"
            f"{min(r[body] for r in runs[name]):>10.2f}"
            for name in pythons
        ]
        print(f"{body:<14}" + "".join(cells))


if __name__ == "__main__":
    main()
