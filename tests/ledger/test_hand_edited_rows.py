"""Budget, price rule, limit and key rows edited by hand in SQL, to values ometer never writes.

A record checks its values when made, so such a row raised a ValueError (or a decimal or date
parser's own error) from every read of its table: a traceback for ``ometer`` and every call of
the Python API, one logged every few seconds by a gateway, and a limit row was put in force as
it was (a weight of 0, an rpm of ``'abc'``). Now each read either gives records as ometer would
have written them, or is one LedgerError line naming the row and what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter._names import name_problem
from ollama_meter.budgets import Budget
from ollama_meter.errors import LedgerError
from ollama_meter.ledger import ApiKey, Ledger
from ollama_meter.pricing import PriceRule
from ollama_meter.records import Limit
from ollama_meter.testing import OllamaEmulator

HOSTILE = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, -5, 1, 10**13, "", "abc", "fortnight", "a\nb", "a b", "usd", "XX"]),
    st.sampled_from(["1,2", "a,b", "0", "1001", "-1", "nan", "Infinity", "1e3", "2026-13-01"]),
    st.sampled_from(["garbage", "2026-01-01", "*", "llama3.1:*", "\x00", "é" * 70]),
    st.text(max_size=12).filter(lambda t: "\x00" not in t),
    st.floats(allow_nan=False, allow_infinity=False),
)
BUDGET_COLUMNS = ("tenant", "department", "period", "limit_micros", "currency", "thresholds")
RULE_COLUMNS = (
    *("pattern", "currency", "input_per_1m", "per_request", "watts", "kwh_price"),
    *("effective_from", "effective_until"),
)
LIMIT_COLUMNS = ("rpm", "tpm", "concurrency", "weight")
KEY_COLUMNS = (
    *("name", "tenant", "department", "user", "allowed_users"),
    *("prefix", "key_hash", "created_at", "revoked_at"),
)
KEY_FIX = "fix or delete the row in SQL (`ometer keys create` makes a new key)"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ledger, sa.Engine]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('hand') / 'l.db'}"
    ledger = Ledger(url)
    ledger.save_budget(Budget("acme", "sales", "day", 5_000_000, "USD"))
    ledger.add_price_rule(PriceRule(pattern="llama3.1:*", currency="USD", per_request=Decimal(1)))
    ledger.set_limit(Limit("acme", "sales", rpm=5, weight=2))
    engine = sa.create_engine(url)
    yield ledger, engine
    engine.dispose()


def _edited(
    engine: sa.Engine, table: str, column: str, value: object, read: Callable[[], Any]
) -> Any:
    """``read()`` while ``table``'s one row has ``column`` set to ``value`` (by hand, in SQL)."""
    with engine.connect() as conn:
        before = conn.exec_driver_sql(f"SELECT {column} FROM {table}").scalar()
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE {table} SET {column} = ?", (value,))
    except sa.exc.IntegrityError:
        return None  # the schema refuses it: no one can store it
    try:
        return read()
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE {table} SET {column} = ?", (before,))


def _one_line(exc: LedgerError, what: str, fix: str) -> None:
    message = str(exc)
    assert message.startswith(f"{what} in the ledger cannot be read: "), message
    assert message.endswith(f"; {fix}") and "\n" not in message, message


_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_SETTINGS
@given(column=st.sampled_from(BUDGET_COLUMNS), value=HOSTILE)
def test_a_budget_row_is_read_as_a_budget_or_named(
    stored: tuple[Ledger, sa.Engine], column: str, value: object
) -> None:
    ledger, engine = stored
    try:
        budgets = _edited(engine, "budgets", column, value, ledger.budgets)
    except LedgerError as exc:
        _one_line(exc, "budget 1", "fix the row in SQL, or remove it with `ometer budget rm 1`")
        return
    assert budgets is None or [type(b) for b in budgets] == [Budget]


@_SETTINGS
@given(column=st.sampled_from(RULE_COLUMNS), value=HOSTILE)
def test_a_price_rule_row_is_read_as_a_rule_or_named(
    stored: tuple[Ledger, sa.Engine], column: str, value: object
) -> None:
    ledger, engine = stored
    try:
        rules = _edited(engine, "price_rules", column, value, ledger.price_rules)
    except LedgerError as exc:
        _one_line(
            exc, "price rule 1", "fix the row in SQL, or remove it with `ometer pricing rm 1`"
        )
        return
    assert rules is None or [type(r) for r in rules] == [PriceRule]


