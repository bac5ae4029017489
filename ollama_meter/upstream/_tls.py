"""One TLS context per process for the clients ometer makes to Ollama.

httpx builds a context for every client it makes, loading the CA bundle each time: 30 to
140 ms of CPU (a busy machine), paid by every command that calls Ollama (three times by
``ometer chat``) and by every meter a gateway or a test makes, also for Ollama on plain
``http://``, where no TLS is spoken. Made here once, as httpx would make it (``SSL_CERT_FILE``
or ``SSL_CERT_DIR`` where set, else certifi's bundle), and made again when they change.
"""

from __future__ import annotations

import functools
import os
import ssl


def client_tls() -> ssl.SSLContext:
    """The context ``httpx.Client()`` would make now, shared by every client that asks."""
    return _made(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.cache
def _made(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    import httpx

    return httpx.create_ssl_context()  # reads the same two variables
