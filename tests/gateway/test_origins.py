"""Web pages calling the gateway from a browser: Ollama's origin rule, applied in front of it.

In process (the rule, every answer's headers, what reaches Ollama and the ledger); the last
test opens real pages in Debian's headless Chromium, one allowed and one not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, strategies as st
from playwright import sync_api
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from ollama_meter.errors import ValidationError
from ollama_meter.gateway import GatewayOptions
from ollama_meter.gateway._attribution import (
    HEADER_DEPARTMENT,
    HEADER_KEY,
    HEADER_TENANT,
    HEADER_USER,
    TAGS_PARTS_HEADERS,
)
from ollama_meter.gateway._origins import allowed_origins, origin_check
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator, expected_reply
from tests.gateway.conftest import Gateway
from tests.gateway.test_dashboard_browser import ARGS, CHROMIUM
from tests.gateway.test_processes import OMETER

CHAT = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}
LOCAL_PAGE = "http://localhost:5173"
EVIL_PAGE = "https://evil.example"
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type",
}


@pytest.fixture
def gateway_with(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> Callable[..., Gateway]:
    return lambda **options: app_on(emulator.url, sqlite_url, **options)


def _calls(emulator: OllamaEmulator) -> list[Any]:
    return emulator.requests_to("/api/chat") + emulator.requests_to("/v1/chat/completions")


HOSTS = st.sampled_from(["localhost", "127.0.0.1", "0.0.0.0", "evil.example", "localhost.evil", "10.0.0.1"])  # fmt: skip
SCHEMES = st.sampled_from(["http", "https", "app", "file", "tauri", "chrome-extension", "ftp"])
PORTS = st.sampled_from(["", ":80", ":5173", ":65535"])


@given(scheme=SCHEMES, host=HOSTS, port=PORTS)
def test_the_default_origins_are_ollamas(scheme: str, host: str, port: str) -> None:
    """http(s) pages on localhost, 127.0.0.1 and 0.0.0.0 at any port, and Ollama's app
    schemes at any host; nothing else."""
    origin = f"{scheme}://{host}{port}"
    expected = scheme in ("app", "file", "tauri") or (
        scheme in ("http", "https") and host in ("localhost", "127.0.0.1", "0.0.0.0")
    )
    assert allowed_origins().allows(origin) is expected
    assert allowed_origins().allows(origin.upper()) is expected


def test_an_allowed_page_is_answered_and_its_preflight_too(
    gateway_with: Callable[..., Gateway], emulator: OllamaEmulator
) -> None:
    gw = gateway_with()
    pre = gw.client.options("/api/chat", headers={"Origin": LOCAL_PAGE, **PREFLIGHT})
    assert pre.status_code == 204
    assert pre.content == b""
    assert pre.headers["access-control-allow-origin"] == LOCAL_PAGE
    assert (
        pre.headers["access-control-allow-methods"]
        == "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
    )
    allowed = {h.strip().lower() for h in pre.headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "authorization", "x-ometer-key", "x-ometer-department"} <= allowed
    assert "x-ometer-tags" in allowed
    assert pre.headers["access-control-max-age"] == "43200"
    assert emulator.requests == []  # a preflight is the gateway's to answer

    answer = gw.client.post("/api/chat", json=CHAT, headers={"Origin": LOCAL_PAGE})
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == LOCAL_PAGE
    assert (
        answer.headers["access-control-expose-headers"]
        == "X-Ometer-Span-Id, X-Ometer-Ledger, X-Ometer-Refused, Retry-After, x-should-retry"
    )
    assert "Origin" in answer.headers.get_list("vary")
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.status, answer.headers["x-ometer-span-id"]) == ("ok", span.id)
    (call,) = _calls(emulator)
    assert "origin" not in call.headers  # the gateway decided; Ollama's check never sees it


def test_a_page_may_send_every_header_the_gateway_reads_a_call_by(
    gateway_with: Callable[..., Gateway], emulator: OllamaEmulator
) -> None:
    """Long tags go in parts (``X-Ometer-Tags-2`` up to ``-16``), which the gateway reads,
    but its preflight allowed ``X-Ometer-Tags`` alone: a browser refused to send a page's
    call with long tags (the parts not allowed), and the gateway never saw it. So with the
    W3C trace context a page instrumented with OpenTelemetry sends: its call was refused."""
    gw = gateway_with()
    read = [HEADER_KEY, HEADER_TENANT, HEADER_DEPARTMENT, HEADER_USER, *TAGS_PARTS_HEADERS]
    read += ["traceparent", "tracestate"]
    asked = {**PREFLIGHT, "Access-Control-Request-Headers": ",".join(["content-type", *read])}
    pre = gw.client.options("/api/chat", headers={"Origin": LOCAL_PAGE, **asked})
    assert pre.status_code == 204
    allowed = {h.strip().lower() for h in pre.headers["access-control-allow-headers"].split(",")}
    assert {"x-ometer-tags-2", "x-ometer-tags-16"} <= set(read)
    assert sorted(set(read) - allowed) == []
    assert emulator.requests == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", lambda text: {"error": text}),
        ("/v1/chat/completions", lambda text: {"error": {"message": text, "type": "invalid_request_error", "param": None, "code": None}}),
    ],
)  # fmt: skip
def test_a_page_not_allowed_is_refused_before_anything_runs(
    gateway_with: Callable[..., Gateway],
    emulator: OllamaEmulator,
    path: str,
    body: Callable[[str], Any],
) -> None:
    """A plain form post (text/plain: no preflight) from some web site: 403 in the route's
    format, nothing forwarded, no span; its preflight is refused the same way."""
    gw = gateway_with()
    payload = json.dumps({**CHAT, "messages": [{"role": "user", "content": "spend"}]})
    headers = {"Origin": EVIL_PAGE, "Content-Type": "text/plain"}
    refused = gw.client.post(path, content=payload, headers=headers)
    assert refused.status_code == 403
    text = refused.json()
    message = text["error"] if isinstance(text["error"], str) else text["error"]["message"]
    assert text == body(message)
    assert EVIL_PAGE in message and "OMETER_ORIGINS" in message
    assert "access-control-allow-origin" not in refused.headers
    pre = gw.client.options(path, headers={"Origin": EVIL_PAGE, **PREFLIGHT})
    assert pre.status_code == 403
    assert "access-control-allow-origin" not in pre.headers
    assert emulator.requests == []
    assert gw.ledger.latest(SpanFilter(), 10) == []


def test_the_administrator_allows_more_pages(
    gateway_with: Callable[..., Gateway], emulator: OllamaEmulator
) -> None:
    gw = gateway_with(origins=("https://*.corp.example", " http://intranet:8080 ", ""))
    for page, status in [
        ("https://chat.corp.example", 200),
        ("HTTPS://Chat.Corp.Example", 200),
        ("http://intranet:8080", 200),
        ("https://corp.example.evil", 403),
        ("https://evilcorp.example", 403),
        ("http://intranet:8081", 403),
        (LOCAL_PAGE, 200),  # the defaults stay
    ]:
        answer = gw.client.post("/api/chat", json=CHAT, headers={"Origin": page})
        assert answer.status_code == status, page
    assert len(_calls(emulator)) == 4
    anyone = gateway_with(origins=("*",))
    assert (
        anyone.client.post("/api/chat", json=CHAT, headers={"Origin": EVIL_PAGE}).status_code == 200
    )


def test_callers_with_no_page_are_as_before(gateway_with: Callable[..., Gateway]) -> None:
    gw = gateway_with()
    plain = gw.client.post("/api/chat", json=CHAT)
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers
    assert gw.client.options("/api/chat").status_code == 405  # no page: no preflight


@pytest.mark.parametrize(
    ("options", "host"),
    [
        ({"loopback": True}, "printer.local:11435"),  # a name anyone on the LAN answers (mDNS)
        ({"loopback": True}, "evil.internal"),
        ({"admin_token": "s3cret-admin-token-0123456789"}, "evil.example:11435"),  # --host 0.0.0.0
    ],
)
@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions", "/api/pull", "/api/delete"])
def test_a_page_is_not_the_gateways_own_by_naming_it(
    gateway_with: Callable[..., Gateway],
    emulator: OllamaEmulator,
    options: dict[str, Any],
    host: str,
    path: str,
) -> None:
    """A page whose name was pointed at the gateway (DNS rebinding: a web site's own name, or
    a .local one that any machine on the LAN may answer for) is same-origin with it, so the
    browser names the gateway's address as the page's. Taken for the gateway's own page (the
    dashboard, which calls nothing), it could spend any department's budget with a form post
    and pull or delete models (--allow-admin); it is held to the origin rule as any page."""
    gw = gateway_with(allow_admin=True, **options)
    page = f"http://{host}"
    headers = {"Host": host, "Origin": page, "Content-Type": "text/plain"}
    body = json.dumps({**CHAT, "name": "llama3.1:8b"})
    refused = gw.client.post(path, content=body, headers=headers)
    assert refused.status_code == 403, refused.text
    assert page in refused.text
    assert "access-control-allow-origin" not in refused.headers
    assert emulator.requests == []
    assert gw.ledger.latest(SpanFilter(), 10) == []


@pytest.mark.parametrize("token", [None, "s3cret-admin-token-0123456789"])
@pytest.mark.parametrize("path", ["/api/dash", "/dashboard", "/metrics"])
def test_an_allowed_page_reads_not_the_gateways_own_pages(
    gateway_with: Callable[..., Gateway], path: str, token: str | None
) -> None:
    """The dashboard, its JSON and /metrics hold everyone's spend and are no route of
    Ollama's: an allowed page's request is answered as before the origin rule, with no CORS
    header (the browser hides the answer from the page), with the token or without, and its
    preflight is not answered."""
    gw = gateway_with(admin_token=token)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    answer = gw.client.get(path, headers={"Origin": LOCAL_PAGE, **auth})
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers
    assert "access-control-expose-headers" not in answer.headers
    pre = gw.client.options(path, headers={"Origin": LOCAL_PAGE, **PREFLIGHT})
    assert pre.status_code == 405
    assert "access-control-allow-origin" not in pre.headers
    assert gw.client.get(path, headers={"Origin": EVIL_PAGE, **auth}).status_code == 403


@pytest.mark.parametrize(
    ("options", "method", "path", "status"),
    [
        ({}, "POST", "/api/nothing", 404),
        ({}, "GET", "/api/chat", 405),
        ({}, "POST", "/api/x/%2E%2E/chat", 404),  # the guard's, before any route
        ({"require_key": True}, "POST", "/api/chat", 401),
        ({"max_body_bytes": 16}, "POST", "/api/chat", 413),
        ({"loopback": True, "host": "evil.example"}, "POST", "/api/chat", 403),
    ],
)
def test_an_allowed_page_reads_the_gateways_refusals(
    gateway_with: Callable[..., Gateway],
    options: dict[str, Any],
    method: str,
    path: str,
    status: int,
) -> None:
    """A browser hides an answer with no Access-Control-Allow-Origin from the page: an
    allowed page's call refused is one it can tell why, whichever check refused it."""
    host = options.pop("host", None)
    gw = gateway_with(**options)
    headers = {"Origin": LOCAL_PAGE, **({"Host": host} if host else {})}
    answer = gw.client.request(method, path, json=CHAT, headers=headers)
    assert answer.status_code == status
    assert answer.headers["access-control-allow-origin"] == LOCAL_PAGE
    assert answer.json()["error"]


