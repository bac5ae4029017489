"""Counts in a request's (messages, tools, tool calls, parts of tools and calls, whether
it has tools), as polynomials: how often a template's text may be written, known per model before any
request, and evaluated with a request's counts when it is admitted. Pure functions."""

from __future__ import annotations

Key = tuple[int, int, int, int, int]
Poly = dict[Key, int]
"""Exponents of (messages, tools, calls, parts, tooled) to a coefficient, never negative."""
ONE: Poly = {(0, 0, 0, 0, 0): 1}
MESSAGES: Poly = {(1, 0, 0, 0, 0): 1}
TOOLS: Poly = {(0, 1, 0, 0, 0): 1}
CALLS: Poly = {(0, 0, 1, 0, 0): 1}
PARTS: Poly = {(0, 0, 0, 1, 0): 1}
"""The members of every list and object within the request's tools and tool calls (a tool's
properties, an argument): what a ``range`` over a part of one may repeat, all of them."""
TOOLED: Poly = {(0, 0, 0, 0, 1): 1}
"""1 when the request has tools, else 0: what ``{{ if .Tools }}`` writes, it writes once."""


def const(value: int) -> Poly:
    return {(0, 0, 0, 0, 0): value}


def add(a: Poly, b: Poly) -> Poly:
    out = dict(a)
    for key, value in b.items():
        out[key] = out.get(key, 0) + value
    return out


def scale(a: Poly, factor: int) -> Poly:
    return {key: value * factor for key, value in a.items()}


def mul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for (m1, t1, c1, p1, h1), v1 in a.items():
        for (m2, t2, c2, p2, h2), v2 in b.items():
            key = (m1 + m2, t1 + t2, c1 + c2, p1 + p2, min(h1 + h2, 1))  # tooled is 0 or 1
            out[key] = out.get(key, 0) + v1 * v2
    return out


def most(a: Poly, b: Poly) -> Poly:
    """At least either, with or without tools (coefficients are never negative, nor are
    the counts): ``max(1, tooled)`` is 1, not ``1 + tooled``."""
    out: Poly = {}
    for base in {(*key[:4], 0) for key in a.keys() | b.keys()}:
        tooled = (*base[:4], 1)
        low = max(a.get(base, 0), b.get(base, 0))
        high = max(a.get(base, 0) + a.get(tooled, 0), b.get(base, 0) + b.get(tooled, 0))
        for key, value in ((base, low), (tooled, high - low)):
            if value:
                out[key] = value
    return out


def evaluate(poly: Poly, counts: tuple[int, int, int, int]) -> int:
    """``poly`` at (messages, tools, calls, parts); tooled is whether tools are any."""
    at = (*counts, 1 if counts[1] else 0)
    total = 0
    for key, value in poly.items():
        term = value
        for count, exponent in zip(at, key, strict=True):
            term *= count**exponent
        total += term
    return total
