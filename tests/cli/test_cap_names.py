"""A budget or a limit set on a name no call has used says so, with the names close to it.

``ometer budget set salse --tenant acme --monthly 100`` saved a hard cap on a department no
call names, said "budget 1: acme/salse monthly limit 100.000000 USD (hard...)", exit 0, and
the admin went home thinking sales was capped. The cap is still saved (a new department's may
well come before its first call), with a note on stderr as ``report --dept salse`` gives.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger
from tests.factories import make_span

KNOWN = [("acme", "sales"), ("acme", "support"), ("globex", "legal")]
COMMANDS = {
    "budget": ["budget", "set", "--monthly", "100"],
    "limit": ["limit", "set", "--rpm", "60"],
}
WIDER = {  # a tenant-wide cap above its departments': one no higher is said (test_caps_that_never_bind)
    "budget": ["budget", "set", "--monthly", "1000"],
    "limit": ["limit", "set", "--rpm", "600"],
}


@pytest.fixture
def db(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    at = datetime.now(UTC) - timedelta(days=2)
    Ledger(sqlite_url).record([make_span(started_at=at, tenant=t, department=d) for t, d in KNOWN])
    return sqlite_url


@pytest.mark.parametrize("what", sorted(COMMANDS))
def test_a_cap_on_a_misspelt_department_is_saved_and_said(cli, db: str, what: str) -> None:  # type: ignore[no-untyped-def]
    done = cli(*COMMANDS[what], "salse", "--tenant", "acme")
    assert done.code == 0, done.stderr
    assert "acme/salse" in done.stdout
    assert done.stderr == (
        f"note: no span has department 'salse' (did you mean 'sales'?): the {what} binds no "
        "call until one names it\n"
    )
    done = cli(*COMMANDS[what], "--tenant", "acmee")
    assert done.code == 0 and done.stderr == (
        f"note: no span has tenant 'acmee' (did you mean 'acme'?): the {what} binds no call "
        "until one names it\n"
    )


@settings(max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(what=st.sampled_from(sorted(COMMANDS)), scope=st.sampled_from(KNOWN))
def test_a_cap_on_names_calls_have_used_says_nothing_more(cli, db: str, what: str, scope) -> None:  # type: ignore[no-untyped-def]
    tenant, department = scope
    for command in (
        [*COMMANDS[what], department, "--tenant", tenant],
        [*WIDER[what], "--tenant", tenant],
    ):
        done = cli(*command)
        assert done.code == 0 and done.stderr == "", done.stderr


@pytest.mark.parametrize("what", sorted(COMMANDS))
def test_on_a_ledger_with_no_calls_yet_every_name_is_new_and_nothing_is_said(  # type: ignore[no-untyped-def]
    cli, sqlite_url: str, what: str
) -> None:
    done = cli(*COMMANDS[what], "sales", "--tenant", "acme", "--db", sqlite_url)
    assert done.code == 0 and done.stderr == "", done.stderr


def test_a_key_for_a_misspelt_department_is_made_and_said(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    """A key decides whom its calls are charged to (with ``--require-key``, whatever a header
    says): one made for ``salse`` charged every call to a department no budget or limit of
    sales binds, and nothing said so."""
    done = cli("keys", "create", "--tenant", "acme", "--dept", "salse", "--name", "bot")
    assert done.code == 0 and done.stdout.startswith("om_"), done.stderr
    assert done.stderr.splitlines()[1:] == [
        "note: no span has department 'salse' (did you mean 'sales'?): the key charges its "
        "calls to it, which no cap on another name binds"
    ]
    done = cli("keys", "create", "--tenant", "acmee", "--dept", "sales", "--name", "bot")
    assert done.stderr.splitlines()[1:] == [
        "note: no span has tenant 'acmee' (did you mean 'acme'?): the key charges its calls "
        "to it, which no cap on another name binds"
    ]


@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scope=st.sampled_from(KNOWN))
def test_a_key_for_names_calls_have_used_says_nothing_more(cli, db: str, scope) -> None:  # type: ignore[no-untyped-def]
    tenant, department = scope
    done = cli("keys", "create", "--tenant", tenant, "--dept", department, "--name", "bot")
    assert done.code == 0 and len(done.stderr.splitlines()) == 1, done.stderr
