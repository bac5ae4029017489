"""Ollama's model-management routes: ``/api/pull``, ``/api/push``, ``/api/create``,
``/api/copy`` and ``DELETE /api/delete``.

As Ollama answers them: pull, push and create stream their progress (NDJSON, a failure as an
``{"error": ...}`` line) unless ``"stream": false``, when the last progress comes whole (a
failure as a 500), paced by the emulator's ``progress_latency`` (a pull of a big model sends a
line as each part of a layer arrives); copy and delete answer an empty 200, or 404 for a model not there. What
they do changes the models the emulator has (``/api/tags``): a pull adds one of
:data:`REGISTRY`, a create or a copy adds a copy under its new name,
a delete removes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

from ollama_meter.testing._http import Handler
from ollama_meter.testing._models import DEFAULT_MODELS, THINKING_MODEL
from ollama_meter.testing._names import find_model
from ollama_meter.testing._wire import Refusal, decode_body, go_json, model_field

_Progress = list[dict[str, Any]]
REGISTRY = (*DEFAULT_MODELS, THINKING_MODEL)
"""What a pull finds (ollama.com's library, as far as the emulator knows it)."""


def _digest(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


class ManageRoutes(Handler):
    def _manage_error(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message})

    def _progress(
        self, raw: bytes, go_type: str, steps: Callable[[dict[str, Any]], _Progress]
    ) -> None:
        """Run ``steps`` (the progress, or a :class:`Refusal` once it has begun: said as
        Ollama says it, in the stream or as a 500) and answer as Ollama's handlers do."""
        try:
            body = decode_body(raw, go_type)
        except Refusal as exc:
            self._manage_error(exc.status, exc.message)
            return
        streamed = body.get("stream") is not False
        try:
            progress, failure = steps(body), None
        except Refusal as exc:
            if exc.status == 400:  # the request's own mistake: said before any progress
                self._manage_error(exc.status, exc.message)
                return
            progress, failure = [], exc.message
        if not streamed:
            self._pause(self.emulator.progress_latency * max(len(progress) - 1, 0))
            if failure is not None:
                self._manage_error(500, failure)
            else:
                self._send_json(200, progress[-1])
            return
        self._start_chunked("application/x-ndjson")
        lines = [*progress, *([{"error": failure}] if failure is not None else [])]
        for at, line in enumerate(lines):
            if at:  # read each time: a hurry() sets it to 0 for the lines left
                self._pause(self.emulator.progress_latency, streaming=True)
            self._write_chunk(go_json(line) + b"\n")
        self._end_chunked()

    def _pull(self, raw: bytes) -> None:
        def steps(body: dict[str, Any]) -> _Progress:
            name = model_field(body, "api.PullRequest")
            model = find_model(self.emulator.models, name) or find_model(REGISTRY, name)
            if model is None:
                raise Refusal(500, "pull model manifest: file does not exist")
            self.emulator._add_model(dataclasses.replace(model, name=name))
            layer = _digest(name)
            return [
                {"status": "pulling manifest"},
                {"status": f"pulling {layer[7:19]}", "digest": layer, "total": model.size},
                {
                    "status": f"pulling {layer[7:19]}",
                    "digest": layer,
                    "total": model.size,
                    "completed": model.size,
                },
                {"status": "verifying sha256 digest"},
                {"status": "writing manifest"},
                {"status": "success"},
            ]

        self._progress(raw, "api.PullRequest", steps)

    def _push(self, raw: bytes) -> None:
        def steps(body: dict[str, Any]) -> _Progress:
            name = model_field(body, "api.PushRequest")
            model = find_model(self.emulator.models, name)
            if model is None:
                raise Refusal(500, f"open {name}: no such file or directory")
            layer = _digest(name)
            return [
                {"status": "retrieving manifest"},
                {"status": f"pushing {layer[7:19]}", "digest": layer, "total": model.size},
                {"status": "pushing manifest"},
                {"status": "success"},
            ]

        self._progress(raw, "api.PushRequest", steps)

    def _create(self, raw: bytes) -> None:
        def steps(body: dict[str, Any]) -> _Progress:
            name = model_field(body, "api.CreateRequest")
            base = body.get("from")
            if not base and not body.get("files"):
                raise Refusal(400, "neither 'from' or 'files' was specified")
            model = find_model(self.emulator.models, str(base or ""))
            if model is None:
                raise Refusal(500, f"model '{base}' not found")
            system = body.get("system")
            made = dataclasses.replace(
                model, name=name, system=system if isinstance(system, str) else model.system
            )
            self.emulator._add_model(made)
            return [
                {"status": "reading model metadata"},
                {"status": f"using existing layer {_digest(model.name)}"},
                {"status": "writing manifest"},
                {"status": "success"},
            ]

        self._progress(raw, "api.CreateRequest", steps)

    def _copy(self, raw: bytes) -> None:
        try:
            body = decode_body(raw, "api.CopyRequest")
            source, destination = body.get("source"), body.get("destination")
            if not isinstance(source, str) or not isinstance(destination, str):
                raise Refusal(400, "source and destination are required")
            model = find_model(self.emulator.models, source)
            if model is None:
                raise Refusal(404, f"model '{source}' not found")
        except Refusal as exc:
            self._manage_error(exc.status, exc.message)
            return
        self.emulator._add_model(dataclasses.replace(model, name=destination))
        self._send(200, b"", "text/plain; charset=utf-8")

    def _delete(self, raw: bytes) -> None:
        try:
            name = model_field(decode_body(raw, "api.DeleteRequest"), "api.DeleteRequest")
            if not self.emulator._remove_model(name):
                raise Refusal(404, f"model '{name}' not found")
        except Refusal as exc:
            self._manage_error(exc.status, exc.message)
            return
        self._send(200, b"", "text/plain; charset=utf-8")
