"""Every error ometer raises on purpose, in one tree.

    OmeterError                      base; carries a one-line, user-facing message
    ├── ConfigError                  a setting is missing or malformed (names the setting)
    ├── ValidationError              a user-supplied value is malformed (names, dates, prices)
    │   └── ClientClosed             a Python API client was used after (or closed during) a call
    ├── LedgerError                  the ledger cannot be opened, migrated or written
    ├── PricingError                 a price rule is invalid or cannot be found
    ├── BudgetError                  a budget is invalid or cannot be found
    ├── BudgetExceeded               a hard budget refuses the call      (budget_exceeded, exit 3)
    ├── KeyRefused                   a queued call's key, read again, refuses it (key_revoked)
    └── UpstreamError                a call to Ollama failed; ``error_type`` classifies it
        ├── UpstreamConnectionError  Ollama cannot be reached            (connection)
        ├── UpstreamTimeout          Ollama did not answer in time       (timeout)
        │   └── NoConnectionFree     the client's every connection is held: not sent, not retried
        ├── ModelNotFound            Ollama does not have the model      (model_not_found)
        ├── UpstreamBadRequest       Ollama refused the request (4xx)    (bad_request)
        │   └── InvalidRequest       malformed before sending (also a ValidationError, a ValueError)
        │       └── InvalidRequestType   ... where the ollama client raised a TypeError
        ├── UpstreamServerError      Ollama answered 5xx                 (upstream_5xx)
        ├── RateLimited              Ollama answered 429                 (rate_limited)
        │   └── GatewayBudgetExceeded    a gateway's hard budget refused it  (budget_exceeded, exit 3)
        ├── CircuitOpen              too many failures: failing fast     (circuit_open)
        ├── ServerBusy               every slot taken, the gateway's queue full (server_busy)
        └── StreamError              the stream broke after it started   (stream_error)

Messages say what happened and what to do; the CLI prints ``str(error)`` as is.
"""

from __future__ import annotations


class OmeterError(Exception):
    """Base of every error ometer raises on purpose."""

    exit_code: int = 1
    span_id: str | None = None
    """The span that records this refusal, when the meter wrote one (a budget's, say)."""


class ConfigError(OmeterError):
    """A setting is missing or malformed."""

    exit_code = 2


class ValidationError(OmeterError):
    """A value the user gave is malformed."""

    exit_code = 2


class ClientClosed(ValidationError):
    """The caller closed the client (``close()``, the end of its ``with``) before or while a call ran.

    The caller's doing, not Ollama's: a call it cut short ends as an abort, and no
    circuit breaker counts it.
    """


class LedgerError(OmeterError):
    """The ledger cannot be opened, migrated or written."""


class UnreadableRow(LedgerError):
    """A row of the ledger (a budget, a price rule, a limit, a key) edited by hand in SQL into
    what ometer cannot read: the ledger answers, and the row must be fixed or removed (its
    message says how); retrying changes nothing until then."""


class PricingError(OmeterError):
    """A price rule is invalid or does not exist."""


class BudgetError(OmeterError):
    """A budget is invalid or does not exist."""


class BudgetExceeded(OmeterError):
    """A hard budget has no room for this call; it was refused before reaching Ollama."""

    exit_code = 3
    error_type = "budget_exceeded"

    def __init__(
        self, message: str, *, budget_id: int, retry_after: int, narrow: str | None = None
    ) -> None:
        super().__init__(message)
        self.budget_id = budget_id
        self.retry_after = retry_after
        """Seconds until the period that refused the call ends."""
        self.narrow = narrow or message
        """The refusal as one department may read it: a budget that counts other departments
        too (a tenant's) without their spend, what a key of the gateway is told."""


class KeyRefused(OmeterError):
    """The gateway key a call was admitted with refuses it as the call leaves the queue, before
    it is sent: revoked while the call waited (``key_revoked``, 401), or not checkable again
    (``ledger_unavailable``, 503)."""

    def __init__(self, message: str, *, error_type: str, http_status: int) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.http_status = http_status


