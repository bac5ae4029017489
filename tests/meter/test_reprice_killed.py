"""``ometer reprice`` killed with ``kill -9`` wherever it is: the ledger holds each span at one
price, its rollups are what the raw spans give, and the same reprice run again moves the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

from sqlalchemy import func, select

from ollama_meter.ledger import Ledger, SpanFilter, close_ledgers, rebuild
from ollama_meter.ledger.models import SPANS
from ollama_meter.records import format_micros
from tests.factories import token_prices
from tests.ledger.test_transfer import _spans, _tables

BATCH = 100
"""Spans a page (``--batch``; the CLI's own is 2,000): pages of the default size made the
test record 5,000 spans and reprice them twice, 14 to 20 s of CPU for the same kill."""
CALLS = 5 * BATCH
"""Five pages: a kill most likely lands between two of them."""


def _repriced(ledger: Ledger) -> int:
    with ledger.read() as conn:
        return int(
            conn.execute(
                select(func.count()).where(SPANS.c.price_rule_id.is_not(None))
            ).scalar_one()
        )


def _totals(ledger: Ledger) -> Counter[str]:
    """Each currency's spend as the raw spans sum it, and as the rollups (reports) do."""
    with ledger.read() as conn:
        query = select(SPANS.c.currency, func.sum(SPANS.c.cost_total)).group_by(SPANS.c.currency)
        raw = Counter({currency: int(total) for currency, total in conn.execute(query)})
    reported = Counter({row.currency: row.cost for row in ledger.spend(SpanFilter())})
    assert +reported == +raw
    return raw


def test_a_reprice_killed_midway_leaves_a_consistent_ledger_and_runs_again_to_the_end(
    db_url: str,
) -> None:
    url = db_url
    ledger = Ledger(url)
    ledger.record(_spans(CALLS))
    ledger.add_price_rules([token_prices()])  # every span's cost moves
    close_ledgers()
    env = {**os.environ, "OMETER_DB_URL": url}
    command = [
        sys.executable,
        "-m",
        "ollama_meter",
        "reprice",
        "--since",
        "2026-01-01",
        "--batch",
        str(BATCH),
    ]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as run:
        watcher = Ledger(url)
        deadline = time.monotonic() + 120
        while run.poll() is None and _repriced(watcher) == 0:  # its first page is in
            assert time.monotonic() < deadline, "the reprice never wrote a page"
            time.sleep(0.01)
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=60)
    close_ledgers()
    ledger = Ledger(url)
    done = _repriced(ledger)
    assert done % BATCH == 0 or done == CALLS  # whole pages: none half written
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept  # the rollups are what the raw spans give
    before = _totals(ledger)
    close_ledgers()
    again = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert again.returncode == 0, again.stderr
    ledger = Ledger(url)
    after = _totals(ledger)
    assert _repriced(ledger) == ledger.count() == CALLS
    said = again.stdout.splitlines()
    assert said[0] == f"examined {CALLS} span(s) since 2026-01-01; {CALLS - done} changed"
    assert set(before) == set(after) == {"USD"}  # every call of the ledger's is in USD
    moved = after["USD"] - before["USD"]
    assert said[1:2] == [
        f"  USD: {format_micros(before['USD'])} → {format_micros(after['USD'])} "
        f"(+{format_micros(moved)})"
    ]
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept
