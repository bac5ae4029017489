"""The OTLP/gRPC exporters, and what a gRPC collector answered them.

The SDK's exporters keep no answer: :class:`Heard` wraps their stub, so that what a collector
took but refused (its ``partial_success``) is counted and said, and an export it refused as too
large is known as such and cut (``_watch.CutToFit``), as over HTTP. A gRPC server refuses a request past its receive limit (a collector's
``max_recv_msg_size_mib``) with RESOURCE_EXHAUSTED; OTLP says that code is retryable only
when the server adds a RetryInfo (it is throttling), and the SDK retried it regardless: the
same export, refused again until the timeout, and every span in it dropped. An export that
fails for a while is tried again here, not by the SDK (``_Stub.Export``). Imported only when
a gRPC exporter is made; owns nothing else.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any

from ollama_meter._jitter import jittered
from ollama_meter.telemetry._size import MAX_ANSWER
from ollama_meter.telemetry._tls import grpc_trouble

_RETRY_INFO = "google.rpc.retryinfo-bin"


class TooLarge(Exception):
    """A collector refused an export as too large, with no RetryInfo: the same export would
    be refused again. Not the SDK's ``RpcError``, so it does not send it again."""


class AnswerTooLarge(Exception):
    """A collector's answer went past :data:`MAX_ANSWER` bytes. gRPC says so with the code a
    request too large gets, RESOURCE_EXHAUSTED: but this export got there, and sent again (as
    the SDK did, or in halves) it would get there twice. It fails, as over HTTP."""


TRIES = 6
"""Tries of one export, as the SDK makes them: within the export timeout, the waits doubling
from a second, or as long as a throttling collector says (its RetryInfo)."""


class Failed(Exception):
    """An export that got no OK in its tries. Not the SDK's ``RpcError``: the SDK, which
    would try it again, drew each wait's jitter from the program's ``random``."""


class GrpcAnswers:
    """What a gRPC collector answered the last export (one at a time), read as
    ``BoundedSession`` is over HTTP: ``last``, the answer's bytes; ``status``, the code's name
    of a failed one (0: none)."""

    refusal = "RESOURCE_EXHAUSTED"
    """How the place says an export is too large, for the log."""

    def __init__(self) -> None:
        self.last = b""
        self.status: int | str = 0
        self.wait: float | None = None
        """Seconds a throttling collector's RetryInfo asked to wait, when longer than the
        export had left (it failed at once): the wait is ometer's to honour."""

    @property
    def too_large(self) -> bool:
        return self.status == TooLarge.__name__