@_SETTINGS
@given(column=st.sampled_from(LIMIT_COLUMNS), value=HOSTILE)
def test_a_limit_row_is_put_in_force_only_as_ometer_limit_set_would_store_it(
    stored: tuple[Ledger, sa.Engine], column: str, value: object
) -> None:
    ledger, engine = stored
    try:
        limits = _edited(engine, "limits", column, value, ledger.limits)
    except LedgerError as exc:
        _one_line(exc, "the limits of acme/sales", "fix or delete the row in SQL (`ometer limit set` sets it right)")  # fmt: skip
        return
    if limits is not None:
        (limit,) = limits
        assert limit.problem() is None
        assert all(type(getattr(limit, n)) in (int, type(None)) for n in LIMIT_COLUMNS)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ledger, sa.Engine, str]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('keys') / 'l.db'}"
    ledger = Ledger(url)
    secret = ledger.create_key(name="bot", tenant="acme", department="sales", users=("bob",))[1]
    engine = sa.create_engine(url)
    yield ledger, engine, secret
    engine.dispose()


def _as_created(key: ApiKey) -> None:
    """A key as ``ometer keys create`` stores one: names by the name rules, one kind of user."""
    for value, limit in ((key.name, 64), (key.tenant, 64), (key.department, 64)):
        assert name_problem(value, limit=limit) is None, key
    for user in (key.user, *key.users):
        assert user is None or name_problem(user, limit=128) is None, key
    assert key.user is None or not key.users, key
    assert type(key.created_at) is datetime, key


@_SETTINGS
@given(column=st.sampled_from(KEY_COLUMNS), value=HOSTILE)
def test_a_key_row_is_read_as_a_key_or_named(
    keyed: tuple[Ledger, sa.Engine, str], column: str, value: object
) -> None:
    """A department with a line break or a tenant of 100 characters was charged as it was
    (a span the ledger refuses: a 500 for every call with the key), a created_at of
    ``'garbage'`` or a key_hash of ``'é'`` was a 500 on every route and a traceback from
    ``ometer keys list``. Each is now a key as created, or one line naming the row."""
    ledger, engine, secret = keyed

    def read() -> tuple[object, object]:
        found: object
        try:
            found = ledger.find_key(secret)
        except LedgerError as exc:
            _one_line(exc, "key 1", KEY_FIX)
            found = exc
        try:
            listed: object = ledger.keys()
        except LedgerError as exc:
            _one_line(exc, "key 1", KEY_FIX)
            listed = exc
        return found, listed

    read_back = _edited(engine, "api_keys", column, value, read)
    if read_back is None:
        return
    found, listed = read_back
    if isinstance(found, ApiKey):
        _as_created(found)
        assert isinstance(listed, list) and listed == [found]
    if isinstance(listed, list):
        for key in listed:
            _as_created(key)


def test_a_key_copied_in_sql_is_refused_not_charged_to_either_row(
    keyed: tuple[Ledger, sa.Engine, str],
) -> None:
    """Two live rows with one key's digest (a row copied to move the key to another
    department, the old one left live) charged calls to whichever row was read last."""
    ledger, engine, secret = keyed
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO api_keys (name, tenant, department, prefix, key_hash, created_at) "
            "SELECT name, tenant, 'support', prefix, key_hash, created_at FROM api_keys"
        )
    try:
        with pytest.raises(LedgerError) as twice:
            ledger.find_key(secret)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM api_keys WHERE id > 1")
    assert str(twice.value) == (
        "keys 1 and 2 in the ledger hold the same key; revoke all but one (`ometer keys revoke ID`)"
    )
    assert ledger.find_key(secret) is not None


