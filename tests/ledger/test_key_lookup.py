"""A key is read from the ledger at every call (revocation counts at once), with statements
made once and given each call's values: however keys are made, looked up and revoked, in
any order, on either backend, each look-up finds the key a secret belongs to while it is
live, and nothing once it is revoked or for a secret no key has."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import ApiKey, Ledger
from tests.factories import opened

Step = tuple[str, int]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["make", "find", "revoke", "stranger"]), st.integers(0, 5)),
        min_size=1,
        max_size=25,
    )
)
def test_each_look_up_finds_the_live_key_of_its_secret(db_url: str, steps: list[Step]) -> None:
    with opened(db_url) as ledger:
        _run(ledger, steps)


def _run(ledger: Ledger, steps: list[Step]) -> None:
    made: list[tuple[ApiKey, str]] = []
    revoked: set[int] = set()
    for action, which in steps:
        if action == "make" or not made:
            department = f"dept{len(made) % 3}"
            made.append(ledger.create_key(name="k", tenant="acme", department=department))
            continue
        key, secret = made[which % len(made)]
        if action == "revoke" and key.id not in revoked:
            ledger.revoke_key(key.id)
            revoked.add(key.id)
        elif action == "stranger":  # one of ours in form, of no key: the same prefix, another tail
            assert (
                ledger.find_key(secret[:-4] + ("AAAA" if secret[-4:] != "AAAA" else "BBBB")) is None
            )
        for other, other_secret in made:  # every key, after every step
            found = ledger.find_key(other_secret)
            assert found == (None if other.id in revoked else other), (other, found)
