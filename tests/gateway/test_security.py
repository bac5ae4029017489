"""Issue 9, tried as an attacker would, against real ``ometer serve`` processes.

Two gateways serve the whole module: ``locked`` (keys required, admin allowed
behind an admin token, small limits) and ``open_gw`` (the defaults). Tests use
models or keys of their own, so they do not disturb each other's circuits.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.testing import Fault, OllamaEmulator
from tests._committed import after_commits
from tests.cli.test_terminal_safety import assert_only_colours
from tests.gateway.test_processes import OMETER, announced_url
from tests.reports.test_csv_safety import assert_safe

HI = [{"role": "user", "content": "hello"}]
TOKEN = "admin-s3cret"
_CLEAR = ("OMETER_", "OLLAMA_", "OTEL_", "LANGFUSE_", "TRACELOOP_")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEAR)}
    return {**env, "OMETER_TIMEZONE": "UTC", "OMETER_RETRY_BACKOFF": "0.01", **extra}


@dataclass
class Proc:
    url: str
    proc: subprocess.Popen[bytes]
    ledger: Ledger
    env: dict[str, str]
    log: Path
    keys: dict[str, str]

    def spans(self) -> list[Any]:
        return self.ledger.latest(SpanFilter(), 1000)


def launch(env: dict[str, str], upstream: str, log: Path, *options: str, host: str = "127.0.0.1") -> tuple[subprocess.Popen[bytes], str]:  # fmt: skip
    """``ometer serve --port 0``, its output appended to ``log``; it and its URL once up."""
    since = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*OMETER, "serve", "--host", host, "--port", "0", "--upstream", upstream, *options],
            env=env, stdout=out, stderr=out,
        )  # fmt: skip
    return proc, announced_url(proc, lambda: log.read_bytes()[since:].decode(errors="replace"))


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def locked(
    emulator_session: OllamaEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    folder = tmp_path_factory.mktemp("locked")
    url = f"sqlite:///{folder / 'ledger.db'}"
    ledger = Ledger(url)
    keys = {
        "plain": ledger.create_key(name="crm-bot", tenant="acme", department="sales")[1],
        "fixed": ledger.create_key(
            name="alice-app", tenant="acme", department="sales", user="alice"
        )[1],
        "listed": ledger.create_key(
            name="team-app", tenant="acme", department="support", users=("bob", "carol")
        )[1],
        "revoked": ledger.create_key(name="old", tenant="acme", department="sales")[1],
    }
    ledger.revoke_key(4)
    env = clean_env(OMETER_DB_URL=url)
    log = folder / "gateway.log"
    proc, gw = launch(
        env, emulator_session.url, log,
        "--require-key", "--allow-admin", "--admin-token", TOKEN,
        "--max-body-bytes", "65536", "--max-header-bytes", "8192",
    )  # fmt: skip
    yield Proc(gw, proc, after_commits(ledger), env, log, keys)
    stop(proc)


@pytest.fixture(scope="module")
def open_gw(
    emulator_session: OllamaEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    folder = tmp_path_factory.mktemp("open")
    url = f"sqlite:///{folder / 'ledger.db'}"
    env = clean_env(OMETER_DB_URL=url)
    log = folder / "gateway.log"
    proc, gw = launch(env, emulator_session.url, log)
    yield Proc(gw, proc, after_commits(Ledger(url)), env, log, {})
    stop(proc)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


ROUTES = [
    ("POST", "/api/chat"), ("POST", "/api/generate"), ("POST", "/api/embed"),
    ("POST", "/api/embeddings"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"), ("GET", "/api/tags"), ("GET", "/api/ps"),
    ("GET", "/api/version"), ("GET", "/v1/models"), ("GET", "/"), ("HEAD", "/"),
    ("POST", "/api/show"), ("POST", "/api/pull"), ("DELETE", "/api/delete"),
    ("POST", "/api/create"), ("POST", "/api/copy"), ("POST", "/api/push"),
    ("GET", "/api/dash"), ("GET", "/dashboard"), ("GET", "/metrics"),
]  # fmt: skip


def test_every_route_needs_a_key_and_admin_routes_the_admin_token(
    locked: Proc, emulator: OllamaEmulator
) -> None:
    before = len(locked.spans())
    with httpx.Client() as client:
        for method, path in ROUTES:
            for headers in ({}, bearer("om_forged"), bearer(locked.keys["revoked"])):
                reply = client.request(
                    method, f"{locked.url}{path}", json={"model": "llama3.1:8b"}, headers=headers
                )
                assert reply.status_code == 401, (method, path, headers)
    assert emulator.requests == []  # nothing reached Ollama
    assert len(locked.spans()) == before  # and nobody can grow the ledger without a key
    key = bearer(locked.keys["plain"])
    assert httpx.get(f"{locked.url}/api/tags", headers=key).status_code == 200
    assert httpx.get(f"{locked.url}/v1/models", headers={"X-Ometer-Key": locked.keys["plain"]}).status_code == 200  # fmt: skip
    # A key alone cannot manage models or read everyone's spend.
    for method, path in (("POST", "/api/pull"), ("DELETE", "/api/delete"), ("GET", "/metrics")):
        assert httpx.request(method, f"{locked.url}{path}", headers=key).status_code == 401
    assert emulator.requests_to("/api/pull") == []
    admin = bearer(TOKEN)
    # Never in the URL for a forwarded route: it would travel on to Ollama (a 400 saying so).
    in_url = httpx.post(f"{locked.url}/api/pull?token={TOKEN}", json={"model": "x"})
    assert in_url.status_code == 400 and "send it in a header" in in_url.json()["error"]
    pulled = httpx.post(f"{locked.url}/api/pull", json={"model": "x"}, headers=admin)
    # Forwarded: Ollama streams a pull, its failure as an error line (no such model there).
    assert pulled.status_code == 200 and "file does not exist" in pulled.text
    deleted = httpx.request("DELETE", f"{locked.url}/api/delete", json={"model": "x"}, headers=admin)  # fmt: skip
    assert deleted.status_code == 404
    assert [r.path for r in emulator.requests] == ["/api/tags", "/v1/models", "/api/pull", "/api/delete"]  # fmt: skip
    assert "authorization" not in emulator.requests[-1].headers  # never passed on


def test_metrics_need_the_admin_token_and_count_refusals_without_spans(locked: Proc) -> None:
    def refused() -> float:
        text = httpx.get(f"{locked.url}/metrics", headers=bearer(TOKEN)).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("ometer_gateway_unauthenticated_requests_total")
        )

    def lines() -> list[str]:
        return [line for line in locked.log.read_text().splitlines() if "unauthenticated" in line]

    spans = locked.ledger.count()
    assert httpx.get(f"{locked.url}/metrics").status_code == 401
    first, before = refused(), len(lines())
    began = time.monotonic()
    with httpx.Client() as client:
        for _ in range(25):
            client.post(f"{locked.url}/api/chat", json={"model": "llama3.1:8b", "messages": HI})
    took = time.monotonic() - began
    assert refused() == first + 25
    assert locked.ledger.count() == spans
    # The first refusal a process sees is logged at once (this module's, whichever test it
    # was); each line is written before its 401 goes out. A line at most every 10 s: the
    # flood's share of the log is what its own duration allows, not a line per refusal.
    assert before >= 1
    assert len(lines()) - before <= 1 + took // 10, (took, lines()[before:])


def test_refusals_are_logged_a_line_per_interval_saying_how_many(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from ollama_meter.gateway._access import Unauthenticated

    now = [1000.0]
    refusals = Unauthenticated(interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="ollama_meter.gateway"):
        for _ in range(25):
            refusals.refused("/api/chat", "10.0.0.7")
        now[0] += 9.5
        refusals.refused("/api/tags", "10.0.0.8")
        now[0] += 0.5
        refusals.refused("/metrics", "10.0.0.9")
    assert [r.getMessage() for r in caplog.records] == [
        "refused 1 unauthenticated request(s) in the last 10 s (latest: /api/chat from 10.0.0.7)",
        "refused 26 unauthenticated request(s) in the last 10 s (latest: /metrics from 10.0.0.9)",
    ]
    assert (refusals.total, refusals.by_route) == (
        27,
        {"/api/chat": 25, "/api/tags": 1, "/metrics": 1},
    )


def test_keys_vouch_for_users_and_header_users_are_marked_unverified(locked: Proc) -> None:
    def chat(key: str, user: str | None) -> httpx.Response:
        headers = {**bearer(locked.keys[key]), **({"X-Ometer-User": user} if user else {})}
        body = {"model": "llama3.1:8b", "messages": HI, "stream": False}
        return httpx.post(f"{locked.url}/api/chat", json=body, headers=headers)

    assert chat("listed", "carol").status_code == 200
    forbidden = chat("listed", "mallory")
    assert forbidden.status_code == 403 and "bob, carol" in forbidden.json()["error"]
    assert chat("fixed", "mallory").status_code == 200
    assert chat("plain", "dave").status_code == 200
    dave, alice, mallory, carol = locked.ledger.latest(SpanFilter(department=None), 4)
    assert (carol.user, carol.department, carol.tags) == ("carol", "support", {})
    assert (mallory.status, mallory.error_type, mallory.http_status) == ("error", "forbidden", 403)
    assert (alice.user, alice.tags) == ("alice", {})  # the key's user, whatever the header said
    assert (dave.user, dave.tags) == ("dave", {"user_verified": "false"})


def test_listening_beyond_loopback_needs_a_key_a_token_or_insecure_open(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    env = clean_env(OMETER_DB_URL=f"sqlite:///{tmp_path / 'l.db'}")
    refused = subprocess.run(
        [*OMETER, "serve", "--host", "0.0.0.0", "--upstream", emulator.url],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "not listening on 0.0.0.0" in refused.stderr and "--insecure-open" in refused.stderr
    proc, url = launch(env, emulator.url, tmp_path / "gw.log", "--insecure-open", host="0.0.0.0")
    # Started for the network: any name the network calls it by (DNS rebinding is a loopback risk).
    named = raw(url, b"GET /api/tags HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n\r\n")
    stop(proc)
    assert named.startswith(b"HTTP/1.1 200 OK")
    assert "warning: listening on 0.0.0.0 with no key" in (tmp_path / "gw.log").read_text()


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        (
            "127.0.0.1",
            "the port is in use (another gateway, or Ollama itself?); choose another --port",
        ),
        ("192.0.2.1", "no network interface of this machine has that address"),
        ("nosuch.invalid", ""),
    ],
)
def test_a_port_it_cannot_listen_on_is_one_line_before_any_banner(
    cli: Any, emulator: OllamaEmulator, tmp_path: Path, host: str, reason: str
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = cli(
            "serve", "--host", host, "--port", str(port), "--insecure-open",
            "--upstream", emulator.url, "--db", f"sqlite:///{tmp_path / 'l.db'}",
        )  # fmt: skip
    assert done.code == 2 and "ometer gateway on" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot listen on {host}:{port}: {reason}")


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("999.1.1.1", "999.1.1.1 is no IP address, nor a name this machine resolves"),
        ("nosuch.invalid", "nosuch.invalid is no IP address, nor a name this machine resolves"),
        ("[::zz]", "::zz is no IP address, nor a name this machine resolves"),
        ("192.0.2.1", "no network interface of this machine has that address"),
    ],
)
@pytest.mark.parametrize("guard", [[], ["--admin-token", "s3cret"], ["--require-key"]])
def test_a_host_it_cannot_listen_on_is_said_before_what_listening_there_would_need(
    cli: Any, tmp_path: Path, host: str, reason: str, guard: list[str]
) -> None:
    """``--host 999.1.1.1`` (no address) was told to add a key to listen beyond loopback:
    with the key, it failed again for the address. The address is checked first."""
    done = cli(
        "serve", "--host", host, "--port", "11999", *guard,
        "--upstream", "http://127.0.0.1:9", "--db", f"sqlite:///{tmp_path / 'l.db'}",
    )  # fmt: skip
    assert done.code == 2 and "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot listen on {host}:11999: {reason}"), line
    assert "127.0.0.1" in line and "0.0.0.0" in line, line


def raw(url: str, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send bytes as they are on one connection; what came back until the server closed it."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_sizes_are_limited_413_and_431(locked: Proc) -> None:
    key = bearer(locked.keys["plain"])
    big = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "x" * 70_000}]}
    too_big = httpx.post(f"{locked.url}/api/chat", json=big, headers=key)
    assert too_big.status_code == 413 and "65536 bytes" in too_big.json()["error"]
    assert locked.spans()[0].http_status == 413
    headers = httpx.post(f"{locked.url}/api/chat", json=HI, headers={**key, "X-Big": "a" * 9000})
    assert headers.status_code == 431 and "8192 bytes" in headers.json()["error"]
    # 50 MB announced: refused at once, nothing read past the limit.
    announced = raw(
        locked.url,
        f"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {locked.keys['plain']}\r\n"
        "Content-Type: application/json\r\nContent-Length: 52428800\r\n\r\n".encode()
        + b'{"model": "x", "messages": [',
    )
    assert announced.startswith(b"HTTP/1.1 413 ")
    # A 50 MB header: the connection is cut long before it has all been sent.
    sent = 0
    parts = urlsplit(locked.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
        with pytest.raises(OSError):  # noqa: PT012
            while sent < 50 * 2**20:
                sock.sendall(b"a" * 2**20)
                sent += 2**20
            sock.sendall(b"\r\n\r\n")
            assert sock.recv(65536) == b"", "the server read all of it"
    assert sent < 8 * 2**20
    assert httpx.get(f"{locked.url}/healthz").status_code == 200


def test_a_get_body_is_never_forwarded(open_gw: Proc, emulator: OllamaEmulator) -> None:
    hidden = (
        b'POST /api/pull HTTP/1.1\r\nHost: ollama\r\nContent-Length: 16\r\n\r\n{"model":"evil"}'
    )
    answer = raw(
        open_gw.url,
        b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(hidden)
        + hidden
        + b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    assert answer.count(b"HTTP/1.1 200 OK") == 2 and b'"version"' in answer
    assert [(r.method, r.path, r.body) for r in emulator.requests] == [
        ("GET", "/api/tags", None),
        ("GET", "/api/version", None),
    ]
    assert "content-length" not in emulator.requests[0].headers


def test_chunked_trailers_never_set_attribution(open_gw: Proc, emulator: OllamaEmulator) -> None:
    body = json.dumps({"model": "llama3.1:8b", "messages": HI, "stream": False}).encode()
    answer = raw(
        open_gw.url,
        b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
        b"Trailer: X-Ometer-Department, X-Ometer-Tenant\r\n"
        b"X-Ometer-Department: support\r\nConnection: close\r\n\r\n"
        + b"%x\r\n" % len(body) + body + b"\r\n"
        + b"0\r\nX-Ometer-Department: stolen\r\nX-Ometer-Tenant: evil\r\n\r\n",
    )  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 200 OK")
    (span,) = open_gw.ledger.latest(SpanFilter(department="support"), 10)
    assert (span.tenant, span.department, span.status) == ("default", "support", "ok")
    assert open_gw.ledger.latest(SpanFilter(department="stolen"), 10) == []


def test_one_tenants_broken_model_never_fails_the_others(
    open_gw: Proc, emulator: OllamaEmulator
) -> None:
    def chat(model: str) -> httpx.Response:
        body = {"model": model, "messages": HI, "stream": False}
        return httpx.post(f"{open_gw.url}/api/chat", json=body, timeout=30)

    emulator.inject(Fault.HTTP_503, times=100, model="qwen2.5:7b")
    assert chat("qwen2.5:7b").status_code == 503
    # One call is one failure, however often it was retried: the next still reaches Ollama.
    assert len(emulator.requests_to("/api/chat")) == 3
    assert chat("qwen2.5:7b").status_code == 503
    assert chat("qwen2.5:7b").status_code == 503
    opened = chat("qwen2.5:7b")
    # The failures are one caller's: its own circuit for the model opens (test_callers_circuits.py).
    assert opened.status_code == 503 and "other callers of the model are not affected" in opened.json()["error"]  # fmt: skip
    assert len(emulator.requests_to("/api/chat")) == 9  # the fourth call was not sent
    assert int(opened.headers["retry-after"]) > 0
    assert chat("llama3.1:8b").status_code == 200  # another model, untouched
    qwen = [s for s in open_gw.spans() if s.request_model == "qwen2.5:7b"]
    assert [s.error_type for s in qwen[:4]] == ["circuit_open", *["upstream_5xx"] * 3]


def test_hostile_names_through_the_gateway_stay_text_in_reports(  # type: ignore[no-untyped-def]
    open_gw: Proc, emulator: OllamaEmulator, tmp_path: Path, cli, monkeypatch
) -> None:
    names = [
        "[link=http://evil.example/]CLICK[/link]",
        "x\x1b[2J\x1b]8;;http://e/\x07y",
        "=1+1\r=2",
    ]
    for name in names:
        httpx.post(f"{open_gw.url}/api/chat", json={"model": name, "messages": HI, "stream": False})
    env = {**open_gw.env, "FORCE_COLOR": "1", "COLUMNS": "80"}
    log = subprocess.run([*OMETER, "log", "--limit", "50"], env=env, capture_output=True,
                         text=True, timeout=60, check=True)  # fmt: skip
    assert_only_colours(log.stdout)
    monkeypatch.setenv("OMETER_DB_URL", open_gw.env["OMETER_DB_URL"])
    assert (
        cli("report", "--by", "model", "--format", "csv", "--out", str(tmp_path / "r.csv")).code
        == 0
    )
    with (tmp_path / "r.csv").open(encoding="utf-8", newline="") as file:
        rows = assert_safe(file.read())
    # stored with its carriage return as U+FFFD (a label is printable), counted under its one
    # name (``counted_model``: ``:latest`` when untagged), then neutralised
    assert "'=1+1\ufffd=2:latest" in {row[0] for row in rows}


def test_key_names_follow_the_name_rules(cli, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    for bad in ("crm bot", "x\n", "", "-flag"):
        done = cli("keys", "create", "--name", bad, "--db", sqlite_url)
        assert done.code == 2 and "key name" in done.stderr, bad
    both = cli("keys", "create", "--user", "a", "--allow-user", "b", "--db", sqlite_url)
    assert both.code == 2 and "either one fixed user or a list" in both.stderr
    made = cli("keys", "create", "--name", "team", "--allow-user", "bob", "--allow-user", "carol",
               "--db", sqlite_url)  # fmt: skip
    assert made.code == 0 and "users bob, carol" in made.stderr
    (listed,) = json.loads(cli("keys", "list", "--json", "--db", sqlite_url).stdout)
    assert (listed["user"], listed["allowed_users"]) == (None, ["bob", "carol"])


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:{port}", True), ("localhost:{port}", True), ("LOCALHOST", True),
        ("[::1]:{port}", True), ("gw.localhost:{port}", True), ("127.0.0.2", True),
        ("evil.example:{port}", False), ("evil.example", False), ("8.8.8.8:{port}", False),
        ("localhost.evil.example", False), ("[::1", None),
        ("localhost:80@evil.example", None), ("[::1]evil.example", None), ("localhost:x", None),
    ],
)  # fmt: skip
def test_a_loopback_gateway_answers_only_requests_named_for_this_machine(
    open_gw: Proc, host: str, allowed: bool | None
) -> None:
    """DNS rebinding: a web page whose name now points at 127.0.0.1 is same-origin with the
    gateway and could read the dashboard or, with --allow-admin, pull models. Ollama refuses a
    Host it does not know as local when it listens on loopback; in front of it, so does the
    gateway (it sends Ollama its own Host, so Ollama's check cannot see the caller's)."""
    port = urlsplit(open_gw.url).port
    for target in ("/api/dash", "/api/tags", "/healthz"):
        answer = raw(
            open_gw.url,
            f"GET {target} HTTP/1.1\r\nHost: {host.format(port=port)}\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        status = answer.split(b"\r\n", 1)[0]
        if allowed:
            assert status == b"HTTP/1.1 200 OK", (target, answer[:300])
        else:  # None: no host at all (a user, a bad port, a bracket left open), on any gateway
            expected = b"HTTP/1.1 400 Bad Request" if allowed is None else b"HTTP/1.1 403 Forbidden"
            assert status == expected, (target, answer[:300])
            (error,) = json.loads(answer.split(b"\r\n\r\n", 1)[1]).values()
            said = "is not a host:" if allowed is None else "is not a name of this machine"
            assert said in error and "\n" not in error


def test_a_key_in_x_ometer_key_is_read_beside_an_openai_clients_own_bearer(locked: Proc) -> None:
    """The OpenAI client always sends its ``api_key`` as a bearer (often "ollama"): a key
    sent in X-Ometer-Key alongside (``default_headers``) is the one that counts."""
    headers = {"X-Ometer-Key": locked.keys["plain"], "Authorization": "Bearer ollama"}
    assert httpx.get(f"{locked.url}/api/tags", headers=headers).status_code == 200
    assert httpx.get(f"{locked.url}/v1/models", headers=headers).status_code == 200
    blank = {"X-Ometer-Key": "", "Authorization": f"Bearer {locked.keys['plain']}"}
    assert httpx.get(f"{locked.url}/api/tags", headers=blank).status_code == 200


@pytest.mark.parametrize(
    ("target", "sent"),
    [
        ("POST /api/pull", ["Authorization: Bearer {token}", "Authorization: Bearer {key}"]),
        ("POST /api/pull", ["Authorization: Bearer {key}", "Authorization: Bearer {token}"]),
        ("GET /api/tags", ["Authorization: Bearer {key}", "Authorization: Bearer om_forged"]),
        ("GET /api/tags", ["X-Ometer-Key: {key}", "X-Ometer-Key: om_forged"]),
        ("GET /api/tags", ["X-Ometer-Key: om_forged", "X-Ometer-Key: {key}"]),
        ("GET /api/dash", ["Authorization: Bearer {token}", "Authorization: Bearer x"]),
    ],
)
def test_a_key_or_token_sent_twice_is_refused_not_picked_from(
    locked: Proc, target: str, sent: list[str]
) -> None:
    """Two credentials in one request: whichever the gateway read, a proxy in front of it may
    have checked the other. Neither is taken."""
    head = "".join(line.format(token=TOKEN, key=locked.keys["plain"]) + "\r\n" for line in sent)
    answer = raw(
        locked.url,
        f"{target} HTTP/1.1\r\nHost: localhost\r\n{head}Content-Type: application/json\r\n"
        'Content-Length: 17\r\nConnection: close\r\n\r\n{"model":"m:1b"}\n'.encode(),
    )
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:300]


@pytest.mark.parametrize(
    "target",
    [
        "/v1/models/../../api/pull",
        "/v1/models/%2e%2e/%2E%2E/api/pull",
        "/v1/models/..%2F..%2Fapi%2Fpull",
        "/v1/models/x/./../../../api/create",
        "/v1/models/llama3.1:8b/../../../api/push",
        "/api/show%0A",
    ],
)
def test_a_dot_segment_never_turns_a_pass_through_into_model_management(
    open_gw: Proc, emulator: OllamaEmulator, target: str
) -> None:
    """``/v1/models/{model}`` takes the rest of the path as the name; the HTTP client that
    forwards it resolves ``..``, so ``/v1/models/../../api/pull`` reached Ollama as /api/pull
    on a gateway without --allow-admin (and with a key alone behind an admin token)."""
    answer = raw(
        open_gw.url,
        f"POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        'Content-Length: 17\r\nConnection: close\r\n\r\n{"model":"m:1b"}\n'.encode(),
    )
    assert not [r.path for r in emulator.requests if not r.path.startswith("/v1/models/")]
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:300]
    (error,) = json.loads(answer.split(b"\r\n\r\n", 1)[1]).values()
    assert "not a route this gateway serves" in str(error) and "\n" not in str(error)


@pytest.mark.parametrize(
    "target",
    ["/v1/models/%252e%252e/%252e%252e/api/pull", "/v1/models/.%252E/.%252e/api/pull"],
)
def test_a_dot_encoded_twice_reaches_ollama_as_the_name_it_spells(
    open_gw: Proc, emulator: OllamaEmulator, target: str
) -> None:
    """Decoded once by the gateway, ``%2e%2e`` is no dot segment, but the forwarding client
    decoded it again and resolved it: the path is now sent as it was received."""
    raw(
        open_gw.url,
        f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode(),
    )
    assert [r.path for r in emulator.requests] == [target]


def test_malformed_requests_cannot_flood_the_log(
    serve_on: Any,
    emulator: OllamaEmulator,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvicorn logged a warning for every request it could not parse, and two for every
    ``Upgrade: websocket``, so anyone who reaches the port wrote the gateway's log at the
    rate they open connections; refusals of its own are a line every 10 s at most, and an
    upgrade offered is read on as HTTP/1.1 with no line at all."""
    from ollama_meter._logging import Throttled
    from ollama_meter.gateway import _server

    # The throttle is the process's: a test that logged a bad request in the last 10 s
    # (the 431 in test_requests.py) would have silenced this one's first line.
    fresh = Throttled(logging.getLogger("uvicorn.error"))
    monkeypatch.setattr(_server._ThrottledWarnings, "_throttle", fresh)
    gw = serve_on(emulator.url, sqlite_url)
    upgrade = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n"  # fmt: skip
    uvicorn_log = logging.getLogger("uvicorn.error")  # uvicorn's own: it does not propagate
    uvicorn_log.addHandler(caplog.handler)
    with caplog.at_level(logging.WARNING):
        for _ in range(40):
            assert raw(gw.url, b"GET /api/tags HTTP/1.1\r\nHost: local\x01host\r\n\r\n").startswith(
                b"HTTP/1.1 400 "
            )
            assert raw(gw.url, upgrade).startswith(b"HTTP/1.1 200 OK")
    uvicorn_log.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    said = [line for line in lines if line.startswith("Invalid HTTP request received.")]
    assert 1 <= len(said) <= 3, lines  # a line at most every 10 s, whatever the flood
    # An upgrade offered is no mistake: ignored, as RFC 9110 lets a server (test_upgrade_offers)
    assert not [line for line in lines if "upgrade" in line.lower()], lines
    assert len(lines) <= 9, lines


def test_answers_ended_early_are_a_line_every_10_s_and_errors_with_a_traceback_each_theirs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream that keeps breaking off its pass-through answers made uvicorn log an ERROR
    line per answer; an exception in the app keeps its own line and traceback."""
    from ollama_meter._logging import Throttled
    from ollama_meter.gateway import _server

    logger = logging.getLogger("test.uvicorn.error")
    fresh = Throttled(logger, clock=lambda: 0.0)  # no time passes: one line, then counted
    monkeypatch.setattr(_server._ThrottledWarnings, "_throttle", fresh)
    wrapped = _server._ThrottledWarnings(logger)
    with caplog.at_level(logging.ERROR, logger="test.uvicorn.error"):
        for _ in range(50):
            wrapped.error("ASGI callable returned without completing response.")
        for _ in range(2):
            try:
                raise RuntimeError("a bug")
            except RuntimeError as exc:
                wrapped.error("Exception in ASGI application\n", exc_info=exc)
    lines = [(r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert lines == [
        ("ASGI callable returned without completing response.", False),
        ("Exception in ASGI application\n", True),
        ("Exception in ASGI application\n", True),
    ]
    assert fresh.counts == {"ASGI callable returned without completing response.": 50}