class UpstreamError(OmeterError):
    """A call to Ollama failed."""

    error_type: str = "upstream_error"
    reached_upstream: bool = True
    """False when the call never left this process: the upstream's health is not in question."""
    consumed: bool = False
    """The call failed after Ollama did its work: its whole answer had come (a success) and
    could not be taken, or the meter cut it while it was served (:class:`OverCap`). It is
    charged what it consumed (its prompt, estimated, and its time), never a silent $0."""
    recorded: bool = False
    """A metering gateway recorded the attempt as a call (its answer named its span): sent
    again, the call would be another call in that gateway's ledger, so it is never retried.
    The gateway retried its own upstream already; its caller is told when to come back."""
    taken: bool = False
    """The upstream had the attempt's whole request and did not answer in time: it has the
    call (Ollama works on it; a metering gateway records it as a call, its caller gone), so
    it is not sent again, a second call beside the first (DESIGN §10: a call counts once)."""

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after
        """Seconds the upstream asked us to wait (``Retry-After``), when it said."""


class UpstreamConnectionError(UpstreamError):
    error_type = "connection"


class UpstreamTimeout(UpstreamError):
    error_type = "timeout"


class NoConnectionFree(UpstreamTimeout):
    """Every connection the client may open to Ollama is held (by streams its program read
    part-way and kept) and none came free in time: nothing was sent. The program's own wait,
    not Ollama's silence: tried once (another try would wait as long), counted by no circuit
    breaker (three of them opened the model's, failing its calls once the streams were let go).
    """

    reached_upstream = False


class ModelNotFound(UpstreamError):
    error_type = "model_not_found"


class UpstreamBadRequest(UpstreamError):
    error_type = "bad_request"


class InvalidRequest(UpstreamBadRequest, ValidationError, ValueError):
    """The request is malformed (a wrong type, a missing model): it was never sent to Ollama.

    What Ollama would have refused with a 400, caught before the call; a user mistake
    (exit 2), and no evidence either way about the upstream's health. Also a ValueError,
    as the ``ollama`` client's refusals are (pydantic's ValidationError is one), so code
    written for that client still catches it.
    """

    reached_upstream = False


class InvalidRequestType(InvalidRequest, TypeError):
    """:class:`InvalidRequest` where the ``ollama`` client raised a TypeError (``messages=5``)."""


class UpstreamServerError(UpstreamError):
    error_type = "upstream_5xx"


class StreamError(UpstreamError):
    error_type = "stream_error"


class OverCap(StreamError):
    """Ollama streamed past the reply cap a hard budget admitted the call on: cut there.

    Ollama stops at ``num_predict``; a server that does not (an old or lying proxy)
    would otherwise spend past the budget for as long as it kept talking.
    """

    error_type = "over_cap"
    consumed = True


class RateLimited(UpstreamError):
    error_type = "rate_limited"


class GatewayBudgetExceeded(RateLimited):
    """A hard budget of the gateway in front of Ollama (``ometer serve``) refused the call: to
    the caller as :class:`BudgetExceeded` is (exit 3, never retried); Ollama was not reached."""

    error_type = "budget_exceeded"
    exit_code = 3
    reached_upstream = False


class CircuitOpen(UpstreamError):
    """The breaker for this upstream is open: the call was not attempted."""

    error_type = "circuit_open"

    retry_after: float

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, status_code=503, retry_after=retry_after)


class ServerBusy(UpstreamError):
    """Every server's slots are taken and the gateway's queue is full, or the wait was too long.

    The gateway answers 503 in Ollama's own words for a full queue, so clients that
    handle a busy Ollama handle it too.
    """

    error_type = "server_busy"

    retry_after: int

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, status_code=503, retry_after=retry_after)
