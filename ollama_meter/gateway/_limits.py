"""How much one request may carry: light constants the CLI reads without loading the server."""

MAX_BODY_BYTES = 32 * 1024 * 1024
"""A request body's default limit: far above any real prompt, far below a disk-filler."""

MAX_HEADER_BYTES = 64 * 1024
"""Request line and headers; real clients send a few hundred bytes."""
