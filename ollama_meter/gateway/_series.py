"""The values behind ``/metrics``' series: made by prometheus_client, changed by the gateway.

prometheus_client makes a value for each series a child of an instrument has (a counter's
total, a histogram's sum and each of its buckets) through ``values.ValueClass``, the one
hook it has for that. The gateway's own instruments get :class:`Unlocked` values, which a
caller changes only under its own lock, and the values a child was made with are handed
back (:func:`made`), so a call is counted by adding to them: a counter's ``inc`` and a
histogram's ``observe`` made four calls and took a lock each (fourteen a call). What a
scrape reads is the same: prometheus_client reads the values as it reads its own.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Collection, Sequence
from typing import Any

from prometheus_client import values as prometheus_values


class Unlocked:
    """A float, changed and read under its owner's lock only: prometheus_client's
    ``MutexValue`` less its lock."""

    __slots__ = ("_exemplar", "amount", "labels", "name")
    _multiprocess = False

    def __init__(
        self, kind: str, metric: str, name: str, names: Any, labels: Any, *args: Any, **kw: Any
    ) -> None:
        self.amount = 0.0
        self._exemplar: Any = None
        self.name: str = name
        self.labels: tuple[str, ...] = tuple(labels)

    def inc(self, amount: float) -> None:
        self.amount += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self.amount = value

    def set_exemplar(self, exemplar: Any) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        return self.amount

    def get_exemplar(self) -> Any:
        return self._exemplar


_making = threading.local()


def value_class(own: Collection[str]) -> Callable[..., Any]:
    """prometheus_client's ``ValueClass``: :class:`Unlocked` for the instruments named ``own``
    (noted for :func:`made` while it listens), a ``MutexValue`` for any other."""
    mutex: Callable[..., Any] = prometheus_values.MutexValue

    def value_of(kind: str, metric: str, *args: Any, **kwargs: Any) -> Any:
        if metric not in own:
            return mutex(kind, metric, *args, **kwargs)
        value = Unlocked(kind, metric, *args, **kwargs)
        noted: list[Unlocked] | None = getattr(_making, "values", None)
        if noted is not None:
            noted.append(value)
        return value

    return value_of


def made(make: Callable[[], Any]) -> tuple[Any, list[Unlocked]]:
    """What ``make()`` returns (a child of an instrument), and the values it was made with."""
    noted: list[Unlocked] = []
    _making.values = noted
    try:
        return make(), noted
    finally:
        _making.values = None


def add(value: Unlocked, amount: float) -> None:
    """A counter's ``inc(amount)``: refused below zero, as prometheus_client refuses it."""
    if amount < 0:
        raise ValueError("Counters can only be incremented by non-negative amounts.")
    value.amount += amount


class Observed:
    """A histogram child's values: ``observe`` as prometheus_client's, without its calls."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, values: Sequence[Unlocked]) -> None:
        (self.sum,) = (value for value in values if value.name.endswith("_sum"))
        self.buckets = [value for value in values if value.name.endswith("_bucket")]
        self.bounds = [float(bucket.labels[-1]) for bucket in self.buckets]  # its "le", in order

    def observe(self, amount: float) -> None:
        """Add ``amount`` to the sum and one to the first bucket it is not above (none: NaN)."""
        self.sum.amount += amount
        at = bisect_left(self.bounds, amount)
        if at < len(self.bounds) and amount <= self.bounds[at]:
            self.buckets[at].amount += 1
