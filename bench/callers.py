"""Who calls the gateway in a bench, and how: the route, a key, a hard budget.

The gateway benches send the one-message chat of ``bench/facts.py`` with no key and no budget
by default; these options send the same through the other per-call paths, so each can be
measured and profiled as the default is:

- ``--route generate``: ``/api/generate`` with a one-line prompt instead of ``/api/chat``;
- ``--route openai``: the same chat to ``/v1/chat/completions`` (OpenAI's wire format);
- ``--key``: ``ometer serve --require-key``, each call with a live key (``X-Api-Key``), which
  the gateway reads from the ledger every call (revocation counts at once);
- ``--budget``: a hard monthly budget covering the caller (tenant ``acme``, department
  ``capped``, far above what a run spends), so every call reserves and settles; with prices
  set, so each call costs something.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from dataclasses import dataclass, field

TENANT, DEPARTMENT = "acme", "capped"
PROMPT = "hello there"


@dataclass(frozen=True)
class Caller:
    """What a bench sends: to ``path``, with ``headers``; ``serve`` goes on ``ometer serve``."""

    path: str = "/api/chat"
    headers: dict[str, str] = field(default_factory=dict)
    serve: tuple[str, ...] = ()

    def body(self, chat: dict[str, object], stream: bool) -> dict[str, object]:
        """The request body: ``chat`` itself on ``/api/chat``, its model and a prompt else."""
        if self.path == "/api/generate":
            return {"model": chat["model"], "prompt": PROMPT, "stream": stream}
        return {**chat, "stream": stream}


ROUTES = {"chat": "/api/chat", "generate": "/api/generate", "openai": "/v1/chat/completions"}
"""The routes a bench calls, by ``--route``."""

CHAT = Caller()
"""The default: the one-message chat, no key, no budget."""


def caller_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--route", choices=tuple(ROUTES), default="chat")
    parser.add_argument("--key", action="store_true", help="--require-key, a live key a call")
    parser.add_argument(
        "--budget", action="store_true", help="a hard budget covering the caller, prices set"
    )


def prepare(args: argparse.Namespace, python: str, db_url: str) -> Caller:
    """Set the ledger at ``db_url`` up for ``args`` with ``python``'s ometer; the caller."""
    env = {**os.environ, "OMETER_DB_URL": db_url}

    def ometer(*command: str) -> str:
        done = subprocess.run(
            [python, "-m", "ollama_meter", *command],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=tempfile.gettempdir(),  # each interpreter runs its own install's ometer
        )
        return done.stdout.strip()

    headers = {"X-Ometer-Tenant": TENANT, "X-Ometer-Department": DEPARTMENT}
    if args.budget:
        ometer("pricing", "set", "*", "--input-per-1m", "0.1", "--output-per-1m", "0.2")
        ometer("budget", "set", DEPARTMENT, "--tenant", TENANT, "--monthly", "1000000")
    serve: tuple[str, ...] = ()
    if args.key:
        secret = ometer("keys", "create", "--name", "bench", "-t", TENANT, "-d", DEPARTMENT)
        headers = {"X-Api-Key": secret}
        serve = ("--require-key",)
    return Caller(ROUTES[args.route], headers, serve)


def describe(args: argparse.Namespace) -> str:
    """What ``args`` send, for a bench's heading: ``short chat`` or ``generate, key, budget``."""
    what = {"chat": args.body, "openai": f"{args.body}, /v1/chat/completions"}.get(
        args.route, args.route
    )
    return ", ".join([what, *(["key"] if args.key else []), *(["budget"] if args.budget else [])])
