"""Real `ometer chat` processes export to real OTLP receivers; decoded and checked."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.ledger import Ledger, SpanFilter, close_ledgers
from ollama_meter.records import SpanRecord
from ollama_meter.telemetry import _semconv as sc
from ollama_meter.testing import OllamaEmulator, expected_counts, unreachable_url
from tests._otlp import (
    SPAN_KIND_CLIENT,
    OtlpGrpcReceiver,
    OtlpHttpReceiver,
    metric_points,
    spans,
    wait_for,
)
from tests.factories import token_prices

OMETER = [sys.executable, "-m", "ollama_meter"]
HELLO = "hello there friend"
IN, OUT = expected_counts("llama3.1:8b", [{"role": "user", "content": HELLO}])


def ometer(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OMETER, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def env(emulator: OllamaEmulator, tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "OLLAMA_HOST": emulator.url,
        "OMETER_DB_URL": f"sqlite:///{tmp_path / 'l.db'}",
    }
    # The price rule the chats are charged by, written here: the exports are the `ometer chat`
    # processes' (an `ometer pricing set` process for it was a second start a test, 1 s of CPU).
    Ledger(env["OMETER_DB_URL"]).add_price_rules([token_prices("llama3.1:*")])
    close_ledgers()
    return env


def _logged(env: dict[str, str]) -> list[SpanRecord]:
    """The ledger's spans, newest first (as ``ometer log`` lists them), read in this process."""
    recorded = Ledger(env["OMETER_DB_URL"]).latest(SpanFilter(), 100)
    close_ledgers()
    return recorded


def chat(env: dict[str, str], *extra: str) -> dict[str, Any]:
    done = ometer(
        env,
        "chat",
        "--tenant",
        "acme",
        "--dept",
        "sales",
        "--user",
        "alice",
        "-m",
        "llama3.1:8b",
        "--json",
        *extra,
        HELLO,
    )
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    return dict(json.loads(done.stdout))


def latest(points: dict[str, list[Any]], name: str) -> list[Any]:
    """Cumulative metrics repeat in every export: keep the last point per attribute set."""
    by_attributes = {json.dumps(p.attributes, sort_keys=True): p for p in points[name]}
    return list(by_attributes.values())


