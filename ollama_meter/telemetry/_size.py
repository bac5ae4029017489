"""How many bytes a span takes in an OTLP export: estimated from above, without encoding it.

What a collector takes is bounded in bytes (4 MiB a request over gRPC, by default), and a
character is 1 to 4 of them in UTF-8: bounds in spans or characters held for prompts in
ASCII and not for Chinese or emoji, whose exports were refused whole, every span in them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

log = logging.getLogger("ollama_meter.telemetry")

BATCH_SIZE = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"
"""Spans an export carries at most, if set (checked with the settings); else ometer's own."""
_said: set[str] = set()
MAX_REQUEST_BYTES = 3 * 2**20
"""Spans' bytes in one export at most: under the 4 MiB a gRPC collector takes by default,
with room for the resource, the scope and the framing."""
MAX_ANSWER = 64 * 1024
"""Bytes of a collector's answer read at most (an OTLP answer is a few bytes; an HTML error
page from a proxy fits)."""
_FIELD = 8
"""A field's tag and length, from above."""
_SPAN = 160
"""A span's ids, times, kind, flags and status, from above."""


def value_bytes(value: Any) -> int:
    """Bytes of an attribute's name or value (as :func:`exportable` leaves it) once encoded.

    On the call's path (a span is sized as it ends): the common kinds are told by type first."""
    kind = type(value)
    if kind is str:  # isascii() is known without a scan
        return (
            len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
        ) + _FIELD
    if kind in _SCALARS or value is None:
        return 2 * _FIELD
    if isinstance(value, str):
        return value_bytes(str.__str__(value))
    if isinstance(value, bytes | bytearray):
        return len(value) + _FIELD
    if isinstance(value, Mapping):
        return _FIELD + sum(value_bytes(k) + value_bytes(v) + _FIELD for k, v in value.items())
    if isinstance(value, list | tuple):
        return _FIELD + sum(value_bytes(item) + _FIELD for item in value)
    return 2 * _FIELD  # a number of a kind of its own


_SCALARS = frozenset({int, float, bool})


def _attributes(attributes: Mapping[str, Any] | None) -> int:
    return sum(value_bytes(k) + value_bytes(v) + _FIELD for k, v in (attributes or {}).items())


def span_bytes(span: ReadableSpan) -> int:
    """What ``span`` takes in an export, from above."""
    size = _SPAN + value_bytes(span.name) + _attributes(span.attributes)
    size += value_bytes(span.status.description or "")
    for event in span.events:
        size += _SPAN + value_bytes(event.name) + _attributes(event.attributes)
    for link in span.links:
        size += _SPAN + _attributes(link.attributes)
    return size


def exports(
    spans: Sequence[ReadableSpan],
    sizes: Sequence[int],
    limit: int = MAX_REQUEST_BYTES,
    most: int | None = None,
) -> Iterator[tuple[list[Any], list[int]]]:
    """``spans`` (of :func:`span_bytes` ``sizes``) in order, cut into exports of at most
    ``limit`` bytes (a span larger alone: an export of its own) and ``most`` items, each with
    its sizes."""
    part: list[ReadableSpan] = []
    its: list[int] = []
    total = 0
    for span, size in zip(spans, sizes, strict=True):
        if part and (total + size > limit or len(part) == most):
            yield part, its
            part, its, total = [], [], 0
        part.append(span)
        its.append(size)
        total += size
    if part:
        yield part, its


_POINT = 64
"""A data point's times, count, sum, min, max and framing, from above."""


def point_bytes(point: Any) -> int:
    """What a metric data point takes in an export, from above: its attributes, its buckets
    (a bound and a count, 8 bytes each, and an exponential histogram's counts) and its
    exemplars."""
    size = _POINT + _attributes(point.attributes)
    size += 2 * _FIELD * len(getattr(point, "bucket_counts", ()))
    for side in ("positive", "negative"):
        size += 2 * _FIELD * len(getattr(getattr(point, side, None), "bucket_counts", ()))
    for exemplar in getattr(point, "exemplars", ()):
        size += _POINT + _attributes(exemplar.filtered_attributes)
    return size


Placed = tuple[Any, Any, Any, Any]
"""A data point with its resource, scope and metric: what a metrics export is cut into."""


def points_of(data: Any) -> list[Placed]:
    """Each data point of ``data`` (the SDK's ``MetricsData``) in order, with where it is."""
    return [
        (resource, scope, metric, point)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    ]


def metrics_data(points: Sequence[Placed]) -> Any:
    """``points`` (of :func:`points_of`) as ``MetricsData`` again: each resource, scope and
    metric once, with its points among them."""
    from opentelemetry.sdk.metrics.export import MetricsData

    tree: dict[int, tuple[Any, dict[int, tuple[Any, dict[int, tuple[Any, list[Any]]]]]]] = {}
    for resource, scope, metric, point in points:
        scopes = tree.setdefault(id(resource), (resource, {}))[1]
        metrics = scopes.setdefault(id(scope), (scope, {}))[1]
        metrics.setdefault(id(metric), (metric, []))[1].append(point)
    return MetricsData(
        resource_metrics=[
            replace(
                resource,
                scope_metrics=[
                    replace(
                        scope,
                        metrics=[
                            replace(metric, data=replace(metric.data, data_points=its))
                            for metric, its in metrics.values()
                        ],
                    )
                    for scope, metrics in scopes.values()
                ],
            )
            for resource, scopes in tree.values()
        ]
    )


def batch_size(default: int, queue: int) -> int:
    """Spans an export carries at most: ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` (checked with the
    settings) or ometer's ``default``, and never more than the ``queue`` holds (the SDK
    refuses that), which is said once."""
    given = os.environ.get(BATCH_SIZE, "").strip()
    size = int(given) if given else default
    if size > queue and given and BATCH_SIZE not in _said:
        _said.add(BATCH_SIZE)
        log.warning(
            "%s=%d is above the queue's %d spans (OTEL_BSP_MAX_QUEUE_SIZE): "
            "exports carry %d spans at most",
            BATCH_SIZE, size, queue, queue,
        )  # fmt: skip
    return min(size, queue)
