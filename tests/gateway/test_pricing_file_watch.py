"""A gateway keeps ``OMETER_PRICING_FILE`` in sync while it runs, as every other command does
when it starts: the file was read once, at the gateway's start, and an admin who raised a price
in it saw the gateway charge the old one for as long as it ran (weeks), with no word. A file
edited into something ometer refuses (broken TOML, a NaN or negative price, an unknown
currency) or removed keeps the rules it gave before, said once in a ``WARNING`` naming the
file and what is wrong; the next good edit is in force at the next tick."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.config import load_settings
from ollama_meter.ledger import close_ledgers
from ollama_meter.meter import Meter

WHEN = datetime(2026, 11, 10, tzinfo=UTC)
_BROKEN = [
    "[[rule]\nmodel = 'llama3.1:*'\n",  # not TOML
    "[[rule]]\nmodel = 'llama3.1:*'\ninput_per_1m = nan\n",
    "[[rule]]\nmodel = 'llama3.1:*'\ninput_per_1m = -1\n",
    "[[rule]]\nmodel = 'llama3.1:*'\ninput_per_1m = 'NaN'\n",
    "[[rule]]\nmodel = 'llama3.1:*'\ninput_per_1m = 1e400\n",
    "[[rule]]\nmodel = 'llama3.1:*'\ninput_per_1m = 1\ncurrency = 'XYZ'\n",
    "[[rule]]\nmodel = 'llama3.1:*'\ninput_per_1m = 1\nfrom = 2026-13-01\n",
    "",
    None,  # removed
]


def _good(price: int) -> str:
    return f'[[rule]]\nmodel = "llama3.1:*"\ninput_per_1m = {price}\n'


def _write(path: Path, text: str | None, tick: int) -> None:
    if text is None:
        path.unlink(missing_ok=True)
        return
    path.write_text(text)
    # An edit seconds after the one before, as an admin's are (the file's time says so).
    os.utime(path, ns=(tick * 10**9, tick * 10**9))


def _price(meter: Meter) -> Decimal | None:
    rule = meter.prices().rule_for("llama3.1:8b", WHEN)
    return None if rule is None else rule.input_per_1m


def _gateway_meter(tmp: Path, toml: Path, db_url: str | None = None) -> Meter:
    url = db_url or f"sqlite:///{tmp / 'ledger.db'}"
    settings = load_settings(db_url=url, pricing_file=toml)
    meter = Meter.from_settings(settings, source="gateway")
    meter.keep_fresh()  # as the gateway's lifespan does; its task calls refresh() every 5 s
    return meter


def _running(tmp: Path, price: int) -> tuple[Path, Meter]:
    """A gateway's meter on a ledger whose pricing file prices llama3.1 at ``price``."""
    toml = tmp / "prices.toml"
    _write(toml, _good(price), 1)
    return toml, _gateway_meter(tmp, toml)


def test_a_running_gateway_prices_by_the_file_as_edited(tmp_path: Path) -> None:
    toml, meter = _running(tmp_path, 1)
    assert _price(meter) == 1
    _write(toml, _good(7), 2)
    meter.refresh()
    assert _price(meter) == 7


def test_a_broken_edit_keeps_the_rules_before_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    toml, meter = _running(tmp_path, 3)
    _write(toml, "[[rule]]\nmodel = 'llama3.1:*'\ninput_per_1m = nan\n", 2)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            meter.refresh()
    assert _price(meter) == 3
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1, said
    assert said[0].startswith(f"OMETER_PRICING_FILE {toml}: rule 1: input_per_1m ")
    assert said[0].endswith("; the rules it gave before stay in force")
    assert all(r.exc_info is None for r in caplog.records)  # one line, no traceback
    _write(toml, _good(5), 3)
    meter.refresh()
    assert _price(meter) == 5


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.one_of(st.integers(1, 4).map(_good), st.sampled_from(_BROKEN)),
        min_size=1,
        max_size=6,
    )
)
def test_after_any_edits_the_price_is_the_last_good_files(
    tmp_path_factory: pytest.TempPathFactory, edits: list[str | None]
) -> None:
    tmp = tmp_path_factory.mktemp("edits")
    toml = tmp / "prices.toml"
    _write(toml, _good(9), 1)
    meter = _gateway_meter(tmp, toml)
    expected = Decimal(9)
    try:
        for tick, text in enumerate(edits, start=2):
            _write(toml, text, tick)
            meter.refresh()
            if text is not None and text in {_good(p) for p in range(1, 5)}:
                expected = Decimal(text.rsplit("= ", 1)[1])
            assert _price(meter) == expected
    finally:
        meter.close_upstream()
        close_ledgers()


def _sources(meter: Meter) -> list[tuple[str, Decimal | None]]:
    return [(r.source, r.input_per_1m) for r in meter.ledger.price_rules()]


