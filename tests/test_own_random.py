"""A program that seeds Python's ``random`` gets the numbers it would get without ometer.

A retry's jitter took them from the program's own generator: an Ollama call retried, or
an alert sent again, moved a seeded simulation or sampled evaluation onto other numbers.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

from hypothesis import given, settings, strategies as st

from ollama_meter.budgets import WebhookChannel, deliver
from ollama_meter.testing import unused_port
from ollama_meter.upstream._resilience import RetryPolicy
from tests.budgets.test_alert_email_utf8 import ALERT


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32), retries=st.integers(1, 6))
def test_retry_waits_take_no_number_from_the_programs_random(seed: int, retries: int) -> None:
    state = random.getstate()  # hypothesis' own, put back
    try:
        random.seed(seed)
        expected = [random.random() for _ in range(3)]
        random.seed(seed)
        waits = [RetryPolicy().delay(attempt) for attempt in range(1, retries + 1)]
        refused = WebhookChannel(f"http://127.0.0.1:{unused_port()}/hook")  # nobody listens
        outcome, delivered = deliver(ALERT, [refused], attempts=retries, sleep=waits.append)
        assert not delivered and outcome["webhook"].startswith("failed")
        assert len(waits) == 2 * retries - 1  # the waits were made, each jittered
        assert [random.random() for _ in range(3)] == expected
    finally:
        random.setstate(state)


def test_forked_workers_wait_apart() -> None:
    """Workers forked from one parent (gunicorn, multiprocessing) jitter their retries apart,
    as random's own numbers do after a fork, instead of all retrying at the same instants."""
    if not hasattr(os, "fork"):
        return
    program = (
        "import os, sys\n"
        "from ollama_meter.upstream._resilience import RetryPolicy\n"
        "RetryPolicy().delay(1)\n"
        "for _ in range(2):\n"
        "    if os.fork() == 0:\n"
        "        print(RetryPolicy().delay(1), flush=True)\n"
        "        os._exit(0)\n"
        "    os.wait()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], check=True, capture_output=True, text=True
    )
    first, second = out.stdout.split()
    assert first != second, out
