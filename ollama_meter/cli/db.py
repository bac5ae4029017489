"""``ometer db ...``: where the ledger is and bringing its schema up to date."""

from __future__ import annotations

import typer

from ollama_meter.cli._common import DbOption, out, settings
from ollama_meter.ledger import HEAD_REVISION, Ledger, current_revision, upgrade

app = typer.Typer(help="The ledger database.", no_args_is_help=True)


@app.command("upgrade")
def upgrade_command(db: DbOption = None) -> None:
    """Apply pending migrations (also done automatically on first use)."""
    cfg = settings(db_url=db)
    ledger = Ledger(cfg.ledger_url, migrate=False, wait=cfg.ledger_wait)
    with ledger.failures_named():
        before = current_revision(ledger.engine)
        if before == HEAD_REVISION:
            out.print(f"ledger at {ledger.display_url} is up to date (revision {HEAD_REVISION})")
            return
        upgrade(ledger.engine)
    out.print(f"ledger at {ledger.display_url}: {before or 'empty'} → {HEAD_REVISION}")


@app.command("path")
def path_command(db: DbOption = None) -> None:
    """Print the ledger's location: the SQLite file, or the database URL without its password."""
    cfg = settings(db_url=db)
    out.print(Ledger(cfg.ledger_url, migrate=False).display_url)