def test_a_link_switched_to_a_new_version_replaces_the_old_versions_rules(
    tmp_path: Path, db_url: str
) -> None:
    """A Kubernetes ConfigMap is a link to a link to a folder that each update replaces (and
    `ln -sfn v2 current` does the same): the file was named by where its links led, so each
    version was a source of its own and the old version's rules stayed in force beside the new
    (an exact `llama3.1:8b` price removed from the file went on beating its `llama3.1:*`)."""
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    (tmp_path / "v1" / "prices.toml").write_text(
        '[[rule]]\nmodel = "llama3.1:8b"\ninput_per_1m = 1\n'
    )
    (tmp_path / "v2" / "prices.toml").write_text(_good(5))
    (tmp_path / "..data").symlink_to("v1")
    toml = tmp_path / "prices.toml"
    toml.symlink_to("..data/prices.toml")
    meter = _gateway_meter(tmp_path, toml, db_url)
    assert _price(meter) == 1
    swap = tmp_path / "..data_tmp"
    swap.symlink_to("v2")
    swap.rename(tmp_path / "..data")  # atomically, as the kubelet does
    meter.refresh()
    assert _price(meter) == 5
    assert _sources(meter) == [(f"file:{toml}", 5)]
    meter.close_upstream()
    close_ledgers()
    again = _gateway_meter(tmp_path, toml, db_url)  # a restart after the swap: the same one source
    assert _sources(again) == [(f"file:{toml}", 5)]


def test_rules_an_older_ometer_named_by_the_links_target_are_the_files(
    tmp_path: Path, db_url: str
) -> None:
    """An older ometer named the file by where its links led: those rules are this file's,
    taken over at its first sync, never left beside it."""
    from ollama_meter.ledger import Ledger
    from ollama_meter.pricing import parse_pricing_toml

    (tmp_path / "v1").mkdir()
    target = tmp_path / "v1" / "prices.toml"
    target.write_text(_good(2))
    toml = tmp_path / "prices.toml"
    toml.symlink_to(target)
    ledger = Ledger(db_url)
    content = target.read_bytes()
    old = parse_pricing_toml(content.decode(), default_currency="USD", source=f"file:{target}")
    ledger.sync_price_rules(f"file:{target}", content, lambda: old)
    [before] = ledger.price_rules()
    meter = _gateway_meter(tmp_path, toml, db_url)
    assert [(r.id, r.source) for r in meter.ledger.price_rules()] == [(before.id, f"file:{toml}")]


def test_an_edit_the_budgets_refuse_names_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from ollama_meter.records import Budget

    toml, meter = _running(tmp_path, 3)
    meter.ledger.save_budget(
        Budget(tenant="default", department=None, period="month", limit=10**7, currency="USD")
    )
    _write(toml, 'currency = "EUR"\n' + _good(4), 2)
    with caplog.at_level(logging.WARNING):
        meter.refresh()
    assert _price(meter) == 3
    [said] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said.startswith(f"OMETER_PRICING_FILE {toml}: the rule for 'llama3.1:*' prices in EUR")


def test_a_fault_is_said_again_after_a_good_edit_between(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Removed, restored, removed again: each removal is said (the second was not)."""
    toml, meter = _running(tmp_path, 3)
    with caplog.at_level(logging.WARNING):
        for tick, text in enumerate([None, _good(4), None], start=2):
            _write(toml, text, tick)
            meter.refresh()
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert (
        said
        == [
            f"OMETER_PRICING_FILE {toml}: is gone or no longer a regular file; "
            "the rules it gave before stay in force"
        ]
        * 2
    )
    assert _price(meter) == 4


def test_a_pipe_swapped_in_for_the_file_as_it_is_read_is_never_read(tmp_path: Path) -> None:
    """The file is replaced, again and again, by a good edit and by a named pipe (one kept
    linked, to write into): the watch looked at the path, then opened it, and a pipe swapped
    in between left the gateway's refresh waiting in open() for a writer for ever (and its
    stop with it). Here a writer comes, with a price no file gives: it is never in force."""
    import contextlib
    import threading

    toml, meter = _running(tmp_path, 1)
    held, swapped, regular = tmp_path / "held", tmp_path / "pipe", tmp_path / "next.toml"
    os.mkfifo(held)
    done = threading.Event()

    def swap() -> None:
        while not done.is_set():
            regular.write_text(_good(2))
            os.replace(regular, toml)
            os.link(held, swapped)
            os.replace(swapped, toml)
            try:  # opens only where a reader has the pipe open (or waits to)
                fd = os.open(held, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            with contextlib.suppress(OSError):  # the reader closed it unread
                os.write(fd, _good(666).encode())
            os.close(fd)

    swapper = threading.Thread(target=swap)
    swapper.start()
    prices: set[Decimal | None] = set()
    try:
        for _ in range(2_000):
            meter.prices._file.sync()
            prices |= {price for _, price in _sources(meter)}
    finally:
        done.set()
        swapper.join()
        meter.close_upstream()
        close_ledgers()
    assert prices <= {Decimal(1), Decimal(2)}
