"""A ledger's gateway keys: made, replaced, ended and found (the rows are :mod:`._keys`').

Loaded with the ledger, but :mod:`._keys` and what it reads only when a key is used: a
command that reads spans needs none of them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ollama_meter.errors import LedgerError
from ollama_meter.ledger._database import Database

if TYPE_CHECKING:
    from ollama_meter.ledger._keys import ApiKey

MAX_ROW_ID = 2**31 - 1
"""Rules, budgets and keys have 32-bit ids (PostgreSQL's INTEGER): a larger number names none."""


def row_id(value: int) -> bool:
    """Whether ``value`` can be an id at all; asking the database for another is an error there."""
    return 1 <= value <= MAX_ROW_ID


def no_live_key(key_id: int) -> LedgerError:
    return LedgerError(f"no live key with id {key_id}; see `ometer keys list`")


class KeyRing(Database):
    """The gateway keys in a ledger."""

    def create_key(
        self,
        *,
        name: str,
        tenant: str,
        department: str,
        user: str | None = None,
        users: tuple[str, ...] = (),
        expires_at: datetime | None = None,
    ) -> tuple[ApiKey, str]:
        from ollama_meter.ledger import _keys

        with self.write() as conn:
            return _keys.create_key(conn, name, tenant, department, user, users, expires_at)

    def replace_key(
        self, key_id: int, *, expires_at: datetime | None = None
    ) -> tuple[ApiKey, ApiKey, str]:
        """The live key ``key_id``, a new key in its image (names, users, limits) that expires
        at ``expires_at``, and the new key's secret. The old key lives on: :meth:`retire_key`
        it once the new one is in hand."""
        from ollama_meter.ledger import _keys

        with self.write() as conn:
            if not (row_id(key_id) and (old := _keys.live_key(conn, key_id))):
                raise no_live_key(key_id)
            return old, *_keys.make_like(conn, old, expires_at)

    def retire_key(self, key_id: int, grace: timedelta) -> ApiKey:
        """End the live key ``key_id`` ``grace`` from now (at once: revoked), never later than
        it would have ended; the key as it now is."""
        from ollama_meter.ledger import _keys

        with self.write() as conn:
            if not (row_id(key_id) and (key := _keys.retire_key(conn, key_id, grace))):
                raise no_live_key(key_id)
            return key

    def find_key(self, secret: str) -> ApiKey | None:
        """The live key ``secret`` belongs to, or None; revocation and expiry count at once."""
        from ollama_meter.ledger import _keys

        return self.reading(lambda conn: _keys.find_key(conn, secret))

    def keys(self) -> list[ApiKey]:
        from ollama_meter.ledger import _keys

        return self.reading(_keys.list_keys)

    def revoke_key(self, key_id: int) -> None:
        from ollama_meter.ledger import _keys

        with self.write() as conn:
            if not (row_id(key_id) and _keys.revoke_key(conn, key_id)):
                raise no_live_key(key_id)
