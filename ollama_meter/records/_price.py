"""Price rules, the usage facts prices apply to, and a call's cost: plain data.

A rule checks its own values when made (bounded, exact amounts; a pattern that
is a model name or glob). Which rule prices a call, and what it costs, is
decided in :mod:`ollama_meter.pricing`; the ledger stores rules as they are.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, fields
from datetime import date
from decimal import Decimal
from fnmatch import fnmatchcase

from ollama_meter.records._money import MAX_PRICE, PRICE_LIMITS, check_amount, parse_currency

_PATTERN_OK = re.compile(r"[A-Za-z0-9._:/@*?\[\]!-]{1,255}")
_WILDCARDS = re.compile(r"[*?\[]")
_ANY = re.compile(r"[*?]")
_CLASS = re.compile(r"\[!?\]?[^\]]*\]")
"""A character class as fnmatch reads it ('[0-9]', '[!a]', '[]x]'): one character, however
many it lists; a '[' that no ']' closes is a literal."""

PRICE_FIELDS = (
    "input_per_1m",
    "output_per_1m",
    "gpu_hour",
    "watts",
    "kwh_price",
    "per_request",
    "fee_per_1m",
)


@dataclass(frozen=True, slots=True)
class PriceRule:
    """How calls to models matching ``pattern`` are priced, from a local date on.

    ``effective_until`` is exclusive. Every price is per its unit in ``currency``:
    per million tokens, per GPU-hour, per kWh, per request. ``watts`` is the
    average draw while Ollama is busy.
    """

    pattern: str
    currency: str
    id: int | None = None
    input_per_1m: Decimal | None = None
    output_per_1m: Decimal | None = None
    gpu_hour: Decimal | None = None
    watts: Decimal | None = None
    kwh_price: Decimal | None = None
    per_request: Decimal | None = None
    fee_per_1m: Decimal | None = None
    charge_load: bool = False
    effective_from: date | None = None
    effective_until: date | None = None
    source: str = "cli"

    def __post_init__(self) -> None:
        if not _PATTERN_OK.fullmatch(self.pattern):  # match()'s $ let a final newline in
            raise ValueError(
                f"model pattern {self.pattern!r} is not a model name or glob such as 'llama3.1:*'"
            )
        if all(getattr(self, name) is None for name in PRICE_FIELDS):
            raise ValueError(
                f"rule for {self.pattern!r} sets no price; give at least one of "
                "--input-per-1m, --output-per-1m, --gpu-hour, --watts/--kwh-price, "
                "--per-request, --fee-per-1m"
            )
        if (self.watts is None) != (self.kwh_price is None):
            raise ValueError("energy pricing needs both --watts and --kwh-price")
        for name in PRICE_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if type(value) is int:  # exact as it is (True is an int to Python, not a price)
                value = Decimal(value)
                object.__setattr__(self, name, value)
            elif not isinstance(value, Decimal):
                raise ValueError(
                    f"{name} is an exact amount: give a Decimal, such as Decimal('0.15'), or a "
                    f"whole number, not {type(value).__name__}"
                )
            check_amount(value, what=name, limit=PRICE_LIMITS.get(name, MAX_PRICE))
        object.__setattr__(self, "currency", parse_currency(self.currency))
        if (
            self.effective_from is not None
            and self.effective_until is not None
            and self.effective_until <= self.effective_from
        ):
            raise ValueError("the rule's end date must be after its start date")

    def tier(self) -> tuple[tuple[int, int, int], date]:
        """What decides between this rule and another that both price a call, before which
        came last (the greater wins): how specific its pattern is, then its first day. Only
        the order of rules of one tier ever decides a price."""
        return specificity(self.pattern), self.effective_from or date.min

    def same_as(self, other: PriceRule) -> bool:
        """Whether ``other`` prices exactly like this rule (ids and where it came from aside)."""
        return _identity(self) == _identity(other)

    def prices(self) -> dict[str, Decimal]:
        """The price parts this rule sets."""
        return {n: v for n in PRICE_FIELDS if (v := getattr(self, n)) is not None}

    def applies_on(self, day: date) -> bool:
        if self.effective_from is not None and day < self.effective_from:
            return False
        return self.effective_until is None or day < self.effective_until

    def matches(self, model: str) -> bool:
        """Whether ``model``, in any spelling Ollama reads as it, matches the pattern in any
        of its own: 'library/llama3.1:*' prices 'llama3.1:8b', and 'llama3.1' prices
        'llama3.1:latest', as Ollama runs one model for each."""
        written, full = _pattern_forms(self.pattern)
        if any(fnmatchcase(name, written) for name in model_names(model)):
            return True
        return fnmatchcase(_qualified(model_key(model)), full)


@dataclass(frozen=True, slots=True)
class UnreadableRule:
    """A price rule row edited by hand in SQL to what no :class:`PriceRule` can be (a price
    of ``'abc'``): its id, its pattern's stored text, and the ledger's words on what to do."""

    id: int
    pattern: str
    problem: str

    def covers(self, model: str) -> bool:
        """Whether the row may price ``model``: its pattern matches it, or is no pattern."""
        if not _PATTERN_OK.fullmatch(self.pattern):
            return True
        return PriceRule(self.pattern, "USD", per_request=Decimal(0)).matches(model)


RULE_FIELDS = tuple(f.name for f in fields(PriceRule))
_IDENTITY_FIELDS = tuple(name for name in RULE_FIELDS if name not in ("id", "source"))


def _identity(rule: PriceRule) -> tuple[object, ...]:
    # Decimal("1.0") == Decimal("1"): the same price written two ways is the same rule.
    return tuple(getattr(rule, name) for name in _IDENTITY_FIELDS)


DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"


def _unqualified(name: str) -> str:
    """``name`` without the default registry and namespace, which Ollama fills in, and without
    a scheme before its host, which Ollama reads past ('https://registry.ollama.ai/library/x'
    runs x: a caller who spelled it so was priced by no rule for x, at the catch-all's price)."""
    if "/" not in name:  # no scheme, registry nor namespace: most names, four times a call
        return name
    scheme, cut, rest = name.partition("://")
    if cut and "/" not in scheme:
        name = rest
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == DEFAULT_HOST:
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == DEFAULT_NAMESPACE:
        parts = parts[1:]
    return "/".join(parts)


def model_key(model: str) -> str:
    """The one name Ollama resolves ``model`` to: lower case, without the default registry and
    namespace (``registry.ollama.ai/library/``), ``:latest`` when untagged."""
    name = _unqualified(model.strip().lower())
    tag = name.rsplit("/", 1)[-1] if "/" in name else name
    return name if ":" in tag else f"{name}:latest"


def _qualified(name: str) -> str:
    """``name`` with the default registry and namespace Ollama fills in: ``llama3.1:8b`` →
    ``registry.ollama.ai/library/llama3.1:8b``."""
    parts = name.split("/")
    if len(parts) == 1:
        parts = [DEFAULT_NAMESPACE, *parts]
    if len(parts) == 2:
        parts = [DEFAULT_HOST, *parts]
    return "/".join(parts)


@functools.lru_cache(maxsize=4096)
def _pattern_forms(pattern: str) -> tuple[str, str]:
    """A rule's pattern as written (lower case), and in full (:func:`_qualified`, and, for an
    exact name, with ``:latest`` when untagged): a glob gets no tag ('llama*' is not
    'llama*:latest') and keeps its namespace ('library/*' is not 'someone/x')."""
    name = pattern.strip().lower()
    return name, _qualified(name if _WILDCARDS.search(name) else model_key(name))


def pattern_key(pattern: str) -> str:
    """A rule's pattern as Ollama reads the names it matches: lower case, without the default
    registry and namespace, and an exact name with ``:latest`` when untagged. Spellings of one
    pattern ('llama3.1', 'library/llama3.1:latest') are one key, so equally specific."""
    name = _unqualified(pattern.strip().lower())
    return name if _WILDCARDS.search(name) else model_key(name)


def specificity(pattern: str) -> tuple[int, int, int]:
    """Order patterns from general to specific: exact names beat globs, longer beats shorter.

    Read as Ollama reads the names (:func:`pattern_key`): 'library/llama3.1:8b' is no more
    specific than 'llama3.1:8b', so between the two the later ``--from`` wins."""
    pattern = _CLASS.sub("?", pattern_key(pattern))
    wildcards = len(_ANY.findall(pattern))
    literal = len(_ANY.sub("", pattern))
    return (0 if wildcards else 1, literal, -wildcards)


def model_names(model: str) -> tuple[str, ...]:
    """The names a model answers to, as Ollama reads them: as written (lower case) and as
    :func:`model_key` resolves it (``llama3.1`` is ``llama3.1:latest``, and so is
    ``library/llama3.1``), so a rule for either spelling prices every one."""
    name = model.strip().lower()
    return tuple(dict.fromkeys((name, _unqualified(name), model_key(name))))


@dataclass(frozen=True, slots=True)
class Usage:
    """The measured facts of one call that prices depend on."""

    input_tokens: int = 0
    output_tokens: int = 0
    prompt_eval_ns: int = 0
    eval_ns: int = 0
    load_ns: int = 0
    answered: bool = True
    """Whether Ollama served the call; request fees apply only then."""

    def busy_ns(self, *, charge_load: bool) -> int:
        """Ollama's own busy time: prompt evaluation and generation, plus loading if charged."""
        return self.prompt_eval_ns + self.eval_ns + (self.load_ns if charge_load else 0)


@dataclass(frozen=True, slots=True)
class Cost:
    """A call's cost in integer micro-units of ``currency``, by part."""

    currency: str
    tokens: int = 0
    compute: int = 0
    energy: int = 0
    fee: int = 0
    rule_id: int | None = None
    unpriced: bool = True

    @property
    def total(self) -> int:
        return self.tokens + self.compute + self.energy + self.fee
