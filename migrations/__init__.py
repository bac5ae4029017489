"""Alembic migrations for the ledger, shipped inside the package as ``ollama_meter._migrations``."""
