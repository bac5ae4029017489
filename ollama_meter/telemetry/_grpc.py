"""The OTLP/gRPC exporters, and what a gRPC collector answered them.

The SDK's exporters keep no answer: :class:`Heard` wraps their stub, so that what a collector
took but refused (its ``partial_success``) is counted and said, and an export it refused as too
large is known as such and cut (``_watch.CutToFit``), as over HTTP. A gRPC server refuses a request past its receive limit (a collector's
``max_recv_msg_size_mib``) with RESOURCE_EXHAUSTED; OTLP says that code is retryable only
when the server adds a RetryInfo (it is throttling), and the SDK retried it regardless: the
same export, refused again until the timeout, and every span in it dropped. Imported only
when a gRPC exporter is made; owns nothing else.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

from ollama_meter.telemetry._size import MAX_ANSWER

_RETRY_INFO = "google.rpc.retryinfo-bin"


class TooLarge(Exception):
    """A collector refused an export as too large, with no RetryInfo: the same export would
    be refused again. Not the SDK's ``RpcError``, so it does not send it again."""


class AnswerTooLarge(Exception):
    """A collector's answer went past :data:`MAX_ANSWER` bytes. gRPC says so with the code a
    request too large gets, RESOURCE_EXHAUSTED: but this export got there, and sent again (as
    the SDK did, or in halves) it would get there twice. It fails, as over HTTP."""


class GrpcAnswers:
    """What a gRPC collector answered the last export (one at a time), read as
    ``BoundedSession`` is over HTTP: ``last``, the answer's bytes; ``status``, the code's name
    of a failed one (0: none)."""

    refusal = "RESOURCE_EXHAUSTED"
    """How the place says an export is too large, for the log."""

    def __init__(self) -> None:
        self.last = b""
        self.status: int | str = 0

    @property
    def too_large(self) -> bool:
        return self.status == TooLarge.__name__


class _Stub:
    """The SDK's stub, its answers heard."""

    def __init__(self, stub: Any, answers: GrpcAnswers) -> None:
        self.stub = stub
        self.answers = answers

    def Export(self, request: Any, **options: Any) -> Any:  # the stub's own name
        import grpc  # type: ignore[import-untyped]

        try:
            answer = self.stub.Export(request, **options)
        except grpc.RpcError as error:
            code = error.code()
            throttled = _RETRY_INFO in dict(error.trailing_metadata() or ())
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "CLIENT" in (error.details() or ""):
                self.answers.status = AnswerTooLarge.__name__  # gRPC's own words say whose
                raise AnswerTooLarge(error.details()) from None
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED and not throttled:
                self.answers.status = TooLarge.__name__
                raise TooLarge(error.details()) from None
            self.answers.status = getattr(code, "name", str(code))
            raise
        self.answers.status = 0
        # Its partial_success, which the SDK never reads, read as over HTTP.
        self.answers.last = answer.SerializeToString() if answer is not None else b""
        return answer


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
            self._client: Any = _Stub(self._client, self._answers)

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
