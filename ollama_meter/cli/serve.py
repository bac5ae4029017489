"""``ometer serve``: the metering gateway from the terminal."""

import dataclasses
import os
from typing import TYPE_CHECKING, Annotated

import typer

from ollama_meter._runtime import serving
from ollama_meter.cli._common import (
    DbOption,
    OriginsOption,
    ledger_for,
    settings,
)
from ollama_meter.cli._console import err, named
from ollama_meter.cli._waiting import open_when_up
from ollama_meter.errors import ValidationError
from ollama_meter.gateway._limits import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    MOST_BODY_BYTES,
    MOST_HEADER_BYTES,
    short_token,
)
from ollama_meter.records._limit import MAX_QUEUE, MAX_SLOTS

if TYPE_CHECKING:
    from ollama_meter.config import Settings


def _listen_address(value: str) -> str:
    """``--host`` as given, if it can be an address: blank is refused (``--host "$HOST"`` with
    HOST unset listened on every interface, the socket's empty address), as is a line break,
    space or control character (never in an address, and an error only once bound)."""
    if not value.strip():
        raise typer.BadParameter(
            f"{value!r} is no address; give one such as 127.0.0.1, or 0.0.0.0 for every interface"
        )
    if any(c.isspace() or not c.isprintable() for c in value):
        raise typer.BadParameter(
            f"{value!r} has a space, line break or control character; give an address such as "
            "127.0.0.1, or 0.0.0.0 for every interface"
        )
    return value


def _trusted_proxies(value: str) -> str:
    from ollama_meter.gateway import trusted_proxies

    try:
        return trusted_proxies(value)
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from None


