"""``ometer serve``, ``ometer run`` and ``ometer keys``: the metering gateway from the terminal."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Annotated

import typer

from ollama_meter._runtime import serving
from ollama_meter.cli._common import (
    Column,
    DbOption,
    DeptOption,
    JsonFlag,
    OriginsOption,
    RowId,
    TenantOption,
    ledger_at,
    ledger_for,
    money,
    settings,
    table,
)
from ollama_meter.cli._console import err, named, out, write_data
from ollama_meter.cli._waiting import open_when_up
from ollama_meter.errors import ValidationError
from ollama_meter.gateway._limits import MAX_BODY_BYTES, MAX_HEADER_BYTES, short_token
from ollama_meter.records import Source, SpanRecord, Status
from ollama_meter.records._limit import MAX_QUEUE, MAX_SLOTS

if TYPE_CHECKING:
    from ollama_meter.config import Settings
    from ollama_meter.ledger import ApiKey

keys_app = typer.Typer(
    help="Gateway API keys: each maps to a tenant and department.", no_args_is_help=True
)


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
    max_body_bytes: Annotated[
        int,
        typer.Option(
            "--max-body-bytes",
            envvar="OMETER_MAX_BODY_BYTES",
            min=1024,
            help="Largest request body; more is refused with 413.",
        ),
    ] = MAX_BODY_BYTES,
    max_header_bytes: Annotated[
        int,
        typer.Option(
            "--max-header-bytes",
            envvar="OMETER_MAX_HEADER_BYTES",
            min=1024,
            help="Largest request line and headers; more is refused with 431.",
        ),
    ] = MAX_HEADER_BYTES,
    db: DbOption = None,
) -> None:
    """Run the metering gateway: point OLLAMA_HOST at it instead of Ollama."""

    from ollama_meter.gateway import (
        GatewayOptions,
        GatewayServer,
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
        loopback=is_loopback(host),
        origins=tuple(origins.split(",")),
    )
    admin_token = options.admin_token
    if admin_token and (short := short_token(admin_token, host, loopback=is_loopback(host))):
        raise ValidationError(short)
    if not (is_loopback(host) or require_key or admin_token or insecure_open):
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
    if insecure_open and not (is_loopback(host) or require_key or admin_token):
        err.print(f"warning: listening on {host} with no key and no admin token (--insecure-open)")
    config = server_config(app, host=host, port=port, max_header_bytes=max_header_bytes)
    serving()
    GatewayServer(config).run(sockets=[sock])


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


class _Tally:
    """What ``ometer run``'s gateway metered, counted as its spans end (a span observer)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = self.failed = self.tokens_in = self.tokens_out = 0
        self.cost: dict[str, int] = {}

    def on_start(self, span: SpanRecord) -> None:
        pass

    def on_end(self, span: SpanRecord) -> None:
        with self._lock:
            self.calls += 1
            self.failed += span.status != Status.OK
            self.tokens_in += span.input_tokens
            self.tokens_out += span.output_tokens
            self.cost[span.currency] = self.cost.get(span.currency, 0) + span.cost_total

    def summary(self, default: str, currency: str) -> str:
        with self._lock:
            spent = " + ".join(money(micros, currency) for currency, micros in self.cost.items())
            return (
                f"{self.calls} call(s) metered for {default}: {self.tokens_in} in / "
                f"{self.tokens_out} out tokens, {spent or money(0, currency)}, {self.failed} failed"
            )


def run(
    command: Annotated[list[str], typer.Argument(help="The program to run, after --.")],
    dept: DeptOption = None,
    tenant: TenantOption = None,
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="User to attribute the calls to.")
    ] = None,
    origins: OriginsOption = "",
    db: DbOption = None,
) -> None:
    """Run a program with OLLAMA_HOST pointed at a short-lived gateway: legacy scripts, metered."""
    from ollama_meter.gateway import (
        GatewayOptions,
        GatewayServer,
        create_app,
        listening_socket,
        server_config,
    )
    from ollama_meter.meter import Attribution, Meter

    cfg = settings(db_url=db, tenant=tenant, department=dept)
    who = Attribution(tenant=cfg.tenant, department=cfg.department, user=user)
    # As `ometer serve`'s: a malformed entry is an error before the program runs.
    options = GatewayOptions(default_user=user, loopback=True, origins=tuple(origins.split(",")))
    tally = _Tally()
    meter = Meter.from_settings(cfg, source=Source.GATEWAY, observers=[tally])
    sock = listening_socket("127.0.0.1", 0)  # bound here: no other program can take the port
    port = int(sock.getsockname()[1])
    app = create_app(cfg, options, meter=meter)
    server = GatewayServer(server_config(app, host="127.0.0.1", port=port))
    serving()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise ValidationError(f"could not start the gateway on port {port}")
        time.sleep(0.01)
    gateway = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OLLAMA_HOST": gateway, "OPENAI_BASE_URL": f"{gateway}/v1"}
    try:
        code = _foreground(command, env)
    finally:
        # Calls the program left running (work it put in the background) are drained as
        # `ometer serve` drains them on SIGTERM: each finishes, or is stopped with a clear
        # last answer when the drain ends, and its span is written before ometer exits.
        # A bound here cut them with no answer, their spans only in the journal.
        server.should_exit = True
        thread.join()
    err.print(f"ometer: {tally.summary(f'{who.tenant}/{who.department}', cfg.currency)}")
    sys.exit(code)