class _Stub:
    """The SDK's stub, its answers heard, and an export that fails tried again (with the
    waits' jitter from ometer's own generator: ``_jitter``)."""

    def __init__(self, stub: Any, answers: GrpcAnswers, exporter: Any) -> None:
        self.stub = stub
        self.answers = answers
        self.exporter = exporter

    def Export(self, request: Any, *, timeout: float, **options: Any) -> Any:  # the stub's name
        """``request`` sent until it gets there, at most :data:`TRIES` times within
        ``timeout``; :class:`Failed`, :class:`TooLarge` or :class:`AnswerTooLarge` when not.

        As the SDK tries: again only for a code it (or OTEL_PYTHON_EXPORTER_OTLP_GRPC_
        RETRYABLE_ERROR_CODES) says passes, on a new channel after a first UNAVAILABLE (made
        whether or not a try follows), and not once the exporter shuts down."""
        import grpc  # type: ignore[import-untyped]

        exporter, deadline = self.exporter, time.monotonic() + timeout
        for attempt in range(1, TRIES + 1):
            stub = exporter._client  # a new one when the channel was made anew
            try:
                return stub.once(request, timeout=max(deadline - time.monotonic(), 0.0), **options)
            except grpc.RpcError as error:
                code, said = error.code(), f"{error.code()}: {error.details()}"
                wait = _wait(error, attempt)
                left = deadline - time.monotonic()
                # Before the next try or none: the next export's on it (gRPC's own reconnect
                # waits up to 2 minutes). Not once the exporter shut down: a channel left open.
                anew = code is grpc.StatusCode.UNAVAILABLE and attempt == 1
                if anew and exporter._channel and not exporter._shutdown:
                    exporter._channel.close()
                    exporter._initialize_channel_and_stub()
                if code in exporter._retryable_error_codes and _RETRY_INFO in _said(error):
                    self.answers.wait = wait if wait > left else None
                if code not in exporter._retryable_error_codes or attempt == TRIES or wait > left:
                    raise Failed(said) from None
                if exporter._shutdown or exporter._shutdown_in_progress.wait(wait):
                    raise Failed(f"{said}; not tried again: the exporter shuts down") from None
        raise AssertionError("unreachable")  # the last try returned or raised

    def once(self, request: Any, **options: Any) -> Any:
        import grpc

        try:
            answer = self.stub.Export(request, **options)
        except grpc.RpcError as error:
            code = error.code()
            throttled = _RETRY_INFO in _said(error)
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "CLIENT" in (error.details() or ""):
                self.answers.status = AnswerTooLarge.__name__  # gRPC's own words say whose
                raise AnswerTooLarge(error.details()) from None
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED and not throttled:
                self.answers.status = TooLarge.__name__
                raise TooLarge(error.details()) from None
            trouble = grpc_trouble(error.details() or "")
            self.answers.status = trouble or str(getattr(code, "name", code))
            raise
        self.answers.status = 0
        # Its partial_success, which the SDK never reads, read as over HTTP.
        self.answers.last = answer.SerializeToString() if answer is not None else b""
        return answer


def _wait(error: Any, attempt: int) -> float:
    """Seconds to wait before the try after ``attempt``: what a throttling collector says in
    its RetryInfo, else a second doubled at each try, jittered."""
    said = _said(error).get(_RETRY_INFO)
    if said is None:
        return jittered(2.0 ** (attempt - 1))
    from google.rpc.error_details_pb2 import RetryInfo  # type: ignore[import-untyped]

    info = RetryInfo()
    info.ParseFromString(said)
    return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)


def _said(error: Any) -> dict[str, Any]:
    """A failed call's trailing metadata (a RetryInfo, say)."""
    return dict(error.trailing_metadata() or ())


def heard(exporter: Any, answers: GrpcAnswers, **options: Any) -> Any:
    """An ``exporter`` (the SDK's OTLP/gRPC span or metric exporter) of ``options``, whose
    answers go to ``answers``, read up to :data:`MAX_ANSWER` bytes."""
    bounded = (("grpc.max_receive_message_length", MAX_ANSWER),)
    return _heard(exporter)(answers, channel_options=bounded, **options)


@functools.cache
def _heard(exporter: Any) -> Any:
    class Heard(exporter):  # type: ignore[misc]
        def __init__(self, answers: GrpcAnswers, **options: Any) -> None:
            self._answers = answers
            super().__init__(**options)

        def _initialize_channel_and_stub(self) -> None:
            """Also the channel it makes anew, after an UNAVAILABLE."""
            super()._initialize_channel_and_stub()
            self._client: Any = _Stub(self._client, self._answers, self)

    return Heard


def import_grpc_quietly() -> None:
    """Import gRPC with its C library's own log at errors only, unless set otherwise.

    It writes to stderr, outside Python's logging, a line per failed TLS handshake
    (``https://`` to a plain collector) at every try of every export: a gateway's log filled
    with them. Read once at import; the environment is put back, so that a program ``ometer
    run`` starts has its own say."""
    if "grpc" in sys.modules or "GRPC_VERBOSITY" in os.environ:
        return
    os.environ["GRPC_VERBOSITY"] = "ERROR"
    try:
        import grpc  # noqa: F401
    finally:
        os.environ.pop("GRPC_VERBOSITY", None)
