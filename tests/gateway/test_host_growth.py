"""A loopback gateway reads each ``Host`` for an address, and remembers the last 1,024 it
read: a ``Host`` of up to the 64 KiB a request's headers may hold, a new one each request,
is no address, and none is remembered whole."""

from __future__ import annotations

from ollama_meter.gateway._hosts import is_local_host
from tests.test_long_model_names import kept_bytes

HOSTS = 200
LONG = 60_000


def test_long_hosts_are_not_remembered() -> None:
    def read() -> list[bool]:
        return [is_local_host(f"h{n:04d}" + "x" * LONG) for n in range(HOSTS)]

    assert kept_bytes(read) < HOSTS * 1_000
    assert not any(is_local_host(f"h{n:04d}" + "x" * LONG) for n in range(3))


def test_addresses_are_read_as_before() -> None:
    assert is_local_host("127.0.0.1:8080") and is_local_host("[::1]:80")
    assert not is_local_host("8.8.8.8") and not is_local_host("[2606:4700::1111]:443")
