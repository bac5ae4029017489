"""``ometer serve``, ``ometer run`` and ``ometer keys``: the metering gateway from the terminal."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from ollama_meter.cli._common import (
    DbOption,
    DeptOption,
    JsonFlag,
    TenantOption,
    err,
    money,
    out,
    settings,
)
from ollama_meter.errors import ValidationError
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter import Attribution, ledger_for

keys_app = typer.Typer(
    help="Gateway API keys: each maps to a tenant and department.", no_args_is_help=True
)


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", "-p", min=1, max=65535, help="Port to listen on.")
    ] = 11435,
    upstream: Annotated[
        str | None, typer.Option("--upstream", help="Ollama to relay to (default OLLAMA_HOST).")
    ] = None,
    require_key: Annotated[
        bool, typer.Option("--require-key", help="Refuse calls without a valid API key.")
    ] = False,
    allow_admin: Annotated[
        bool, typer.Option("--allow-admin", help="Let pull/push/create/copy/delete through.")
    ] = False,
    admin_token: Annotated[
        str | None,
        typer.Option(
            "--admin-token", envvar="OMETER_ADMIN_TOKEN", help="Token protecting the dashboard."
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Run the metering gateway: point OLLAMA_HOST at it instead of Ollama."""
    import uvicorn

    from ollama_meter.gateway import GatewayOptions, create_app

    cfg = settings(db_url=db, ollama_host=upstream)
    app = create_app(
        cfg,
        GatewayOptions(require_key=require_key, allow_admin=allow_admin, admin_token=admin_token),
    )
    err.print(
        f"ometer gateway on http://{host}:{port} → {cfg.ollama_host} (ledger {ledger_for(cfg).display_url})"
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=10,
        access_log=False,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(
    command: Annotated[list[str], typer.Argument(help="The program to run, after --.")],
    dept: DeptOption = None,
    tenant: TenantOption = None,
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="User to attribute the calls to.")
    ] = None,
    db: DbOption = None,
) -> None:
    """Run a program with OLLAMA_HOST pointed at a short-lived gateway: legacy scripts, metered."""
    import uvicorn

    from ollama_meter.gateway import GatewayOptions, create_app

    cfg = settings(db_url=db, tenant=tenant, department=dept)
    who = Attribution(tenant=cfg.tenant, department=cfg.department, user=user)
    port = _free_port()
    app = create_app(cfg, GatewayOptions(default_user=user))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    started = datetime.now(UTC)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise ValidationError(f"could not start the gateway on port {port}")
        time.sleep(0.01)
    gateway = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OLLAMA_HOST": gateway, "OPENAI_BASE_URL": f"{gateway}/v1"}
    try:
        code = subprocess.call(command, env=env)
    except FileNotFoundError:
        raise ValidationError(f"no such program: {command[0]}") from None
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    spans = ledger_for(cfg).latest(
        SpanFilter(since=started, tenant=who.tenant, department=who.department), 100_000
    )
    spans = [s for s in spans if s.source == "gateway"]
    total = sum(s.cost_total for s in spans)
    currency = spans[0].currency if spans else cfg.currency
    err.print(
        f"ometer: {len(spans)} call(s) metered for {who.tenant}/{who.department}: "
        f"{sum(s.input_tokens for s in spans)} in / {sum(s.output_tokens for s in spans)} out tokens, "
        f"{money(total, currency)}, {sum(s.status != 'ok' for s in spans)} failed"
    )
    sys.exit(code)


@keys_app.command("create")
def create_key(
    tenant: TenantOption = None,
    dept: DeptOption = None,
    name: Annotated[str, typer.Option("--name", help="What the key is for, e.g. crm-bot.")] = "key",
    db: DbOption = None,
) -> None:
    """Create a key for a tenant and department; the key is printed once and stored hashed."""
    cfg = settings(db_url=db, tenant=tenant, department=dept)
    who = Attribution(tenant=cfg.tenant, department=cfg.department)
    key, secret = ledger_for(cfg).create_key(
        name=name, tenant=who.tenant, department=who.department
    )
    err.print(
        f"key {key.id} ({key.name}) for {key.tenant}/{key.department}; it is shown only this once:"
    )
    out.file.write(secret + "\n")


@keys_app.command("list")
def list_keys(as_json: JsonFlag = False, db: DbOption = None) -> None:
    """Every key (never the secret), live or revoked."""
    cfg = settings(db_url=db)
    keys = ledger_for(cfg).keys()
    if as_json:
        rows = [
            {
                "id": k.id,
                "name": k.name,
                "tenant": k.tenant,
                "department": k.department,
                "prefix": k.prefix,
                "created_at": k.created_at.isoformat(),
                "revoked": k.revoked_at is not None,
            }
            for k in keys
        ]
        out.file.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="gateway keys", title_justify="left")
    for name in ("id", "name", "tenant/dept", "prefix", "created", "state"):
        table.add_column(name)
    for k in keys:
        table.add_row(
            str(k.id),
            k.name,
            f"{k.tenant}/{k.department}",
            f"om_{k.prefix}…",
            f"{k.created_at:%Y-%m-%d}",
            "revoked" if k.revoked_at else "live",
        )
    out.print(table)


@keys_app.command("revoke")
def revoke_key(
    key_id: Annotated[int, typer.Argument(help="Key id from `ometer keys list`.")],
    db: DbOption = None,
) -> None:
    """Revoke a key; the gateway refuses it from the next request on."""
    cfg = settings(db_url=db)
    ledger_for(cfg).revoke_key(key_id)
    out.print(f"revoked key {key_id}")