def check_span(view: Any, result: dict[str, Any]) -> None:
    assert view.name == "chat llama3.1:8b" and view.kind == SPAN_KIND_CLIENT
    a = view.attributes
    assert a[sc.GEN_AI_OPERATION_NAME] == "chat" and a[sc.GEN_AI_PROVIDER_NAME] == "ollama"
    assert a[sc.GEN_AI_REQUEST_MODEL] == a[sc.GEN_AI_RESPONSE_MODEL] == "llama3.1:8b"
    assert (a[sc.GEN_AI_USAGE_INPUT_TOKENS], a[sc.GEN_AI_USAGE_OUTPUT_TOKENS]) == (IN, OUT)
    assert a[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert a[sc.SERVER_ADDRESS] == "127.0.0.1" and isinstance(a[sc.SERVER_PORT], int)
    assert (a["ometer.tenant"], a["ometer.department"], a["ometer.user"]) == (
        "acme",
        "sales",
        "alice",
    )
    assert a["ometer.cost"] == result["cost"] == f"{(IN * 1000 + OUT * 2000) / 1e6:.6f}"
    assert a["ometer.cost.tokens"] == result["cost"] and a["ometer.currency"] == "USD"
    assert a["ometer.span.id"] == result["span_id"]
    assert view.trace_id == result["trace_id"] and view.span_id == result["otel_span_id"]
    assert sc.GEN_AI_INPUT_MESSAGES not in a  # no content unless asked for
    assert view.status_code != 2
    assert view.resource["service.name"] == "ollama-meter"


def test_otlp_http_protobuf(env: dict[str, str]) -> None:
    with OtlpHttpReceiver() as rx:
        result = chat(
            {
                **env,
                "OTEL_EXPORTER_OTLP_ENDPOINT": rx.url,
                "OTEL_EXPORTER_OTLP_HEADERS": "x-team=ai%20ops",
            }
        )
        (view,) = wait_for(lambda: spans(rx), what="a span")
        check_span(view, result)
        assert {r.headers["x-team"] for r in rx.requests} == {"ai ops"}
        points = wait_for(lambda: metric_points(rx) or None, what="metrics")
    tokens = {p.attributes[sc.GEN_AI_TOKEN_TYPE]: p for p in latest(points, sc.METRIC_TOKEN_USAGE)}
    assert (tokens["input"].sum, tokens["output"].sum) == (IN, OUT)
    assert tokens["input"].explicit_bounds == tuple(float(b) for b in sc.TOKEN_BUCKETS)
    (duration,) = latest(points, sc.METRIC_OPERATION_DURATION)
    assert duration.count == 1 and duration.explicit_bounds == sc.DURATION_BUCKETS
    assert duration.attributes[sc.GEN_AI_OPERATION_NAME] == "chat"
    (ttft,) = latest(points, sc.METRIC_TIME_TO_FIRST_CHUNK)
    assert ttft.count == 1
    (cost,) = latest(points, sc.METRIC_COST)
    assert cost.value == IN * 1000 + OUT * 2000
    assert (cost.attributes["ometer.tenant"], cost.attributes["ometer.department"]) == (
        "acme",
        "sales",
    )
    (requests,) = latest(points, sc.METRIC_REQUESTS)
    assert requests.value == 1 and requests.attributes["ometer.status"] == "ok"


def test_otlp_grpc(env: dict[str, str]) -> None:
    with OtlpGrpcReceiver() as rx:
        result = chat(
            {
                **env,
                "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            }
        )
        (view,) = wait_for(lambda: spans(rx), what="a span")
        check_span(view, result)
        assert sc.METRIC_TOKEN_USAGE in wait_for(lambda: metric_points(rx) or None, what="metrics")


def test_langfuse_gets_the_trace_with_basic_auth(env: dict[str, str]) -> None:
    with OtlpHttpReceiver() as rx:
        result = chat(
            {
                **env,
                "LANGFUSE_PUBLIC_KEY": "pk-lf-1",
                "LANGFUSE_SECRET_KEY": "sk-lf-2",
                "LANGFUSE_HOST": rx.url + "/",
            }
        )
        (view,) = wait_for(lambda: spans(rx), what="a span")
        (request,) = rx.requests
    assert request.path == "/api/public/otel/v1/traces"
    assert (
        request.headers["authorization"] == "Basic " + base64.b64encode(b"pk-lf-1:sk-lf-2").decode()
    )
    check_span(view, result)
    a = view.attributes
    assert a["langfuse.observation.type"] == "generation" and a["user.id"] == "alice"
    assert json.loads(a["langfuse.observation.usage_details"]) == {
        "input": IN,
        "output": OUT,
        "total": IN + OUT,
    }
    assert json.loads(a["langfuse.observation.cost_details"]) == {"total": float(result["cost"])}
    assert set(a["langfuse.trace.tags"]) == {"tenant:acme", "department:sales"}


def test_traceloop(env: dict[str, str]) -> None:
    with OtlpHttpReceiver() as rx:
        chat({**env, "TRACELOOP_API_KEY": "tl-key", "TRACELOOP_BASE_URL": rx.url})
        wait_for(lambda: spans(rx), what="a span")
        assert rx.requests[0].path == "/v1/traces"
        assert rx.requests[0].headers["authorization"] == "Bearer tl-key"


def test_content_only_when_asked_and_errors_marked(env: dict[str, str]) -> None:
    with OtlpHttpReceiver() as rx:
        chat({**env, "OTEL_EXPORTER_OTLP_ENDPOINT": rx.url, "OMETER_CAPTURE_CONTENT": "true"})
        failed = ometer(
            {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": rx.url}, "chat", "-m", "nope:1b", "hi"
        )
        assert failed.returncode == 1
        views = wait_for(lambda: spans(rx) if len(spans(rx)) == 2 else None, what="two spans")
    ok, error = sorted(views, key=lambda v: v.start_ns)
    messages = json.loads(ok.attributes[sc.GEN_AI_INPUT_MESSAGES])
    assert messages[0]["parts"][0]["content"] == HELLO
    assert json.loads(ok.attributes[sc.GEN_AI_OUTPUT_MESSAGES])[0]["role"] == "assistant"
    assert error.status_code == 2 and error.attributes[sc.ERROR_TYPE] == "model_not_found"
    assert error.name == "chat nope:1b"
    assert [s.status for s in _logged(env)] == ["error", "ok"]


def test_unreachable_collector_costs_one_warning_and_no_call(env: dict[str, str]) -> None:
    done = ometer(
        {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": unreachable_url(), "OMETER_EXPORT_TIMEOUT": "1"},
        "chat",
        "-m",
        "llama3.1:8b",
        "hi",
    )
    assert done.returncode == 0
    lines = done.stderr.strip().splitlines()
    assert [line for line in lines if "warning" in line.lower()] == [
        line for line in lines if line.startswith("warning: could not export telemetry to")
    ]
    assert len([line for line in lines if line.startswith("warning:")]) == 1
    assert "Traceback" not in done.stderr
    assert len(_logged(env)) == 1


def test_nothing_configured_loads_no_telemetry(env: dict[str, str]) -> None:
    code = (
        "import sys\n"
        "from ollama_meter.cli import main\n"
        "sys.argv = ['ometer', 'chat', '-m', 'llama3.1:8b', 'hi']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('OTEL' if any(m.startswith('opentelemetry') for m in sys.modules) else 'NONE')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip().splitlines()[-1] == "NONE", done.stderr
