"""The composition root: a meter, and the ledger it writes to, built from settings.

The one place that knows which concrete pieces make a running meter: the
ledger (with ``OMETER_PRICING_FILE`` and ``DEPARTMENT_BUDGETS`` brought in), the
price source, the budget gate and its alert channels, the telemetry exporters
and the transport to Ollama (the ``ollama`` client for the CLI and the Python
API, pooled aiohttp connections for the gateway). Everything else takes its
pieces as arguments. Heavy pieces are imported here, when they are built.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ollama_meter.errors import ConfigError, PricingError
from ollama_meter.records import Source

if TYPE_CHECKING:
    from ollama_meter.budgets import BudgetGate
    from ollama_meter.config import Settings
    from ollama_meter.ledger import Ledger
    from ollama_meter.meter._meter import Clock, Meter, Transport
    from ollama_meter.meter._observers import SpanObserver
    from ollama_meter.pricing import PriceRule

log = logging.getLogger("ollama_meter.meter")

GATEWAY_LEASE_SHARE = 0.25
"""The share of a budget's room a long-running process leases at a time."""


def build_meter(
    settings: Settings,
    *,
    source: Source,
    clock: Clock | None = None,
    observers: Sequence[SpanObserver] = (),
    http: Mapping[str, Any] | None = None,
) -> Meter:
    """A meter wired to the configured ledger, prices, budgets, telemetry and Ollama.

    ``http``: the httpx arguments for the ``ollama`` client's calls (the Python API's).
    ``observers`` (user hooks) run before telemetry, so what they add is exported.
    Calls dead processes left open are recorded before the meter is handed out.
    """
    from ollama_meter.budgets import ShownPrompts
    from ollama_meter.meter._meter import Meter, utc_now
    from ollama_meter.meter._prices import PriceSource
    from ollama_meter.meter._recovery import recover_interrupted

    ledger = ledger_for(settings)
    prices = PriceSource(ledger, settings=settings)
    ledger.price = prices.at_commit  # a call ending as the rules change: as a reprice prices it
    # Before the budgets: a gateway's start says the thresholds they reached, and a crossing
    # by a call recovered after that look waited for the scope's next call, or a restart.
    recover_interrupted(ledger, prices, exporters := telemetry_observers(settings))
    return Meter(
        ledger=ledger,
        prices=prices,
        upstream=transport_for(settings, source, http=http),
        source=source,
        clock=clock or utc_now,
        budgets=budget_gate(
            ledger,
            settings,
            lease_share=GATEWAY_LEASE_SHARE if source == Source.GATEWAY else 0.0,
        ),
        observers=[*observers, *exporters],
        capture_content=settings.capture_content,
        reply_cap=settings.budget_reply_cap,
        journal=settings.journal,
        shown=ShownPrompts(  # every server a gateway's calls may go to
            [spec.url for spec in settings.upstream_specs]
            if source == Source.GATEWAY
            else [settings.ollama_host]
        ),
    )


def transport_for(
    settings: Settings,
    source: Source,
    *,
    host: str | None = None,
    http: Mapping[str, Any] | None = None,
) -> Transport:
    """The gateway relays bytes over pooled aiohttp connections; the others use the ollama client.

    ``host``: another server than ``OLLAMA_HOST`` (one of the gateway's several); ``http``:
    the httpx arguments the ``ollama`` client is made with (the gateway takes none).
    """
    from ollama_meter.upstream import RetryPolicy, breaker_for

    host = host or settings.ollama_host
    retry = RetryPolicy(retries=settings.retries, backoff=settings.retry_backoff)
    breaker = breaker_for(
        host, threshold=settings.breaker_failures, reset_after=settings.breaker_reset
    )
    if source == Source.GATEWAY:
        from ollama_meter.upstream import PooledUpstream

        return PooledUpstream(host, timeout=settings.upstream_timeout, retry=retry, breaker=breaker)
    from ollama_meter.upstream._sdk_made import proxy_problem

    if (problem := proxy_problem()) is not None:  # before the ollama client reads it, as imported
        raise ConfigError(problem)
    from ollama_meter.upstream import Upstream

    return Upstream(
        host, timeout=settings.upstream_timeout, retry=retry, breaker=breaker, http=http
    )


