"""`ometer keys create --expires` and `ometer keys rotate`: keys that end, and keys replaced.

A key lived until someone revoked it, and replacing one meant making a new key by hand with
the same names and users, setting its limits again, and revoking the old one at the moment
every caller had switched. ``rotate`` makes the new key in the old one's image (its limits
too), prints it once, and ends the old one at once or after ``--grace``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ollama_meter.ledger import Ledger

MADE = ("keys", "create", "--tenant", "acme", "--dept", "sales", "--name", "bot")


def _keys(cli: Any) -> dict[int, dict[str, Any]]:
    return {k["id"]: k for k in json.loads(cli("keys", "list", "--json").stdout)}


@pytest.fixture
def ledger_url(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    monkeypatch.setenv("OMETER_TIMEZONE", "Europe/Berlin")
    return sqlite_url


def test_a_key_made_to_expire_on_a_day_expires_at_that_days_local_midnight(
    cli: Any, ledger_url: str
) -> None:
    done = cli(*MADE, "--expires", "2099-03-01")
    assert done.code == 0, done.stderr
    assert "expires 2099-03-01 00:00 Europe/Berlin" in done.stderr
    (key,) = _keys(cli).values()
    assert key["expires_at"] == "2099-02-28T23:00:00+00:00"
    assert key["revoked"] is False and key["expired"] is False


def test_a_key_made_to_expire_after_a_while_expires_that_long_after_it_was_made(
    cli: Any, ledger_url: str
) -> None:
    assert cli(*MADE, "--expires", "90d").code == 0
    assert cli(*MADE, "--expires", "12h").code == 0
    days, hours = _keys(cli).values()
    for key, length in ((days, timedelta(days=90)), (hours, timedelta(hours=12))):
        made = datetime.fromisoformat(key["created_at"])
        # From the command's clock, read just before the key was made.
        assert timedelta(0) <= length - (datetime.fromisoformat(key["expires_at"]) - made)
        assert length - (datetime.fromisoformat(key["expires_at"]) - made) < timedelta(seconds=5)


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("2020-01-01", "--expires 2020-01-01 is not after now: give a later date or a length"),
        ("0d", "--expires 0d is no length of time: give a whole number of days or hours"),
        ("-3d", "--expires -3d is no length of time: give a whole number of days or hours"),
        ("soon", "--expires 'soon' is neither a date (YYYY-MM-DD) nor a length such as 90d or 12h"),
        ("9999999d", "--expires 9999999d is after the last day ometer works with (9998-12-31)"),
        ("2026-02-30", "--expires '2026-02-30' is not a date; use YYYY-MM-DD"),
    ],
)
def test_an_expiry_that_is_no_future_instant_is_an_error_and_makes_no_key(
    cli: Any, ledger_url: str, given: str, said: str
) -> None:
    ledger = Ledger(ledger_url)
    done = cli(*MADE, "--expires", given)
    assert done.code == 2
    assert said in done.stderr, done.stderr
    assert done.stdout == ""
    assert ledger.keys() == []


def test_rotate_makes_the_key_again_with_its_limits_and_ends_the_old_one_at_once(
    cli: Any, ledger_url: str
) -> None:
    made = cli(*MADE, "--allow-user", "bob", "--allow-user", "carol", "--expires", "30d")
    old_secret = made.stdout.strip()
    assert cli("limit", "set", "--key", "1", "--rpm", "5", "--concurrency", "2").code == 0
    done = cli("keys", "rotate", "1")
    assert done.code == 0, done.stderr
    new_secret = done.stdout.strip()
    assert new_secret.startswith("om_") and new_secret != old_secret
    assert "key 2 (bot) for acme/sales, users bob, carol replaces key 1, revoked now" in (
        done.stderr
    )
    keys = _keys(cli)
    assert keys[1]["revoked"] is True
    assert keys[2]["expires_at"] is None  # a new expiry only if given: --expires
    kept = ("name", "tenant", "department", "user", "allowed_users")
    assert {k: keys[2][k] for k in kept} == {k: keys[1][k] for k in kept}
    assert keys[2]["revoked"] is False
    ledger = Ledger(ledger_url)
    assert ledger.find_key(old_secret) is None
    found = ledger.find_key(new_secret)
    assert found is not None and found.id == 2 and found.users == ("bob", "carol")
    limits = {(lim.key_id, lim.rpm, lim.concurrency) for lim in ledger.limits()}
    assert limits == {(1, 5, 2), (2, 5, 2)}


def test_rotate_with_grace_leaves_the_old_key_live_for_that_long(cli: Any, ledger_url: str) -> None:
    old_secret = cli(*MADE).stdout.strip()
    before = datetime.now(UTC)
    done = cli("keys", "rotate", "1", "--grace", "2h")
    assert done.code == 0, done.stderr
    assert "replaces key 1, which expires" in done.stderr
    ledger = Ledger(ledger_url)
    old = ledger.find_key(old_secret)
    assert old is not None and old.expires_at is not None
    assert before + timedelta(hours=2) <= old.expires_at <= datetime.now(UTC) + timedelta(hours=2)
    new = ledger.find_key(done.stdout.strip())
    assert new is not None and new.expires_at is None


@pytest.mark.parametrize("state", ["revoked", "expired", "unknown"])
def test_only_a_live_key_is_rotated(cli: Any, ledger_url: str, state: str) -> None:
    Ledger(ledger_url)
    if state == "revoked":
        cli(*MADE)
        cli("keys", "revoke", "1")
    elif state == "expired":
        Ledger(ledger_url).create_key(
            name="bot",
            tenant="acme",
            department="sales",
            expires_at=datetime.now(UTC) - timedelta(seconds=1),
        )
    done = cli("keys", "rotate", "1")
    assert done.code == 1
    assert "error: no live key with id 1; see `ometer keys list`" in done.stderr
    assert done.stdout == ""
    assert len(_keys(cli)) == (0 if state == "unknown" else 1)


def test_an_expired_key_is_listed_as_expired(cli: Any, ledger_url: str) -> None:
    Ledger(ledger_url).create_key(
        name="bot",
        tenant="acme",
        department="sales",
        expires_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    (key,) = _keys(cli).values()
    assert (key["expired"], key["revoked"], key["expires_at"]) == (
        True,
        False,
        "2026-01-01T00:00:00+00:00",
    )
    assert "expired" in cli("keys", "list").stdout


def test_a_new_key_that_could_not_be_shown_is_revoked_and_the_old_one_left_live(
    cli: Any, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import io
    import sys

    from tests.cli.test_keys_cli import _Full

    old_secret = cli(*MADE).stdout.strip()
    with monkeypatch.context() as streams:
        streams.setattr(sys, "stdout", io.TextIOWrapper(io.BufferedWriter(_Full(errno.ENOSPC))))
        done = cli("keys", "rotate", "1")
    assert done.code == 1
    assert "note: key 2 (bot) is revoked: it could not be shown" in done.stderr
    keys = _keys(cli)
    assert (keys[1]["revoked"], keys[1]["expires_at"], keys[2]["revoked"]) == (False, None, True)
    assert Ledger(ledger_url).find_key(old_secret) is not None