def test_an_origin_given_twice_is_refused(gateway_with: Callable[..., Gateway]) -> None:
    gw = gateway_with()
    headers = [("Origin", LOCAL_PAGE), ("Origin", EVIL_PAGE)]
    answer = gw.client.post("/api/chat", json=CHAT, headers=headers)
    assert answer.status_code == 400
    assert answer.json() == {"error": "Origin is given 2 times; give it once"}


@pytest.mark.parametrize(
    "entry", ["http://a*b*", "intranet", "http://caf\u00e9.example", "http://a\nb"]
)
def test_a_malformed_origin_setting_is_an_error_before_anything_listens(entry: str) -> None:
    with pytest.raises(ValidationError, match="OMETER_ORIGINS") as caught:
        GatewayOptions(origins=(entry,))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("entry", "origin"),
    [
        ("https://chat.example.com/app", "https://chat.example.com"),
        ("https://chat.example.com/app/index.html", "https://chat.example.com"),
        ("http://intranet:8080/?x=1", "http://intranet:8080"),
        ("https://chat.example.com#top", "https://chat.example.com"),
        ("http://intranet:*/ui", "http://intranet:*"),
    ],
)
def test_an_origin_with_a_path_is_an_error_naming_the_origin(entry: str, origin: str) -> None:
    """A browser's ``Origin`` is scheme://host[:port], nothing after: an entry copied from a
    page's address (https://chat.example.com/app) matched no page, so that page was refused
    403 with no word why."""
    with pytest.raises(ValidationError) as caught:
        GatewayOptions(origins=(entry,))
    assert str(caught.value).startswith(
        f"--origins (OMETER_ORIGINS): {entry!r} is a page's address, not its origin: give {origin}"
    ), str(caught.value)


