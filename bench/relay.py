"""A bare relay, the floor for ``bench/gateway.py --floor``: what uvicorn (uvloop, httptools) and
one pooled aiohttp client cost a call with nothing else (no Starlette, no checks, no metering).

    python bench/relay.py PORT UPSTREAM
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import uvicorn

UPSTREAM = sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:11434"
_session: list[aiohttp.ClientSession] = []


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # lifespan: nothing to start
        message = await receive()
        await send({"type": f"{message['type']}.complete"})
        return
    if not _session:
        _session.append(aiohttp.ClientSession(UPSTREAM))
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    headers = {"content-type": "application/json"}
    async with _session[0].request(scope["method"], scope["path"], data=body, headers=headers) as r:
        start = {"type": "http.response.start", "status": r.status}
        await send({**start, "headers": [(b"content-type", r.content_type.encode())]})
        async for chunk in r.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    uvicorn.run(
        app,
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
