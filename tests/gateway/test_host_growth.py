"""A loopback gateway reads each ``Host`` for an address, and remembers the last 1,024 it
read: a ``Host`` of up to the 64 KiB a request's headers may hold, a new one each request,
is no address, and none is remembered whole."""

from __future__ import annotations

import socket
from unittest.mock import patch

from hypothesis import given, strategies as st

from ollama_meter.gateway._hosts import _LOCAL_SUFFIXES, _ip, _name_of, is_local_host
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


_HOSTS = st.one_of(
    st.sampled_from(["127.0.0.1:8080", "[::1]", "10.1.2.3", "8.8.8.8:80", "0.0.0.0", " "]),
    st.sampled_from(["localhost", "LOCALHOST.", "a.localhost:1", "box", "box.", "BOX:99"]),
    st.ip_addresses().map(str),
    st.from_regex(r"[a-zA-Z0-9.:\[\]-]{0,30}", fullmatch=True),
)


def _as_before(host: str, machine: str) -> bool:
    """The check as it was: the machine's name asked first, for every ``Host``."""
    if not host.strip():
        return True
    name = _name_of(host.strip()).lower().rstrip(".")
    if name and name in ("localhost", machine.lower()):
        return True
    ip = _ip(name)
    if ip is not None:
        return ip.is_loopback or ip.is_private or ip.is_unspecified
    return name.endswith(_LOCAL_SUFFIXES)


@given(host=_HOSTS, machine=st.sampled_from(["box", "8.8.8.8", "10.1.2.3", "Box"]))
def test_the_machine_name_is_asked_only_when_it_decides(host: str, machine: str) -> None:
    """Each request's ``Host`` was checked against the machine's name (a ``uname`` system
    call) before its address; now the name is asked last, with the same answer."""
    asked: list[str] = []

    def hostname() -> str:
        asked.append(machine)
        return machine

    with patch.object(socket, "gethostname", hostname):
        local = is_local_host(host)
    assert local == _as_before(host, machine), host
    # Asked only where it decides: never for a local address, the usual ``Host``.
    assert not asked or not _as_before(host, "\0"), host
