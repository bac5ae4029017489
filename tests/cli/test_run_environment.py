"""``ometer run``'s program environment: every variable that tells the program where Ollama is
leads through the gateway.

Only ``OLLAMA_HOST`` and ``OPENAI_BASE_URL`` were pointed at it: a script that finds Ollama by
another name (``OPENAI_API_BASE``: openai before 1.0, LangChain; ``OLLAMA_API_BASE``: LiteLLM;
``OLLAMA_BASE_URL``: Open WebUI; an app's own) called Ollama directly, unmetered, and the
summary said only "0 call(s) metered".
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from ollama_meter.cli.run import program_environment
from ollama_meter.testing import OllamaEmulator, unreachable_url

GATEWAY = "http://127.0.0.1:40123"
UPSTREAM = "http://127.0.0.1:11434"

names = st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True).filter(
    lambda name: name not in ("OLLAMA_HOST", "OPENAI_BASE_URL", "NO_PROXY")
)
paths = st.sampled_from(["", "/", "/v1", "/v1/", "/api", "/v1/chat/completions"])
this_machine = st.sampled_from(["127.0.0.1", "localhost", "LOCALHOST", "[::1]", "0.0.0.0"])


@given(name=names, host=this_machine, path=paths, scheme=st.booleans())
def test_a_variable_naming_the_ollama_it_relays_to_names_the_gateway(
    name: str, host: str, path: str, scheme: bool
) -> None:
    value = f"{'http://' if scheme else ''}{host}:11434{path}"
    env = program_environment({name: value}, [UPSTREAM], GATEWAY)
    expected = f"{GATEWAY if scheme else GATEWAY.removeprefix('http://')}{path}"
    assert env[name] == expected
    assert (env["OLLAMA_HOST"], env["OPENAI_BASE_URL"]) == (GATEWAY, f"{GATEWAY}/v1")


@given(
    name=names,
    value=st.one_of(
        st.sampled_from(
            [
                "localhost",  # a database's host, say: no port, no scheme
                "127.0.0.1:11435",
                "http://127.0.0.1:8080/v1",
                "https://127.0.0.1:11434",
                "http://ollama.example:11434",
                "https://api.openai.com/v1",
                "http://user:secret@127.0.0.1:11434",
                "11434",
                "/usr/bin:/bin",
                "",
            ]
        ),
        st.text(max_size=30).filter(lambda text: "11434" not in text),
    ),
)
def test_a_variable_naming_anything_else_is_left_as_it_is(name: str, value: str) -> None:
    assert program_environment({name: value}, [UPSTREAM], GATEWAY)[name] == value


def test_each_of_several_servers_and_a_path_an_ollama_is_served_under() -> None:
    upstreams = ["http://gpu1:11434", "https://gpu2.corp:443/ollama"]
    env = program_environment(
        {
            "A": "http://GPU1:11434/v1",
            "B": "https://gpu2.corp/ollama/v1",
            "C": "https://gpu2.corp/other",
        },
        upstreams,
        GATEWAY,
    )
    assert (env["A"], env["B"], env["C"]) == (
        f"{GATEWAY}/v1",
        f"{GATEWAY}/v1",
        "https://gpu2.corp/other",
    )


def test_the_program_reaches_its_gateway_whatever_proxy_it_is_told_to_use(
    cli,  # type: ignore[no-untyped-def]
    emulator: OllamaEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A company's proxy in ``HTTP_PROXY`` (``NO_PROXY`` naming ``localhost`` or nothing):
    the program's client (httpx, requests) sent its calls to the gateway on 127.0.0.1 to the
    proxy, which cannot reach this machine's loopback: every call failed, none was metered."""
    for name in ("no_proxy", "NO_PROXY", "https_proxy", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", unreachable_url())
    monkeypatch.setenv("HTTPS_PROXY", unreachable_url())
    monkeypatch.setenv("NO_PROXY", "localhost,.corp.example")
    program = (
        "import ollama\n"
        "ollama.chat(model='llama3.1:8b', messages=[{'role': 'user', 'content': 'hi'}])\n"
    )
    url = f"sqlite:///{tmp_path / 'l.db'}"
    result = cli("run", "--dept", "sales", "--db", url, "--", sys.executable, "-c", program)
    assert result.code == 0, result.stderr
    assert "ometer: 1 call(s) metered for default/sales" in result.stderr
    assert "0 failed" in result.stderr


def test_a_proxy_setting_keeps_what_it_said_and_leads_past_the_gateway() -> None:
    env = program_environment(
        {"http_proxy": "http://proxy:3128", "no_proxy": "localhost,.corp"}, [UPSTREAM], GATEWAY
    )
    assert (env["no_proxy"], "NO_PROXY" in env) == ("localhost,.corp,127.0.0.1", False)
    env = program_environment({"HTTPS_PROXY": "http://proxy:3128"}, [UPSTREAM], GATEWAY)
    assert (env["no_proxy"], env["NO_PROXY"]) == ("127.0.0.1", "127.0.0.1")
    env = program_environment({"ALL_PROXY": "socks5://p:1", "NO_PROXY": "*"}, [UPSTREAM], GATEWAY)
    assert env["NO_PROXY"] == "*"
    assert "no_proxy" not in program_environment({"PATH": "/bin"}, [UPSTREAM], GATEWAY)
