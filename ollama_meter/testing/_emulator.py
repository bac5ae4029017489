"""An in-process HTTP server that answers like Ollama, for tests and the demo.

Owns the emulator's face: lifecycle (start, stop, a port that stays), the test
controls (recorded requests, faults, warm and cold models), and what the
listing routes report (tags, running models, model details). The wire is in
``_wire``, faults in ``_faults``, HTTP plumbing in ``_http``, the routes in
``_ollama``, ``_openai`` and ``_responses``; replies themselves come from ``_models``.

Standard library only: it must run wherever the package is installed.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ollama_meter.testing._faults import Armed, Fault, Faults
from ollama_meter.testing._http import Server
from ollama_meter.testing._models import DEFAULT_MODELS, EmulatedModel
from ollama_meter.testing._names import normalize_name
from ollama_meter.testing._routes import RecordedRequest, RoutingHandler
from ollama_meter.testing._wire import details, modified_at, stamp

KEEP_ALIVE = timedelta(minutes=5)


@dataclass
class _State:
    """Everything mutable but the faults, guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    settled: threading.Condition = field(init=False)
    """Notified under ``lock`` whenever ``in_flight`` changes."""
    requests: list[RecordedRequest] = field(default_factory=list)
    loaded: dict[str, datetime] = field(default_factory=dict)
    completions: int = 0
    hangups: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    blobs: dict[str, int] = field(default_factory=dict)
    """Blobs pushed (``POST /api/blobs/{digest}``): their digest and size."""

    def __post_init__(self) -> None:
        self.settled = threading.Condition(self.lock)


_DESCRIBING = frozenset({"/api/show", "/api/tags", "/api/ps", "/api/version", "/v1/models"})


