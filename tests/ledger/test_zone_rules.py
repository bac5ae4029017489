"""Hosts whose tz databases differ cut the ledger's zone's days differently: a process whose
data gives the zone other rules than the ledger's cells were cut with says so when it opens
the ledger, with the first instant they disagree and what to do."""

from __future__ import annotations

import logging
import shutil
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter.ledger import Ledger, rebuild
from ollama_meter.ledger._meta import set_meta
from ollama_meter.ledger._zonerules import first_year_apart, zone_rules
from tests.factories import make_span


@pytest.fixture
def berlin_without_summer_time(tmp_path: Path) -> Iterator[None]:
    """This process's tz data says Europe/Berlin keeps UTC+1 all year (as a host whose data
    has a rule change the others' lack): its file is Etc/GMT-1's."""
    fake = tmp_path / "zoneinfo"
    (fake / "Europe").mkdir(parents=True)
    for folder in zoneinfo.TZPATH:
        if (Path(folder) / "Etc" / "GMT-1").exists():
            shutil.copy(Path(folder) / "Etc" / "GMT-1", fake / "Europe" / "Berlin")
            break
    else:
        pytest.skip("no system tz database to copy a zone from")
    before = zoneinfo.TZPATH
    zoneinfo.reset_tzpath(to=[str(fake)])
    zoneinfo.ZoneInfo.clear_cache()
    try:
        yield
    finally:
        zoneinfo.reset_tzpath(to=before)
        zoneinfo.ZoneInfo.clear_cache()


SAID = (
    "this host's time zone data gives Europe/Berlin other rules than the ledger's days were "
    "cut with, from 2000 on (here: UTC+01:00 on 1 January), so the day and month cells this "
    "process writes disagree with the other processes'."
)


def _warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_process_with_other_zone_rules_says_so_and_a_rollup_makes_them_the_ledgers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    """A gateway on a host with newer tz data and one with older data wrote the same day's
    spans into cells that begin at different midnights, and nothing said so: day reports
    split the day in two. Now the one whose data differs warns at open (the other's not);
    after `ometer db rollup` there, its data's rules are the ledger's."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    at = datetime(2026, 7, 1, 12, tzinfo=UTC)
    with caplog.at_level(logging.WARNING, logger="ollama_meter.ledger"):
        Ledger(url, zone="Europe/Berlin").record([make_span(started_at=at)])
        assert _warned(caplog) == []
        request.getfixturevalue("berlin_without_summer_time")
        other = Ledger(url)
        [said] = _warned(caplog)
        assert said.startswith(SAID) and said.endswith(
            "then run `ometer db rollup` once to cut every day again"
        )
        caplog.clear()
        rebuild(other.write, other.read)
        Ledger(url)
        assert _warned(caplog) == []


ZONES = [
    "UTC",
    "Europe/Berlin",
    "Europe/Moscow",
    "America/Sao_Paulo",
    "Asia/Tehran",
    "America/Santiago",
    "Pacific/Apia",
    "Africa/Casablanca",
    "Etc/GMT-1",
]


@settings(max_examples=30, deadline=None)
@given(a=st.sampled_from(ZONES), b=st.sampled_from(ZONES))
def test_the_first_year_named_is_where_the_two_zones_first_disagree(a: str, b: str) -> None:
    """Two zones' fingerprints are equal when their offsets agree all through the years
    compared (sampled twice a day here); else the year named is one where some hour's
    offsets differ, and every year before it agrees."""
    za, zb = zoneinfo.ZoneInfo(a), zoneinfo.ZoneInfo(b)

    def agree(first: datetime, last: datetime, step: timedelta) -> bool:
        at = first
        while at < last:
            if at.astimezone(za).utcoffset() != at.astimezone(zb).utcoffset():
                return False
            at += step
        return True

    def year(y: int) -> datetime:
        return datetime(y, 1, 1, tzinfo=UTC)

    ra, rb = zone_rules(za), zone_rules(zb)
    if ra == rb:
        assert agree(year(2000), year(2051), timedelta(hours=12))
        return
    apart = first_year_apart(ra, rb)
    assert agree(year(2000), year(apart), timedelta(hours=12))
    assert not agree(year(apart), year(apart + 1), timedelta(hours=1))


@pytest.mark.parametrize("kept", ["", "garbage", "1990:abc", "2000:" + "f" * 300, "2000:"])
def test_a_fingerprint_that_is_none_of_ours_is_said_to_differ_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kept: str
) -> None:
    """A value another version kept, or one edited by hand: `first, mine = kept.split(":")`
    raised at every open, so no command could read the ledger. Now it differs, from the
    first year compared (or the first that differs), and the ledger opens."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url, zone="Europe/Berlin")
    with ledger.write() as conn:
        set_meta(conn, "zone_rules", kept)
    with caplog.at_level(logging.WARNING, logger="ollama_meter.ledger"):
        Ledger(url).record([make_span()])
    [said] = _warned(caplog)
    assert "other rules than the ledger's days were cut with, from 2000 on" in said