@pytest.mark.parametrize(
    ("table", "edit", "message"),
    [
        (
            "budgets",
            "period = 'fortnight'",
            "budget 1 in the ledger cannot be read: period 'fortnight' is not one of day, week, "
            "month; fix the row in SQL, or remove it with `ometer budget rm 1`",
        ),
        (
            "budgets",
            "limit_micros = -5",
            "budget 1 in the ledger cannot be read: a budget's limit must be more than 0 and at "
            "most 1,000,000,000,000; fix the row in SQL, or remove it with `ometer budget rm 1`",
        ),
        (
            "budgets",
            "tenant = 'a' || char(10) || 'b'",
            "budget 1 in the ledger cannot be read: tenant name 'a\\nb' has characters other "
            "than letters, digits and . _ @ + - (and must start with a letter or digit); fix "
            "the row in SQL, or remove it with `ometer budget rm 1`",
        ),
        (
            "price_rules",
            "per_request = 'abc'",
            "price rule 1 in the ledger cannot be read: its per_request 'abc' is not a value of "
            "the column's type; fix the row in SQL, or remove it with `ometer pricing rm 1`",
        ),
    ],
)
def test_chat_says_which_row_to_fix(
    cli,  # type: ignore[no-untyped-def]
    emulator: OllamaEmulator,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    table: str,
    edit: str,
    message: str,
) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    monkeypatch.setenv("OMETER_DB_URL", url)
    assert cli("budget", "set", "--tenant", "acme", "sales", "--daily", "5").code == 0
    assert cli("pricing", "set", "llama3.1:*", "--per-request", "1").code == 0
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {table} SET {edit}")
    engine.dispose()
    done = cli("chat", "--tenant", "acme", "--dept", "sales", "-m", "llama3.1:8b", "hi")
    assert (done.code, done.stderr.strip()) == (1, f"error: {message}")


def test_another_keys_broken_row_never_stops_a_limit_on_this_key(tmp_path: Any) -> None:
    """Setting a key's limit read every key: one row broken in SQL refused them all."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    ledger = Ledger(url)
    ledger.create_key(name="old", tenant="acme", department="sales")
    ledger.create_key(name="bot", tenant="acme", department="support")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE api_keys SET created_at = 'garbage' WHERE id = 1")
    engine.dispose()
    limit = ledger.set_limit(Limit("x", None, key_id=2, rpm=5))
    assert (limit.tenant, limit.department, limit.rpm) == ("acme", "support", 5)
    with pytest.raises(LedgerError) as broken:
        ledger.set_limit(Limit("x", None, key_id=1, rpm=5))
    _one_line(broken.value, "key 1", KEY_FIX)


@pytest.fixture(scope="module")
def two_budgets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ledger, sa.Engine]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('two') / 'l.db'}"
    ledger = Ledger(url)
    ledger.save_budget(Budget("acme", "sales", "day", 5_000_000, "USD"))
    ledger.save_budget(Budget("globex", None, "month", 7_000_000, "EUR"))
    engine = sa.create_engine(url)
    yield ledger, engine
    engine.dispose()


@_SETTINGS
@given(column=st.sampled_from(BUDGET_COLUMNS), value=HOSTILE)
def test_readable_budgets_keep_every_other_row_and_name_the_one_it_cannot_read(
    two_budgets: tuple[Ledger, sa.Engine], column: str, value: object
) -> None:
    """What the dashboard reads: the row ``ometer budget status`` stops at is set aside with
    the same words, and the other budget is read as it was stored."""
    ledger, engine = two_budgets
    intact = ledger.budgets()[1]

    def both() -> tuple[Any, Any]:
        try:
            whole: Any = ledger.budgets()
        except LedgerError as exc:
            whole = str(exc)
        return whole, ledger.readable_budgets()

    with engine.begin() as conn:  # edit only budget 1: _edited sets every row
        before = conn.exec_driver_sql(f"SELECT {column} FROM budgets WHERE id = 1").scalar()
        try:
            with conn.begin_nested():
                conn.exec_driver_sql(f"UPDATE budgets SET {column} = ? WHERE id = 1", (value,))
        except sa.exc.IntegrityError:
            return
    try:
        whole, (budgets, unreadable) = both()
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE budgets SET {column} = ? WHERE id = 1", (before,))
    if isinstance(whole, list):
        assert (budgets, unreadable) == (whole, [])
        return
    assert budgets == [intact]
    (broken,) = unreadable
    assert (broken.id, broken.problem) == (1, whole)
