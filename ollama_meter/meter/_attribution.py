"""Who a call is charged to (DESIGN §3), checked once here for every entry point."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ollama_meter._names import GATEWAY_TAGS, HOLDS_KEY, MAX_USER, holds_key, name_problem
from ollama_meter.errors import ValidationError
from ollama_meter.records import TraceParent

MAX_TAGS = 64
"""The most tags one call carries: OTel keeps 128 attributes a span, ometer's own take ~30."""


@dataclass(frozen=True, slots=True)
class Attribution:
    """Tenant, department, optional user and tags. A bad name is a ValidationError, never stored."""

    tenant: str
    department: str
    user: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    parent: TraceParent | None = None
    """The caller's span of the call (W3C ``traceparent``): not whom it is charged to, but
    carried with it to every span of the call, a refusal's too."""

    def __post_init__(self) -> None:
        for what, value, limit in (
            ("tenant", self.tenant, 64),
            ("department", self.department, 64),
            ("user", self.user, MAX_USER),
        ):
            if value is None:
                continue
            problem = name_problem(value, limit=limit)
            if problem:
                raise ValidationError(f"{what} name {problem}")
        problem = tags_problem(self.tags)
        if problem:
            raise ValidationError(problem)


def tags_problem(tags: Mapping[str, str]) -> str | None:
    """What is wrong with a call's tags, or None: too many, or the first bad one."""
    if len(tags) - sum(own in tags for own in GATEWAY_TAGS) > MAX_TAGS:
        return (
            f"{len(tags)} tags: a call takes at most {MAX_TAGS} (each is stored on its "
            "span and exported with it); keep the ones reports group by"
        )
    for key, value in tags.items():
        problem = tag_problem(key, value)
        if problem:
            return problem
    return None


def tag_problem(key: object, value: object) -> str | None:
    """What is wrong with one tag, or None: a call's and a hook's tags follow the same rules."""
    if not isinstance(key, str) or not isinstance(value, str):
        wrong = value if isinstance(key, str) else key
        return f"tag {shown_key(key)}: keys and values are text, not {type(wrong).__name__}"
    if holds_key(key) or holds_key(value):
        return f"a tag {HOLDS_KEY}"
    if name_problem(key) or len(value) > 256 or not value.isprintable():
        return (
            f"tag {shown_key(key)}: keys follow the name rules and values are at most 256 "
            "printable characters"
        )
    return None


def shown_key(key: object) -> str:
    """A tag key as an error names it: its start, when it is long (it may be kilobytes)."""
    try:  # a hook's key may be any object, its repr() one that raises
        plain = str.__str__(key) if isinstance(key, str) else key
        if isinstance(plain, str) and holds_key(plain):
            return "<a gateway API key>"
        text = repr(plain)
    except Exception:
        return f"<{type(key).__name__}>"
    size = f"{len(plain):,} characters" if isinstance(plain, str) else f"{len(text):,} long"
    return text if len(text) <= 70 else f"{text[:64]}... ({size})"
