"""How much one request may carry, and how long an admin token must be: light constants the
CLI reads without loading the server."""

MAX_BODY_BYTES = 32 * 1024 * 1024
"""A request body's default limit: far above any real prompt, far below a disk-filler."""

MAX_HEADER_BYTES = 64 * 1024
"""Request line and headers; real clients send a few hundred bytes."""
MOST_BODY_BYTES = 2**30
"""The most ``--max-body-bytes`` may say (1 GiB, 7 times the largest embedding batch seen): the
gateway holds up to 8 bodies at once (``_memory``), so a larger one bounds no memory at all."""
MOST_HEADER_BYTES = 2**20
"""The most ``--max-header-bytes`` may say (1 MiB, 16 times the default)."""

MIN_SHARED_TOKEN = 16
"""The fewest characters of an admin token on a gateway others can reach: it alone opens
every tenant's spend, and a refused guess costs a caller one round trip."""


def short_token(token: str, host: str, *, loopback: bool) -> str | None:
    """What is wrong with admin token ``token`` for a gateway listening on ``host``, or None.

    On loopback only this machine can try it, so any token is taken. The message never
    quotes the token."""
    if loopback or len(token) >= MIN_SHARED_TOKEN:
        return None
    return (
        f"--admin-token (OMETER_ADMIN_TOKEN) has {len(token)} characters: on {host} anyone who "
        "reaches the port may guess one that short and read every tenant's spend; give at "
        f"least {MIN_SHARED_TOKEN} (e.g. the output of `openssl rand -hex 32`), or listen on "
        "127.0.0.1"
    )