def serve(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on (0.0.0.0: every interface).",
            parser=_listen_address,
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port",
            "-p",
            min=0,
            max=65535,
            help="Port to listen on (0: any free one, named in the start-up line).",
        ),
    ] = 11435,
    upstream: Annotated[
        list[str] | None,
        typer.Option(
            "--upstream",
            help="Ollama to relay to (default OLLAMA_HOST); repeat for several servers, "
            "URL#slots=N for a server's own slots (or OMETER_UPSTREAMS=url1,url2).",
        ),
    ] = None,
    slots: Annotated[
        int | None,
        typer.Option(
            "--slots",
            envvar="OMETER_SLOTS",
            min=1,
            max=MAX_SLOTS,
            help="Calls each server runs at once; more wait in a queue shared fairly by department.",
        ),
    ] = None,
    max_queue: Annotated[
        int | None,
        typer.Option(
            "--max-queue",
            envvar="OMETER_MAX_QUEUE",
            min=0,
            max=MAX_QUEUE,
            help="Calls that may wait for a slot (default 512); more get 503 'server busy'.",
        ),
    ] = None,
    require_key: Annotated[
        bool,
        typer.Option("--require-key", help="Every route but /healthz needs a valid API key."),
    ] = False,
    allow_admin: Annotated[
        bool,
        typer.Option(
            "--allow-admin", help="Let pull/push/create/copy/delete and blob uploads through."
        ),
    ] = False,
    admin_token: Annotated[
        str | None,
        typer.Option(
            "--admin-token",
            envvar="OMETER_ADMIN_TOKEN",
            help="Token for the dashboard, /api/dash, /metrics and (with --allow-admin) model management.",
        ),
    ] = None,
    insecure_open: Annotated[
        bool,
        typer.Option(
            "--insecure-open",
            help="Listen beyond loopback with no key and no admin token (a trusted network only).",
        ),
    ] = False,
    origins: OriginsOption = "",
    proxies: Annotated[
        str,
        typer.Option(
            "--trusted-proxies",
            envvar="FORWARDED_ALLOW_IPS",
            help="Proxies (IPs or networks, comma-separated) whose X-Forwarded-For and "
            "X-Forwarded-Proto are believed; default none: the caller is the connection's peer.",
            parser=_trusted_proxies,
        ),
    ] = "",
    max_body_bytes: Annotated[
        int,
        typer.Option(
            "--max-body-bytes",
            envvar="OMETER_MAX_BODY_BYTES",
            min=1024,
            max=MOST_BODY_BYTES,
            help="Largest request body; more is refused with 413.",
        ),
    ] = MAX_BODY_BYTES,
    max_header_bytes: Annotated[
        int,
        typer.Option(
            "--max-header-bytes",
            envvar="OMETER_MAX_HEADER_BYTES",
            min=1024,
            max=MOST_HEADER_BYTES,
            help="Largest request line and headers; more is refused with 431.",
        ),
    ] = MAX_HEADER_BYTES,
    db: DbOption = None,
) -> None:
    """Run the metering gateway: point OLLAMA_HOST at it instead of Ollama."""

    from ollama_meter.gateway import (
        GatewayOptions,
        GatewayServer,
        check_listen_host,
        create_app,
        is_loopback,
        listening_socket,
        listening_url,
        server_config,
    )

    if admin_token is None and os.environ.get("OMETER_ADMIN_TOKEN") == "":
        # Set, to nothing (click reads an empty variable as unset): a blank token, refused
        # below, never no token (which opens the gateway's pages to every key).
        admin_token = ""
    options = GatewayOptions(
        require_key=require_key,
        allow_admin=allow_admin,
        admin_token=admin_token,
        max_body_bytes=max_body_bytes,
        origins=tuple(origins.split(",")),
    )
    admin_token = options.admin_token
    # No key makes a host this machine has no address for work. Loopback is the address it
    # binds, not its spelling: 127.1, ::ffff:127.0.0.1, a name resolving to 127.0.0.1.
    loopback = is_loopback(check_listen_host(host, port))
    options = dataclasses.replace(options, loopback=loopback)
    if admin_token and (short := short_token(admin_token, host, loopback=loopback)):
        raise ValidationError(short)
    if not (loopback or require_key or admin_token or insecure_open):
        raise ValidationError(
            f"not listening on {host}: with neither --require-key nor --admin-token, anyone who "
            "can reach the port could call Ollama on someone else's budget and read everyone's "
            "spend. Add --require-key (keys from `ometer keys create`) and/or --admin-token, "
            "or --insecure-open if only trusted machines can reach it"
        )
    cfg = serve_settings(upstream, slots=slots, max_queue=max_queue, db=db)
    specs = cfg.upstream_specs
    sock = listening_socket(host, port)
    port = int(sock.getsockname()[1])  # --port 0: the one the system chose
    open_when_up(cfg, ledger_for, err.print)  # a database server still starting is waited for
    app = create_app(cfg, options)
    servers = ", ".join(s.url + (f" ({s.slots} slots)" if s.slots else "") for s in specs)
    err.print(
        f"ometer gateway on {listening_url(host, port)} → {servers} "
        f"(ledger {named(ledger_for(cfg).display_url)})"
    )
    if insecure_open and not (loopback or require_key or admin_token):
        err.print(f"warning: listening on {host} with no key and no admin token (--insecure-open)")
    config = server_config(
        app, host=host, port=port, max_header_bytes=max_header_bytes, trusted_proxies=proxies
    )
    serving()
    GatewayServer(config, drain_s=cfg.drain_timeout).run(sockets=[sock])


def serve_settings(
    upstream: list[str] | None, *, slots: int | None, max_queue: int | None, db: str | None
) -> "Settings":
    """The gateway's settings: ``--upstream`` given replaces OLLAMA_HOST and OMETER_UPSTREAMS."""
    given = upstream or []
    plain = len(given) == 1 and "#" not in given[0]  # one server, as OLLAMA_HOST always was
    return settings(
        db_url=db,
        ollama_host=given[0] if plain else None,
        # Given even when plain: an OMETER_UPSTREAMS in the environment must not win over it.
        upstreams=",".join(given) if given else None,
        slots=slots,
        max_queue=max_queue,
    )