def ledger_for(settings: Settings) -> Ledger:
    """The configured ledger, with ``OMETER_PRICING_FILE`` and ``DEPARTMENT_BUDGETS`` brought in.

    Every command that reads prices or budgets opens the ledger through here, so the
    file and the variable apply the same way everywhere.
    """
    from ollama_meter.ledger import open_ledger

    ledger = open_ledger(settings.ledger_url, wait=settings.ledger_wait, zone=settings.timezone)
    if settings.pricing_file is not None:
        sync_pricing_file(ledger, settings.pricing_file, default_currency=settings.currency)
    sync_env_budgets(ledger, settings)
    return ledger


def sync_pricing_file(
    ledger: Ledger, path: Path, *, default_currency: str, opened: BinaryIO | None = None
) -> bool:
    """Load ``OMETER_PRICING_FILE`` into the ledger when its content changed; True if it did.
    ``opened``: the file, open already (read from it, not from ``path``)."""
    from ollama_meter._paths import read_bounded, resolved
    from ollama_meter.pricing import MAX_PRICING_BYTES, parse_pricing_toml, pricing_text

    try:  # checked by the settings, but read later: it may be gone or replaced since
        content = read_bounded(opened or path, limit=MAX_PRICING_BYTES, what="pricing file")
    except ValueError as exc:
        raise PricingError(f"OMETER_PRICING_FILE {path}: {exc}") from None

    def rules() -> list[PriceRule]:
        try:
            return parse_pricing_toml(
                pricing_text(content, path),
                default_currency=default_currency,
                source=f"file:{path}",
            )
        except ValueError as exc:
            raise PricingError(f"OMETER_PRICING_FILE {path}: {exc}") from None

    try:  # what an older ometer named it: where its links led
        formerly = f"file:{resolved(path)}"
    except OSError:
        formerly = None
    return ledger.sync_price_rules(f"file:{path}", content, rules, formerly=formerly)


def sync_env_budgets(ledger: Ledger, settings: Settings) -> None:
    """Bring ``DEPARTMENT_BUDGETS`` into the ledger when it is set (source ``env``)."""
    from ollama_meter.records import parse_department_budgets, unreached_notes

    if not settings.department_budgets:
        return
    seeded = parse_department_budgets(settings.department_budgets, currency=settings.currency)
    if ledger.sync_budgets("env", seeded):  # said once, when what it brings in changes
        budgets, _ = ledger.readable_budgets()  # a row broken in SQL: named where it binds
        for note in unreached_notes(budgets, {b.id for b in budgets if b.source == "env"}):
            log.warning("note: %s (DEPARTMENT_BUDGETS)", note)


def budget_gate(ledger: Ledger, settings: Settings, *, lease_share: float = 0.0) -> BudgetGate:
    """Budgets from the ledger and the configured alert channels.

    ``lease_share`` 0 (a CLI run: one call, then exit) reserves each call's bound on its
    own; a long-running process leases a share of the room and admits calls in memory.
    """
    from ollama_meter.budgets import (
        AlertDispatcher,
        BudgetGate,
        Channel,
        EmailChannel,
        WebhookChannel,
    )
    from ollama_meter.meter import _prices

    channels: list[Channel] = []
    if settings.alert_webhook_url:
        channels.append(WebhookChannel(settings.alert_webhook_url))
    if settings.smtp_host and settings.email_recipients:
        channels.append(
            EmailChannel(
                settings.smtp_host,
                settings.smtp_port,
                sender=settings.smtp_from,
                recipients=settings.email_recipients,
                user=settings.smtp_user,
                password=settings.smtp_password.get_secret_value()
                if settings.smtp_password
                else None,
            )
        )
    gate = BudgetGate(
        ledger,
        tz=_prices.ledger_zone(ledger, settings),
        zone=lambda: _prices.ledger_zone(ledger, settings),
        alerts=AlertDispatcher(ledger, channels),
        lease_share=lease_share,
    )
    try:
        gate.retry_undelivered()
    except Exception as exc:  # a row edited in SQL: never a reason not to serve, nor to sweep
        log.warning("could not read the undelivered budget alerts to try them again: %s", exc)
    if lease_share:  # a server: what no process said (see ``sweep_alerts``) is said now
        try:
            gate.sweep_alerts(datetime.now(UTC))
        except Exception as exc:  # never a reason not to serve; each call checks its own
            log.warning("could not look for budget alerts not yet fired: %s", exc)
    return gate


def telemetry_observers(settings: Settings) -> list[SpanObserver]:
    """The exporter observer when one is configured; none otherwise (and no OTel import)."""
    from ollama_meter.telemetry import telemetry_for

    telemetry = telemetry_for(settings)
    return [telemetry.observer] if telemetry is not None else []
