"""``ometer run``'s program environment: every variable that tells the program where Ollama is
leads through the gateway.

Only ``OLLAMA_HOST`` and ``OPENAI_BASE_URL`` were pointed at it: a script that finds Ollama by
another name (``OPENAI_API_BASE``: openai before 1.0, LangChain; ``OLLAMA_API_BASE``: LiteLLM;
``OLLAMA_BASE_URL``: Open WebUI; an app's own) called Ollama directly, unmetered, and the
summary said only "0 call(s) metered".
"""

from __future__ import annotations

from hypothesis import given, strategies as st

from ollama_meter.cli.run import program_environment

GATEWAY = "http://127.0.0.1:40123"
UPSTREAM = "http://127.0.0.1:11434"

names = st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True).filter(
    lambda name: name not in ("OLLAMA_HOST", "OPENAI_BASE_URL")
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
