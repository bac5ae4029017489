"""Where the settings' values come from, each field's environment names worked out once.

pydantic-settings works out, at every load and for each of the ~50 fields, which
environment names the field answers to and whether its value is complex (JSON), from the
field's annotation and alias: about 4 ms of a load's 5, for the environment and ``.env``
each. Those answers depend only on the field and the source's own configuration, so
they are kept, per settings class, the first time they are asked; every load still reads
the environment and ``.env`` afresh. A missing or empty ``.env`` gives no value, so its
source is not asked at all. A field answers to its documented name (its alias) only. Commands, gateways and Python clients each load once;
a suite loads tens of thousands of times.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

_Kept = dict[tuple[Any, ...], Any]
_kept: dict[tuple[type, type, bool, str], _Kept] = {}
"""Answers per (settings class, source class, case-sensitivity, prefix)."""


def _remembered(source: PydanticBaseSettingsSource) -> PydanticBaseSettingsSource:
    """``source`` with its per-field questions answered from what the same kind of source
    said before (the methods are pydantic-settings' own; one it lacks is left alone)."""
    config = (
        source.settings_cls,
        type(source),
        bool(getattr(source, "case_sensitive", False)),
        str(getattr(source, "env_prefix", "")),
    )
    kept = _kept.setdefault(config, {})
    own = {id(field) for field in source.settings_cls.model_fields.values()}
    for name in ("_extract_field_info", "_field_is_complex"):
        asked = getattr(source, name, None)
        if callable(asked):
            setattr(source, name, _once(name, asked, kept, own))
    return source


def _once(name: str, asked: Callable[..., Any], kept: _Kept, own: set[int]) -> Callable[..., Any]:
    def answer(field: FieldInfo, *rest: Any, **options: Any) -> Any:
        if id(field) not in own or options or any(not isinstance(p, str) for p in rest):
            return asked(field, *rest, **options)  # a nested model's field: not kept
        key = (name, id(field), *rest)
        if key not in kept:
            kept[key] = asked(field, *rest)
            if name == "_extract_field_info":
                kept[key] = _documented(field, kept[key])
        return kept[key]

    return answer


def _documented(field: FieldInfo, names: list[tuple[str, str, bool]]) -> list[Any]:
    """Of the environment names pydantic-settings gives a field, its documented one (the
    alias) alone: with ``populate_by_name`` (``Settings(db_url=...)``) it read the field's
    own name as well, in any case, so an app's ``DB_URL`` or ``LOG_LEVEL`` set ometer's."""
    alias = field.validation_alias
    if not isinstance(alias, str):
        return names
    return [entry for entry in names if entry[0] == alias] or names


class QuickSettings(BaseSettings):
    """Settings whose sources keep their per-field answers (see the module docstring)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, _remembered(env_settings)]
        if getattr(dotenv_settings, "env_vars", True):  # a .env with something in it
            sources.append(_remembered(dotenv_settings))
        return (*sources, file_secret_settings)
