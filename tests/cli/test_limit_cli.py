"""`ometer limit ...`: limits per tenant, department and key, stored in the ledger."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger
from ollama_meter.records import Limit


def test_limit_commands(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    assert cli("db", "upgrade").code == 0  # a ledger with nothing in it (none: "no ledger at")
    assert "no limits" in cli("limit", "list").stdout
    done = cli("limit", "set", "sales", "--tenant", "acme", "--rpm", "60", "--tpm", "20000")
    assert done.code == 0, done.stderr
    assert done.stdout.strip() == "limits for acme/sales: 60 calls/min, 20,000 tokens/min"
    # Options left out keep their value.
    done = cli("limit", "set", "sales", "--tenant", "acme", "--concurrency", "2", "--weight", "3")
    assert done.stdout.strip() == (
        "limits for acme/sales: 60 calls/min, 20,000 tokens/min, 2 at once, weight 3"
    )
    assert cli("limit", "set", "--tenant", "acme", "--rpm", "600").code == 0
    key = Ledger(db).create_key(name="bot", tenant="acme", department="hr")[0]
    done = cli("limit", "set", "--key", str(key.id), "--rpm", "5")
    assert done.stdout.strip() == f"limits for key {key.id} (acme/hr): 5 calls/min"
    listed = json.loads(cli("limit", "list", "--json").stdout)
    assert [
        (
            r["tenant"],
            r["department"],
            r["key_id"],
            r["rpm"],
            r["tpm"],
            r["concurrency"],
            r["weight"],
        )
        for r in listed
    ] == [
        ("acme", None, None, 600, None, None, None),
        ("acme", "sales", None, 60, 20000, 2, 3),
        ("acme", "hr", key.id, 5, None, None, None),
    ]
    table = cli("limit", "list").stdout
    assert "acme/sales" in table and "acme (all)" in table and "counted per gateway" in table
    assert cli("limit", "rm", "--key", str(key.id)).code == 0
    assert cli("limit", "rm", "sales", "--tenant", "acme").stdout.strip() == (
        "removed the limits of acme/sales"
    )
    assert [r["department"] for r in json.loads(cli("limit", "list", "--json").stdout)] == [None]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("sales",), "give at least one of --rpm, --tpm, --concurrency, --weight"),
        (("sales", "--rpm", "0"), "--rpm must be between 1 and 1,000,000, not 0"),
        (("sales", "--weight", "1001"), "--weight must be between 1 and 1,000, not 1,001"),
        (("sa\x1bles", "--rpm", "1"), "department name"),
        (("sales", "--key", "1", "--rpm", "1"), "give either --key or a department/--tenant"),
        (("--key", "99", "--rpm", "1"), "no live key with id 99; see `ometer keys list`"),
        (("--key", "1", "--weight", "2"), "a key has no weight of its own"),
    ],
)
def test_a_bad_limit_is_one_line_saying_what_to_fix(
    cli, db: str, args: tuple[str, ...], message: str
) -> None:  # type: ignore[no-untyped-def]
    Ledger(db).create_key(name="bot", tenant="acme", department="hr")
    done = cli("limit", "set", *args)
    assert done.code != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 2
    assert cli("limit", "list", "--json").stdout.strip() == "[]"


def test_removing_what_is_not_there_says_so(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    assert cli("db", "upgrade").code == 0
    done = cli("limit", "rm", "sales", "--tenant", "acme")
    assert done.code != 0
    assert "no limits set for acme/sales; see `ometer limit list`" in done.stderr


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(
        st.tuples(st.sampled_from(["rpm", "tpm", "concurrency", "weight"]), st.integers(1, 1000)),
        min_size=1,
        max_size=8,
    )
)
def test_setting_limits_one_by_one_keeps_the_last_value_of_each(
    sqlite_url: str, values: list[tuple[str, int]]
) -> None:
    ledger = Ledger(sqlite_url)
    for name, value in values:
        ledger.set_limit(Limit("acme", "sales", **{name: value}))
    expected = dict(values)
    (stored,) = [lim for lim in ledger.limits() if lim.department == "sales"]
    assert {n: getattr(stored, n) for n in ("rpm", "tpm", "concurrency", "weight")} == {
        n: expected.get(n) for n in ("rpm", "tpm", "concurrency", "weight")
    }
    ledger.remove_limit("acme", "sales", None)
    ledger.dispose()


@pytest.mark.parametrize(
    ("upstreams", "message"),
    [
        (("http://gpu1:11434#slots=0",), "slots must be between 1 and 100,000"),
        (("http://gpu1:11434", "gpu1:11434"), "http://gpu1:11434 is given twice"),
    ],
)
def test_serve_refuses_a_bad_upstream_in_one_line(  # type: ignore[no-untyped-def]
    cli, db: str, upstreams: tuple[str, ...], message: str
) -> None:
    args = [arg for url in upstreams for arg in ("--upstream", url)]
    done = cli("serve", *args)
    assert done.code == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