def _nothing(_sig: int, _frame: object) -> None:
    """A signal handler that does nothing."""


def _foreground(command: list[str], env: dict[str, str]) -> int:
    """Run ``command`` as a shell runs a foreground job; its exit status, as a shell gives it.

    Ctrl-C reaches the program from the terminal (the whole group gets it), so here it is
    ignored: the program decides what it means, and its gateway meters what it still does.
    A SIGTERM or SIGHUP sent to ``ometer`` is passed on (as ``timeout`` passes them): a hang-up
    killed ometer and its gateway, and what the program did after it went unmetered. A program
    a signal ended gives 128 + it.
    """
    program: subprocess.Popen[bytes] | None = None
    early: list[int] = []  # signals that came while the program was being started

    def pass_on(sig: int, _frame: object) -> None:
        if program is None:
            early.append(sig)
        else:
            program.send_signal(sig)

    # In place before the program starts: a SIGTERM in between ended ometer alone and left
    # the program running, unmetered. Ctrl-C gets a handler that does nothing, not SIG_IGN,
    # which the program would inherit (unless ometer has it so: a shell's background job).
    # A hang-up ometer ignores (nohup) is left ignored for the program to inherit.
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    before = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else _nothing),
        signal.SIGTERM: signal.signal(signal.SIGTERM, pass_on),
    }
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        before[signal.SIGHUP] = signal.signal(signal.SIGHUP, pass_on)
    try:
        try:
            program = subprocess.Popen(command, env=env)
        except FileNotFoundError:
            raise _not_run(f"no such program: {command[0]}", 127) from None
        except OSError as exc:  # not executable, a directory, ...
            raise _not_run(f"cannot run {command[0]}: {exc.strerror or exc}", 126) from None
        for sig in early:
            program.send_signal(sig)
        code = program.wait()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


@keys_app.command("create")
def create_key(
    tenant: TenantOption = None,
    dept: DeptOption = None,
    name: Annotated[str, typer.Option("--name", help="What the key is for, e.g. crm-bot.")] = "key",
    user: Annotated[
        str | None,
        typer.Option("--user", "-u", help="Charge every call with this key to this user."),
    ] = None,
    allow_users: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-user",
            help="A user callers with this key may name in X-Ometer-User (repeat for more).",
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Create a key for a tenant and department; the key is printed once and stored hashed."""
    from ollama_meter.meter import Attribution

    cfg = settings(db_url=db, tenant=tenant, department=dept)
    who = Attribution(tenant=cfg.tenant, department=cfg.department)
    key, secret = ledger_for(cfg).create_key(
        name=name,
        tenant=who.tenant,
        department=who.department,
        user=user,
        users=tuple(allow_users or ()),
    )
    err.print(
        f"key {key.id} ({key.name}) for {key.tenant}/{key.department}{_users(key)}; "
        "it is shown only this once:"
    )
    out.file.write(secret + "\n")


def _users(key: "ApiKey") -> str:
    if key.user:
        return f", user {key.user}"
    if key.users:
        return f", users {', '.join(key.users)}"
    return ""


@keys_app.command("list")
def list_keys(as_json: JsonFlag = False, db: DbOption = None) -> None:
    """Every key (never the secret), live or revoked."""
    keys = ledger_at(db).keys()
    if as_json:
        rows = [
            {
                "id": k.id,
                "name": k.name,
                "tenant": k.tenant,
                "department": k.department,
                "user": k.user,
                "allowed_users": list(k.users),
                "prefix": k.prefix,
                "created_at": k.created_at.isoformat(),
                "revoked": k.revoked_at is not None,
            }
            for k in keys
        ]
        write_data(json.dumps(rows, indent=2) + "\n")
        return
    columns = [
        Column("id", numeric=True),
        Column("name"),
        Column("tenant/dept"),
        Column("users"),
        Column("prefix"),
        Column("created"),
        Column("state"),
    ]
    cells = [
        [
            str(k.id),
            k.name,
            f"{k.tenant}/{k.department}",
            k.user or ", ".join(k.users) or "any (unverified)",
            f"om_{k.prefix}…",
            f"{k.created_at:%Y-%m-%d}",
            "revoked" if k.revoked_at else "live",
        ]
        for k in keys
    ]
    none = "no keys; create one with `ometer keys create --name NAME --dept D`"
    out.print(table("gateway keys", columns, cells, caption=None if cells else none))


@keys_app.command("revoke")
def revoke_key(key_id: RowId, db: DbOption = None) -> None:
    """Revoke a key (its id from `ometer keys list`): the gateway refuses it from the next request on."""
    ledger_at(db).revoke_key(key_id)
    out.print(f"revoked key {key_id}")


def _not_run(message: str, status: int) -> ValidationError:
    """The error for a program that could not be started, with the status a shell gives
    it (127: not found, 126: found but not runnable), so scripts tell it from the program's."""
    error = ValidationError(message)
    error.exit_code = status
    return error