class OllamaEmulator:
    """A local HTTP server that speaks Ollama's REST API with deterministic replies.

    Use as a context manager (or :meth:`start` / :meth:`stop`); point a client at
    :attr:`url`. Replies, token counts and durations follow :func:`expected_reply`;
    the first call to a model after start or :meth:`reset` is cold (reports the
    model's ``load_ns``), later ones are warm. ``latency`` is real wall time slept
    before the first byte of an inference reply and ``token_latency`` between
    streamed chunks (a non-streamed reply waits the same total), ``progress_latency``
    between the progress lines of a pull, a push or a create (streamed or not, the same);
    each may be changed at any time. Every request is recorded in :attr:`requests`.

    Faults armed with :meth:`inject` are consumed by inference requests (chat,
    generate, embed and their OpenAI twins) that pass validation: malformed JSON,
    a missing or unknown model get their usual error and leave faults armed.

    After :meth:`stop`, :meth:`start` listens again on the same port.
    """

    def __init__(
        self,
        models: Sequence[EmulatedModel] = DEFAULT_MODELS,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        token_latency: float = 0.0,
        progress_latency: float = 0.0,
    ) -> None:
        self.models: tuple[EmulatedModel, ...] = tuple(models)
        self._pulled = self.models  # what reset() gives back after pulls, copies and deletes
        self.host = host
        self.latency = latency
        self.token_latency = token_latency
        self.progress_latency = progress_latency
        self.hurries = 0
        """How often :meth:`hurry` was called: a pause under way when it changes ends."""
        self._port = port
        self._state = _State()
        self._faults = Faults()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> OllamaEmulator:
        """Start listening (in a daemon thread); returns self. Idempotent."""
        with self._lifecycle:
            if self._server is not None:
                return self
            server = Server((self.host, self._port), self, RoutingHandler)
            self._port = server.server_address[1]
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"ollama-emulator:{self._port}",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
            return self

    def hurry(self) -> None:
        """Let the replies under way finish at once: their pauses end, and latencies are 0
        from now on (a test that needed calls to run a while no longer waits them out)."""
        self.latency = self.token_latency = self.progress_latency = 0.0
        self.hurries += 1

    def stop(self) -> None:
        """Stop listening and cut every open connection, hanging streams included."""
        with self._lifecycle:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        server.sever_all()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> OllamaEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the emulator has no port until start() is called")
        return self._port

    @property
    def host_port(self) -> str:
        """``HOST:PORT``, the form ``OLLAMA_HOST`` takes."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, the base URL to give a client."""
        return f"http://{self.host_port}"

    # --- test controls --------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received since start or :meth:`reset`, oldest first."""
        with self._state.lock:
            return list(self._state.requests)

    @property
    def calls(self) -> list[RecordedRequest]:
        """:attr:`requests` but those that only read what the server has and runs
        (``/api/show``, ``/api/tags``, ``/api/ps``, ``/api/version``, ``/v1/models``)."""
        return [r for r in self.requests if r.path not in _DESCRIBING]

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """The recorded requests whose path is ``path`` (e.g. ``"/api/chat"``)."""
        return [r for r in self.requests if r.path == path]

    def inject(
        self,
        fault: Fault,
        times: int = 1,
        model: str | None = None,
        after_tokens: int = 3,
    ) -> None:
        """Arm ``fault`` for the next ``times`` inference requests (to ``model`` only, if given).

        ``after_tokens`` is how many token chunks :attr:`Fault.MIDSTREAM_ERROR` and
        :attr:`Fault.DROP` stream before failing. Armed faults fire in the order
        they were injected.
        """
        self._faults.inject(fault, times, model, after_tokens)

    @property
    def pending_faults(self) -> int:
        """How many armed fault firings are left."""
        return self._faults.pending

    def clear_faults(self) -> None:
        self._faults.clear()

    def reset(self) -> None:
        """Forget requests, faults, hang-ups and blobs, have the models it started with again
        (none pulled, created, copied or deleted), and unload every model (the next call is cold)."""
        self._faults.clear()
        with self._state.lock:
            self._state.requests.clear()
            self._state.blobs.clear()
            self.models = self._pulled
            self._state.loaded.clear()
            self._state.hangups = 0
            self._state.most_in_flight = self._state.in_flight

    @property
    def hangups(self) -> int:
        """Streamed replies the client hung up on before their end (what Ollama then stops)."""
        with self._state.lock:
            return self._state.hangups

    @property
    def in_flight(self) -> int:
        """Inference requests being answered right now."""
        with self._state.lock:
            return self._state.in_flight

    def wait_idle(self, seconds: float = 10.0) -> int:
        """Wait until no inference request is being answered; return how many still are.

        A call answered whole is counted out before its last bytes leave; one the emulator
        hangs up on (a fault), or whose client left, only once its handler has returned, so a
        test that asserts ``in_flight == 0`` right after such a call must wait for it here.
        """
        with self._state.settled:
            self._state.settled.wait_for(lambda: self._state.in_flight == 0, seconds)
            return self._state.in_flight

    @property
    def most_in_flight(self) -> int:
        """The most inference requests answered at once since start or :meth:`reset`."""
        with self._state.lock:
            return self._state.most_in_flight

    @property
    def blobs(self) -> dict[str, int]:
        """The blobs pushed since start (``ollama create`` with a local file): digest to size."""
        with self._state.lock:
            return dict(self._state.blobs)

    def is_loaded(self, model: str) -> bool:
        """Whether ``model`` is warm (a call to it since start or reset)."""
        with self._state.lock:
            return normalize_name(model) in self._state.loaded

    # --- used by the handler --------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._state.lock:
            self._state.requests.append(request)

    def _add_model(self, model: EmulatedModel) -> None:
        """Have ``model`` (pulled, created, copied), in place of one of the same name."""
        with self._state.lock:
            kept = [m for m in self.models if normalize_name(m.name) != normalize_name(model.name)]
            self.models = (*kept, model)

    def _remove_model(self, name: str) -> bool:
        """Delete the model ``name`` resolves to; whether there was one."""
        with self._state.lock:
            kept = tuple(m for m in self.models if normalize_name(m.name) != normalize_name(name))
            gone, self.models = len(kept) < len(self.models), kept
            return gone

    def _keep_blob(self, digest: str, size: int) -> None:
        with self._state.lock:
            self._state.blobs[digest] = size

    def _busy(self, change: int) -> None:
        with self._state.lock:
            self._state.in_flight += change
            self._state.most_in_flight = max(self._state.most_in_flight, self._state.in_flight)
            self._state.settled.notify_all()

    def _hung_up(self) -> None:
        with self._state.lock:
            self._state.hangups += 1

    def _take_fault(self, model: EmulatedModel) -> Armed | None:
        return self._faults.take(model.name)

    def _warm(self, model: EmulatedModel) -> bool:
        """Mark ``model`` loaded; True when it was cold."""
        key = normalize_name(model.name)
        with self._state.lock:
            cold = key not in self._state.loaded
            self._state.loaded[key] = datetime.now(UTC) + KEEP_ALIVE
            return cold

    def _unload(self, model: EmulatedModel) -> None:
        with self._state.lock:
            self._state.loaded.pop(normalize_name(model.name), None)

    def _next_completion_id(self) -> int:
        with self._state.lock:
            self._state.completions += 1
            return self._state.completions % 1000

    def _tags(self) -> dict[str, Any]:
        return {
            "models": [
                {
                    "name": model.name,
                    "model": model.name,
                    "modified_at": stamp(modified_at(index)),
                    "size": model.size,
                    "digest": model.digest,
                    "details": details(model),
                }
                for index, model in enumerate(self.models)
            ]
        }

    def _ps(self) -> dict[str, Any]:
        with self._state.lock:
            loaded = dict(self._state.loaded)
        running = [m for m in self.models if normalize_name(m.name) in loaded]
        running.sort(key=lambda m: loaded[normalize_name(m.name)], reverse=True)
        return {
            "models": [
                {
                    "name": model.name,
                    "model": model.name,
                    "size": model.size,
                    "digest": model.digest,
                    "details": details(model),
                    "expires_at": stamp(loaded[normalize_name(model.name)]),
                    "size_vram": model.size,
                    "context_length": model.context_length,
                }
                for model in running
            ]
        }

    def _show(self, model: EmulatedModel) -> dict[str, Any]:
        index = self.models.index(model)
        arch = model.family.replace("-", "")
        return {
            "license": "Emulated model: no license text.",
            "modelfile": (
                '# Modelfile generated by "ollama show"\n'
                "# To build a new Modelfile based on this, replace FROM with:\n"
                f"# FROM {model.name}\n\n"
                f"FROM {model.name}\n"
                f'TEMPLATE """{model_template(model)}"""\n'
                + (f'SYSTEM """{model.system}"""\n' if model.system else "")
            ),
            "parameters": f"{'num_ctx':<30} {model.context_length}",
            "template": model_template(model),
            "details": details(model),
            "model_info": {
                "general.architecture": arch,
                "general.basename": model.name.split(":", 1)[0],
                f"{arch}.context_length": model.context_length,
                f"{arch}.embedding_length": model.embedding_dim,
            },
            "capabilities": ["embedding"]
            if model.embedding
            else ["completion", *(["thinking"] if model.thinking else [])],
            "modified_at": stamp(modified_at(index)),
        } | ({"system": model.system} if model.system else {})

    def _openai_models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": model.name,
                    "object": "model",
                    "created": int(modified_at(index).timestamp()),
                    "owned_by": "library",
                }
                for index, model in enumerate(self.models)
            ],
        }


def model_template(model: EmulatedModel) -> str:
    """The ``TEMPLATE`` ``/api/show`` names: Ollama's default (``{{ .Prompt }}``), or, for a
    model whose template writes ``template_tokens`` of its own, a chat template that writes
    that many words (a token each to the emulator, as it counts them in every prompt) after
    the system prompt and each other message's content."""
    if not model.template_tokens:
        return "{{ .Prompt }}"
    return (
        "{{ if .System }}{{ .System }} {{ end }}{{ range .Messages }}"
        '{{ if ne .Role "system" }}{{ .Content }} {{ end }}{{ end }}'
        + " ".join(["x"] * model.template_tokens)
    )


def unused_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing was listening on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


_HELD: list[socket.socket] = []
"""The ports :func:`unreachable_url` gave out: bound, never listening, for the process's life."""


def unreachable_url() -> str:
    """A loopback URL that refuses connections, for "Ollama is down" tests.

    Its port stays bound here (never listening) until the process ends, so no other
    program can start listening on it between the call and the test's use of it.
    """
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    _HELD.append(held)
    return f"http://127.0.0.1:{held.getsockname()[1]}"