@pytest.mark.parametrize(
    "entry",
    [
        "https://chat.example.com/",
        "http://intranet:*",
        "app://*",
        "http://[::1]",
        "http://[::1]:8080",
        "http://[fe80::1]:*",
        "https://*.corp.example:8443",
        "chrome-extension://abcdefghijklmnop",
        "HTTP://Intranet:65535",
    ],
)
def test_an_origin_with_no_path_is_taken(entry: str) -> None:
    GatewayOptions(origins=(entry,))


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("http://[::1", "its IPv6 address has no closing ]"),
        ("http://[::1:*", "its IPv6 address has no closing ]"),
        ("http://[::zz]:80", "'::zz' is no IPv6 address"),
        ("http://::1", "an IPv6 address goes in brackets: [::1]"),
        ("http://intranet:99999", "port 99999 is not 0 to 65535"),
        ("http://intranet:http", "port 'http' is not 0 to 65535"),
        ("http://intranet:", "it ends in : with no port"),
        ("http://", "it names no host"),
        ("http://:8080", "it names no host"),
        ("http://user@intranet", "'user@intranet' is no host name"),
        ("http://intra net", "'intra net' is no host name"),
        ("ht tp://intranet", "'ht tp' is no scheme"),
    ],
)
def test_every_origin_is_checked_and_the_bad_one_named(entry: str, why: str) -> None:
    """Only the shape ``scheme://`` was checked: ``http://[::1`` (no closing bracket), a port
    of 99999 or ``http://intranet:`` were taken, matched no page a browser sends, and the
    page they were meant for got 403 with no word why."""
    with pytest.raises(ValidationError) as caught:
        GatewayOptions(origins=("https://chat.example.com", entry))
    assert str(caught.value).startswith(
        f"--origins (OMETER_ORIGINS): {entry!r} is not an origin ({why}); "
    ), str(caught.value)


