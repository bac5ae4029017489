"""The gateway's error answers, in the route's wire format (Ollama's, OpenAI's, Anthropic's)."""

from __future__ import annotations

import math

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse, Response

from ollama_meter.budgets._refusals import IN_FLIGHT_RETRY_AFTER
from ollama_meter.errors import (
    CircuitOpen,
    GatewayBudgetExceeded,
    KeyRefused,
    LedgerError,
    ServerBusy,
    UpstreamError,
)
from ollama_meter.upstream import Refusal, WireFormat, retry_after_seconds
from ollama_meter.upstream._pooled import gateway_status
from ollama_meter.upstream._recorded import REFUSED_HEADER, SPAN_HEADER

CLIENT_WAIT_S = 60
"""The longest ``Retry-After`` a client may sleep on: the OpenAI client's own cap. The
Anthropic client sleeps whatever it says (up to 49 days) unless told ``x-should-retry:
false``; past this, every answer of the gateway's says so, and the caller is told at once."""


def error_response(
    wire: WireFormat,
    status: int,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    kind: str | None = None,
) -> Response:
    """An error in the route's wire format: Ollama's ``{"error": "..."}``, or OpenAI's object
    (``kind``, the meter's error type, says which refusal it is in OpenAI's words). ``kind``
    marks the gateway's own refusal of a call: named in :data:`REFUSED_HEADER` too."""
    body = wire.error_body(status, message, kind=kind)
    if kind is not None:
        headers = {**(headers or {}), REFUSED_HEADER: kind}
    return JSONResponse(body, status_code=status, headers=_no_long_sleep(headers))


def _no_long_sleep(headers: dict[str, str] | None) -> dict[str, str] | None:
    """``headers`` with ``x-should-retry: false`` when their ``Retry-After`` is longer than
    :data:`CLIENT_WAIT_S` (an open circuit's reset, an upstream's word passed on)."""
    wait = retry_after_seconds(headers.get("Retry-After")) if headers else None
    if wait is None or wait <= CLIENT_WAIT_S:
        return headers
    return {**(headers or {}), "x-should-retry": "false"}


SDK_RETRIED = frozenset({408, 409, 429})
"""The statuses the official OpenAI and Anthropic clients send again (besides every 5xx),
twice by default, unless the answer says ``x-should-retry: false``."""


def final_unless_told(status: int, headers: MutableHeaders) -> None:
    """Mark the answer to a call the gateway sent on as final for the official clients, unless
    it says when to try again (``Retry-After``, which :func:`_no_long_sleep` bounds).

    The gateway retried its upstream itself, within the call's one span; each retry of a
    client's was a call of its own (three ``error`` spans and nine requests to Ollama for one
    ``create``, and three failed calls in a row open the model's circuit to its caller). An
    ometer client takes such an answer as final already (``UpstreamError.recorded``)."""
    retried = status >= 500 or status in SDK_RETRIED
    if retried and "Retry-After" not in headers and "x-should-retry" not in headers:
        headers["x-should-retry"] = "false"


def budget_retry(retry_after: float | None) -> dict[str, str]:
    """``x-should-retry: false`` for a budget's refusal no retry passes before its period ends:
    the OpenAI and Anthropic clients retry a 429 unless told so, Anthropic's after however long
    ``Retry-After`` says (days, for a month). One that calls in flight cause, or whose period
    ends within as long, may be sent again when ``Retry-After`` says."""
    final = retry_after is not None and retry_after > IN_FLIGHT_RETRY_AFTER
    return {"x-should-retry": "false"} if final else {}


def refusal_response(wire: WireFormat, refusal: Refusal) -> Response:
    """Ollama's own error answer, as it came; a redirect or another success is no answer: 502."""
    if refusal.status < 400:
        return error_response(wire, 502, str(refusal.error))
    headers = {"Retry-After": refusal.retry_after} if refusal.retry_after else {}
    if isinstance(refusal.error, GatewayBudgetExceeded):  # a gateway behind this one refused it
        headers.update(budget_retry(refusal.error.retry_after))
    return Response(
        refusal.body,
        status_code=refusal.status,
        media_type=refusal.content_type,
        headers=_no_long_sleep(headers or None),
    )


def failure_response(wire: WireFormat, error: UpstreamError) -> Response:
    """The answer for a call no server could take: 503 and when to retry, or 502/504."""
    if isinstance(error, CircuitOpen | ServerBusy):
        wait = str(max(1, math.ceil(error.retry_after)))  # never before it is over
        return error_response(wire, 503, str(error), headers={"Retry-After": wait})
    return error_response(wire, gateway_status(error), str(error))


def key_refused_response(wire: WireFormat, refused: KeyRefused) -> Response:
    """The answer for a call whose key, read again as its wait for a slot ended, refuses it:
    the door's (401, or 503 when the key cannot be read)."""
    status = refused.http_status
    why = {"WWW-Authenticate": "Bearer"} if status == 401 else {"Retry-After": "5"}
    return error_response(wire, status, str(refused), headers=why)


def unchecked_response(wire: WireFormat, unchecked: LedgerError) -> Response:
    """The answer for a call a covering budget could not be checked for, or that nothing can
    record (503, retry in 5 s): the gateway's own refusal, naming its span if it has one."""
    named = {SPAN_HEADER: unchecked.span_id} if unchecked.span_id else {}
    wait = {"Retry-After": "5", **named}
    return error_response(wire, 503, str(unchecked), headers=wait, kind="ledger_unavailable")
