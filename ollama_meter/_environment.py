"""The environment ometer reads: a ``.env`` checked whole, and ``OMETER_`` names that are no
setting (a misspelt one would silently leave its setting at the default) said once."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from ollama_meter.errors import ConfigError

_ENV_NAME = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")
GATEWAY_ENV = frozenset({"OMETER_ADMIN_TOKEN", "OMETER_MAX_BODY_BYTES", "OMETER_MAX_HEADER_BYTES"})
"""Variables ``ometer serve`` reads for its own options, beside the settings."""
TEST_ENV = "OMETER_TEST_"
"""The prefix of the test suite's own variables (``OMETER_TEST_PG_URL``, ...): never settings."""
_warned: set[str] = set()


def warn_unknown(
    environment: Iterable[str], env_file: Iterable[str], known: frozenset[str]
) -> None:
    """Say, once a process, which ``OMETER_`` names are no setting: a misspelt one would
    silently leave its setting at the default (a key not required, spans never pruned);
    and which of ``ometer serve``'s variables a ``.env`` sets, where they are not read."""
    log = logging.getLogger("ollama_meter.config")
    for name in (*environment, *env_file):
        if not name.startswith("OMETER_") or name.startswith(TEST_ENV) or name in known | _warned:
            continue
        import difflib

        _warned.add(name)
        meant = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        hint = f"; did you mean {meant[0]}?" if meant else "; see `ometer --help` and the README"
        log.warning("%s is not an ometer setting and is ignored%s", name, hint)
    for name in GATEWAY_ENV.intersection(env_file) - _warned:
        _warned.add(name)
        log.warning(
            "%s in .env is ignored: ometer serve reads it from the environment only; "
            "export it or give its flag",
            name,
        )


def check_env_file(path: Path) -> list[str]:
    """Refuse a ``.env`` that cannot be read whole: python-dotenv skips a line it cannot
    parse (a quote left open) with a warning, and the setting on it would silently be
    the default: a report cut in the wrong zone, a budget not set. The names it sets."""
    if not path.is_file():
        return []
    from dotenv.parser import parse_stream

    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f".env: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f".env: cannot be read: {exc.strerror}") from None
    names = []
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            named = _ENV_NAME.match(binding.original.string)
            what = f" (setting {named.group(1)})" if named else ""
            raise ConfigError(
                f".env line {binding.original.line}{what} cannot be read: is a quote left "
                "open? Fix or remove the line"
            )
        if binding.key:
            names.append(binding.key)
    return names