PAGE = b"<!doctype html><title>a page</title><p>calls the gateway from the browser"


@pytest.fixture
def page_server() -> Iterator[int]:
    """Serves one plain page on loopback: what a web app's origin is made of here."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


CALL = """async ([url, body]) => {
  try {
    const answer = await fetch(url + "/api/chat", {
      method: "POST", body,
      headers: {"Content-Type": "application/json", "X-Ometer-Department": "web"},
    });
    return {status: answer.status, span: answer.headers.get("X-Ometer-Span-Id"),
            reply: (await answer.json()).message.content};
  } catch (error) { return {failed: String(error)}; }
}"""
FORM_POST = """async ([url, body]) => {
  await fetch(url + "/api/chat", {method: "POST", mode: "no-cors", body,
                                  headers: {"Content-Type": "text/plain"}});
  return "sent";
}"""


def test_pages_in_a_real_browser(
    serve_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    page_server: int,
) -> None:
    """Chromium loads a page from localhost (allowed: its preflight, call and headers work)
    and the same page from evil.test (its call fails; its form post is sent, and refused:
    no span, nothing reached Ollama)."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("OMETER_TEST_REQUIRE_BROWSER"):
            pytest.fail("OMETER_TEST_REQUIRE_BROWSER is set but /usr/bin/chromium is missing")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    gw = serve_on(emulator.url, sqlite_url)
    body = json.dumps(CHAT)
    with sync_api.sync_playwright() as playwright:
        args = [*ARGS, "--host-resolver-rules=MAP evil.test 127.0.0.1"]
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page()
            page.goto(f"http://localhost:{page_server}/")
            allowed = page.evaluate(CALL, [gw.url, body])
            page.goto(f"http://evil.test:{page_server}/")
            refused = page.evaluate(CALL, [gw.url, body])
            assert page.evaluate(FORM_POST, [gw.url, body]) == "sent"
        finally:
            browser.close()
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.department, span.status) == ("web", "ok")
    assert allowed == {
        "status": 200,
        "span": span.id,
        "reply": expected_reply(CHAT["model"], CHAT["messages"]).content,
    }
    assert set(refused) == {"failed"}
    assert len(_calls(emulator)) == 1


