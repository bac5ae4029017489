"""Counts in a request's (messages, tools, tool calls, parts of tools and calls), as
polynomials: how often a template's text may be written, known per model before any
request, and evaluated with a request's counts when it is admitted. Pure functions."""

from __future__ import annotations

Poly = dict[tuple[int, int, int, int], int]
"""Exponents of (messages, tools, calls, parts) to a coefficient, never negative."""
ONE: Poly = {(0, 0, 0, 0): 1}
MESSAGES: Poly = {(1, 0, 0, 0): 1}
TOOLS: Poly = {(0, 1, 0, 0): 1}
CALLS: Poly = {(0, 0, 1, 0): 1}
PARTS: Poly = {(0, 0, 0, 1): 1}
"""The members of every list and object within the request's tools and tool calls (a tool's
properties, an argument): what a ``range`` over a part of one may repeat, all of them."""


def const(value: int) -> Poly:
    return {(0, 0, 0, 0): value}


def add(a: Poly, b: Poly) -> Poly:
    out = dict(a)
    for key, value in b.items():
        out[key] = out.get(key, 0) + value
    return out


def scale(a: Poly, factor: int) -> Poly:
    return {key: value * factor for key, value in a.items()}


def mul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for (m1, t1, c1, p1), v1 in a.items():
        for (m2, t2, c2, p2), v2 in b.items():
            key = (m1 + m2, t1 + t2, c1 + c2, p1 + p2)
            out[key] = out.get(key, 0) + v1 * v2
    return out


def most(a: Poly, b: Poly) -> Poly:
    """At least either (coefficients are never negative, nor are the counts)."""
    return {key: max(a.get(key, 0), b.get(key, 0)) for key in a.keys() | b.keys()}


def evaluate(poly: Poly, counts: tuple[int, int, int, int]) -> int:
    m, t, c, p = counts
    return sum(v * m**e1 * t**e2 * c**e3 * p**e4 for (e1, e2, e3, e4), v in poly.items())