def test_serve_says_which_origin_setting_is_wrong_before_listening(
    cli: Any, emulator: OllamaEmulator, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETER_ORIGINS", "https://chat.example.com,intranet")
    done = cli("serve", "--port", "0", "--upstream", emulator.url, "--db", sqlite_url)
    assert done.code == 2 and "ometer gateway on" not in done.stderr
    assert done.stderr.startswith(
        "error: --origins (OMETER_ORIGINS): 'intranet' is not scheme://host[:port]; "
    )


def test_an_allowed_page_reads_an_answer_that_ends_in_a_500() -> None:
    """A route that fails unexpectedly is Starlette's 500, sent outside every middleware: an
    allowed page must still be allowed to read it (else the browser reports a network
    error, not the 500), and the exception still reaches the server, which logs it."""

    async def failing(request: Request) -> Response:
        raise RuntimeError("a bug in a route")

    app = Starlette(
        routes=[Route("/api/chat", failing, methods=["POST"])],
        middleware=[origin_check(allowed_origins())],
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        reply = client.post("/api/chat", json=CHAT, headers={"Origin": LOCAL_PAGE})
        assert (reply.status_code, reply.text) == (500, "Internal Server Error")
        assert reply.headers["access-control-allow-origin"] == LOCAL_PAGE
        assert (
            reply.headers["access-control-expose-headers"]
            == "X-Ometer-Span-Id, X-Ometer-Ledger, X-Ometer-Refused, Retry-After, x-should-retry"
        )
        unlisted = client.post("/api/chat", json=CHAT, headers={"Origin": EVIL_PAGE})
        assert unlisted.status_code == 403  # refused before the route, as ever
        no_page = client.post("/api/chat", json=CHAT)
        assert no_page.status_code == 500
        assert "access-control-allow-origin" not in no_page.headers
    with TestClient(app) as client, pytest.raises(RuntimeError, match="a bug in a route"):
        client.post("/api/chat", json=CHAT, headers={"Origin": LOCAL_PAGE})


ASK_AS_PAGES = """
import os, sys, urllib.error, urllib.request
for origin in sys.argv[1:]:
    asked = urllib.request.Request(os.environ["OLLAMA_HOST"] + "/api/tags", headers={"Origin": origin})
    try:
        with urllib.request.urlopen(asked) as answer:
            print(answer.status, answer.headers.get("access-control-allow-origin"))
    except urllib.error.HTTPError as refused:
        print(refused.code, refused.headers.get("access-control-allow-origin"))
"""


def test_ometer_runs_gateway_allows_the_pages_serves_allows(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """``ometer run``'s short-lived gateway applied Ollama's defaults only, whatever
    ``OMETER_ORIGINS`` said: a page ``ometer serve`` answers got 403 from it. It reads the
    setting now, and takes ``--origins`` as ``serve`` does (which wins over it)."""
    env = {
        **os.environ,
        "OLLAMA_HOST": emulator.url,
        "OMETER_DB_URL": f"sqlite:///{tmp_path / 'l.db'}",
        "OMETER_ORIGINS": "https://chat.example.com",
    }
    pages = ["https://chat.example.com", "https://wiki.example.com", EVIL_PAGE, LOCAL_PAGE]

    def run(*options: str, environment: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", ASK_AS_PAGES, *pages]
        return subprocess.run(
            [*OMETER, "run", *options, "--", *command],
            env=environment,
            capture_output=True,
            text=True,
            timeout=180,  # a gateway and a Python child start: a minute on a loaded machine
            check=False,
        )

    from_env = run()
    assert from_env.returncode == 0, from_env.stderr
    assert from_env.stdout.splitlines() == [
        "200 https://chat.example.com",
        "403 None",
        "403 None",
        f"200 {LOCAL_PAGE}",
    ]
    given = run("--origins", "https://wiki.example.com")
    assert given.returncode == 0, given.stderr
    assert given.stdout.splitlines() == [
        "403 None",
        "200 https://wiki.example.com",
        "403 None",
        f"200 {LOCAL_PAGE}",
    ]
    malformed = run(environment={**env, "OMETER_ORIGINS": "https://chat.example.com,intranet"})
    assert (malformed.returncode, malformed.stdout) == (2, "")  # the program never ran
    assert malformed.stderr.startswith(
        "error: --origins (OMETER_ORIGINS): 'intranet' is not scheme://host[:port]; "
    )


@pytest.mark.parametrize(
    ("entry", "origin"),
    [
        ("https://chat.example.com:443", "https://chat.example.com"),
        ("http://intranet:80", "http://intranet"),
        ("http://intranet:08080", "http://intranet:8080"),
        ("http://[0:0:0:0:0:0:0:1]:8080", "http://[::1]:8080"),
        ("http://[FE80:0::1]", "http://[fe80::1]"),
        ("https://*.corp.example:443", "https://a.corp.example"),
    ],
)
def test_an_origin_allows_the_page_a_browser_names_by_it(entry: str, origin: str) -> None:
    """A browser's ``Origin`` leaves the scheme's own port out and writes ports and IPv6
    addresses one way: an entry written another way (``:443``, ``08080``, an IPv6 address
    in full) was taken, matched no page, and the page got 403 with no word why."""
    origins = allowed_origins([entry])
    assert origins.allows(origin)
    assert not origins.allows(origin.replace("http", "ftp", 1))
