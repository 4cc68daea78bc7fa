"""The fixed catalogue of cachesync metrics, exported with ``prometheus_client``.

Names are a closed set (:data:`CATALOGUE`) so dashboards never chase renamed
metrics; recording an unknown name, or with labels other than the catalogue's,
is a programming error. Every name is exported as ``cachesync_<name>``.

Implementation: when ``prometheus_client`` is installed (the ``metrics`` extra)
the catalogue lives in a :class:`prometheus_client.CollectorRegistry` of our
own, not the library's global one: an application that embeds cachesync keeps
its own metrics apart, and :func:`reset` gives each test a clean registry.
Without it, counters are still kept in-process (:func:`snapshot`, and a plain
:func:`render_prometheus` of the counters), histograms are dropped and
``--metrics-port`` refuses to start, naming the extra.

Gauges are read when scraped (:func:`gauge_function`): the lag of a sidecar that
is stuck inside a batch must grow on the dashboard although the sidecar itself
is not running any code that could update it.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CATALOGUE",
    "Counters",
    "Metric",
    "available",
    "counters",
    "gauge",
    "gauge_function",
    "inc",
    "observe",
    "registry",
    "render_prometheus",
    "reset",
    "snapshot",
]

log = logging.getLogger("cachesync.metrics")

#: Latency buckets (seconds): the after-commit fast path lands in the first ones, a
#: sidecar in the middle, a retry after an outage at the end.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ROWS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


@dataclass(frozen=True)
class Metric:
    """One catalogue entry: what it measures, its Prometheus type and its label names."""

    help: str
    kind: str = "counter"  # counter | gauge | histogram
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


CATALOGUE: dict[str, Metric] = {
    "changes_total": Metric("row changes read from a source", labels=("table",)),
    "actions_total": Metric(
        "actions done by a sink (one per key on redis, per document on elasticsearch); "
        "result is applied, or failed (handed to the retry path)",
        labels=("sink", "result"),
    ),
    "source_lag_seconds": Metric(
        "seconds since every change committed before then was applied (0 when caught up; "
        "grows while the sidecar is stuck or behind)",
        kind="gauge",
    ),
    "invalidation_latency_seconds": Metric(
        "seconds from a change's commit time (binlog timestamp, whole seconds on MariaDB) "
        "to its actions being applied, per sink",
        kind="histogram",
        labels=("sink",),
        buckets=_LATENCY_BUCKETS,
    ),
    "batch_rows": Metric(
        "row changes per batch applied by the sidecar", kind="histogram", buckets=_ROWS_BUCKETS
    ),
    "retry_backlog": Metric(
        "retry messages the retry consumer holds, waiting for their backoff or for a sink",
        kind="gauge",
    ),
    "outbox_backlog": Metric(
        "pending rows of the outbox table (intents and parked failures)", kind="gauge"
    ),
    "leader": Metric("1 while this sidecar leads its pipeline, 0 as a standby", kind="gauge"),
    "keys_deleted_total": Metric("cache keys deleted (UNLINK)"),
    "documents_written_total": Metric("documents indexed or deleted in Elasticsearch"),
    "apply_retries_total": Metric("immediate (tenacity) retries of a failed apply"),
    "handed_off_total": Metric("actions handed to the failure handler after immediate retries"),
    "fast_path_failures_total": Metric("after-commit deletes that failed and were handed off"),
    "retries_total": Metric("retry-queue messages re-applied"),
    "retry_succeeded_total": Metric("retry-queue messages applied successfully"),
    "dead_letters_total": Metric("actions sent to the dead-letter topic or store"),
    "poison_changes_total": Metric(
        "row changes that could not be planned, dead-lettered (the stream went on)"
    ),
    "redriven_total": Metric("dead letters sent back to the retry topic"),
    "outbox_pending_total": Metric("actions stored in the outbox because Kafka was unreachable"),
    "outbox_relayed_total": Metric("outbox entries applied or published by the relay"),
    "checkpoints_total": Metric("checkpoints saved"),
    "batches_total": Metric("batches applied by the sidecar"),
    "lane_handoffs_total": Metric("actions a stuck sink lane handed to the retry path unapplied"),
    "partial_images_total": Metric(
        "row changes logged with partial row images (binlog_row_image != FULL)"
    ),
    "partial_rereads_total": Metric("rows re-read by primary key to complete partial row images"),
    "partial_unknowable_total": Metric(
        "partial-image changes with a value that cannot be known (dead-lettered)"
    ),
    "table_statements_total": Metric("TRUNCATE/DROP/RENAME statements of watched tables purged"),
    "purged_keys_total": Metric("cache keys deleted by pattern after a TRUNCATE/DROP/RENAME"),
    "purged_documents_total": Metric("documents deleted after a TRUNCATE/DROP/RENAME"),
    "fanout_jobs": Metric(
        "related-row fan-outs being worked through in the background", kind="gauge"
    ),
    "fanout_rows_total": Metric("rows re-planned by background fan-outs"),
    "fanout_abandoned_total": Metric("background fan-outs dropped because they cannot go on"),
}

_prom: Any
_HistogramFamily: Any
_CounterFamily: Any
_go_float: Any
try:
    import prometheus_client as _prom
    from prometheus_client.metrics_core import CounterMetricFamily as _CounterFamily
    from prometheus_client.metrics_core import HistogramMetricFamily as _HistogramFamily
    from prometheus_client.utils import floatToGoString as _go_float
except ImportError:  # pragma: no cover - the `metrics` extra is not installed
    _prom = _HistogramFamily = _CounterFamily = _go_float = None


def available() -> bool:
    """Whether ``prometheus_client`` is installed (needed to serve ``/metrics``)."""
    return _prom is not None


class _Counter:
    """A Prometheus counter read at scrape time from :class:`_State`'s own series.

    ``prometheus_client.Counter`` takes its own lock and validates at every
    ``inc``; the series are kept under :data:`_lock` anyway (for
    :func:`snapshot`), so the collector only reads them when scraped. On the
    after-commit fast path the two ``inc`` calls of every commit were about a
    tenth of cachesync's cost. Exports ``<name>_total`` (no ``_created`` sample).
    """

    def __init__(self, name: str, metric: Metric, state: _State) -> None:
        self.name = name.removesuffix("_total")
        self.key = name.removeprefix("cachesync_")
        self.metric = metric
        self.state = state

    def describe(self) -> list[Any]:
        return [_CounterFamily(self.name, self.metric.help, labels=self.metric.labels)]

    def collect(self) -> list[Any]:
        family = _CounterFamily(self.name, self.metric.help, labels=self.metric.labels)
        with _lock:
            _fold_all(self.state)
            series = dict(self.state.series.get(self.key, {}))
        if not self.metric.labels and not series:  # an unlabelled counter reads 0, not nothing
            series[()] = 0
        for labels, value in sorted(series.items()):
            family.add_metric(list(labels), float(value))
        return [family]


class _Histogram:
    """A Prometheus histogram that takes weighted observations (a custom collector).

    ``prometheus_client.Histogram.observe`` costs a few microseconds per call
    with labels; at tens of thousands of rows a second, one call per row was a
    measurable share of the sidecar's CPU. Rows of a batch that share a commit
    time (binlog timestamps are whole seconds) share one observation here.
    """

    def __init__(self, name: str, metric: Metric) -> None:
        self.name = name
        self.metric = metric
        self.bounds = (*metric.buckets, math.inf)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, count: int, labels: tuple[str, ...]) -> None:
        if math.isnan(value):
            return  # no bucket holds it, and a NaN sum would poison every later scrape
        index = next(i for i, bound in enumerate(self.bounds) if value <= bound)
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = ([0] * len(self.bounds), [0.0])
            series[0][index] += count
            series[1][0] += value * count

    def describe(self) -> list[Any]:
        return [self._family()]

    def _family(self) -> Any:
        return _HistogramFamily(self.name, self.metric.help, labels=self.metric.labels)

    def collect(self) -> list[Any]:
        family = self._family()
        with self._lock:
            series = {k: (list(v[0]), v[1][0]) for k, v in self._series.items()}
        if not self.metric.labels and not series:  # an unlabelled histogram reads 0, not nothing
            series[()] = ([0] * len(self.bounds), 0.0)
        for labels, (counts, total) in sorted(series.items()):
            cumulative, buckets = 0, []
            for bound, n in zip(self.bounds, counts, strict=True):
                cumulative += n
                buckets.append(
                    (
                        "+Inf" if math.isinf(bound) else _go_float(bound),
                        cumulative,
                    )
                )
            family.add_metric(list(labels), buckets, total)
        return [family]


class _State:
    """One process's metrics: our own counters plus, if installed, a Prometheus registry."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        #: counter name -> label values (in the catalogue's order) -> count; under ``_lock``.
        self.series: dict[str, Counter[tuple[str, ...]]] = {
            name: Counter() for name, metric in CATALOGUE.items() if metric.kind == "counter"
        }
        self.gauges: dict[str, Callable[[], float]] = {}
        self.registry: Any = None
        self.collectors: dict[str, Any] = {}
        if _prom is None:
            return
        self.registry = _prom.CollectorRegistry(auto_describe=True)
        for name, metric in CATALOGUE.items():
            full = f"cachesync_{name}"
            if metric.kind == "counter":
                collector: Any = _Counter(full, metric, self)
                self.registry.register(collector)
            elif metric.kind == "gauge":
                collector = _prom.Gauge(full, metric.help, metric.labels, registry=self.registry)
                collector.set_function(self._reader(name))
            else:
                collector = _Histogram(full, metric)
                self.registry.register(collector)
            self.collectors[name] = collector

    def _reader(self, name: str) -> Callable[[], float]:
        def read() -> float:
            function = self.gauges.get(name)
            if function is None:
                return math.nan  # nothing in this process measures it
            try:
                return float(function())
            except Exception:  # a scrape must never fail on one gauge
                log.debug("cachesync: gauge %s could not be read", name, exc_info=True)
                return math.nan

        return read


_lock = threading.Lock()
_state = _State()


def _check(name: str, kind: str, labels: dict[str, str]) -> Metric:
    metric = CATALOGUE.get(name)
    if metric is None:
        raise KeyError(f"metric {name!r} is not in cachesync.metrics.CATALOGUE")
    if metric.kind != kind:
        raise TypeError(f"metric {name!r} is a {metric.kind}, not a {kind}")
    if set(labels) != set(metric.labels):
        raise ValueError(f"metric {name!r} takes labels {metric.labels}, got {tuple(labels)}")
    return metric


def inc(name: str, amount: int = 1, **labels: str) -> None:
    """Add *amount* to counter *name* (with the catalogue's *labels*)."""
    metric = _check(name, "counter", labels)
    if not amount:
        return  # an empty series would appear in the exposition
    values = tuple(labels[k] for k in metric.labels) if labels else ()
    with _lock:
        state = _state
        state.counts[name] += amount
        state.series[name][values] += amount


class Counters:
    """Counter series checked against the catalogue once, then added to without a lock.

    For code that counts the same series on every call (the after-commit fast
    path counts ``keys_deleted_total`` and ``actions_total{sink="redis",
    result="applied"}`` at every commit): :func:`inc` validates its name and
    labels and takes the lock once per series; :meth:`add` appends the amount
    to a deque (``append`` and ``popleft`` are atomic in CPython, so threads
    need no lock) and the amounts are folded into the series, under the lock,
    whenever anything reads them (:func:`snapshot`, a scrape) or
    :attr:`fold_every` of them wait. The same totals as that many :func:`inc`
    calls, so a reader cannot tell them apart. Survives :func:`reset`, which
    drops what waits.
    """

    __slots__ = ("__weakref__", "_pending", "_series")

    #: Amounts that may wait before :meth:`add` folds them itself (bounds the memory).
    fold_every = 1024

    def __init__(self, series: tuple[tuple[str, dict[str, str]], ...]) -> None:
        for name, labels in series:
            _check(name, "counter", labels)
        self._series = tuple(
            (name, tuple(labels[k] for k in CATALOGUE[name].labels)) for name, labels in series
        )
        self._pending: deque[int] = deque()
        _batched.add(self)

    def add(self, amount: int) -> None:
        """Add *amount* to every series."""
        if amount:
            pending = self._pending
            pending.append(amount)
            if len(pending) > self.fold_every:
                with _lock:
                    self._fold(_state)

    def _fold(self, state: _State) -> None:
        """Move the waiting amounts into *state*'s series (under ``_lock``)."""
        pending = self._pending
        total = 0
        while pending:
            try:
                total += pending.popleft()
            except IndexError:  # another thread folded it meanwhile
                break
        if total:
            counts, series = state.counts, state.series
            for name, values in self._series:
                counts[name] += total
                series[name][values] += total

    def _drop(self) -> None:
        self._pending.clear()


#: Every :class:`Counters`: readers fold their waiting amounts first.
_batched: weakref.WeakSet[Counters] = weakref.WeakSet()


def _fold_all(state: _State) -> None:
    """Fold every :class:`Counters`' waiting amounts into *state* (under ``_lock``)."""
    for batched in list(_batched):
        batched._fold(state)


def counters(*series: tuple[str, dict[str, str]]) -> Counters:
    """:class:`Counters` for ``(name, labels)`` *series*; raises as :func:`inc` does on a bad one."""
    return Counters(series)


def observe(name: str, value: float, count: int = 1, **labels: str) -> None:
    """Record *value* *count* times in histogram *name* (dropped without ``prometheus_client``).

    *count* lets the sidecar record a batch's rows that share one commit time
    with one call instead of one per row.
    """
    _check(name, "histogram", labels)
    collector = _state.collectors.get(name)
    if collector is not None and count > 0:
        collector.observe(value, count, tuple(labels[k] for k in CATALOGUE[name].labels))


def gauge_function(name: str, function: Callable[[], float] | None) -> None:
    """Make gauge *name* read *function* at every scrape (``None``: unset, reads NaN).

    One function per gauge and process: the process that serves ``/metrics``
    runs one loop (a sidecar, a retry consumer, a relay), and the last one to
    register wins.
    """
    _check(name, "gauge", {})
    with _lock:
        if function is None:
            _state.gauges.pop(name, None)
        else:
            _state.gauges[name] = function


def snapshot() -> dict[str, int]:
    """Current value of every counter of the catalogue, summed over its labels."""
    with _lock:
        _fold_all(_state)
        counts = _state.counts
        return {
            name: counts.get(name, 0)
            for name, metric in CATALOGUE.items()
            if metric.kind == "counter"
        }


def gauge(name: str) -> float:
    """What gauge *name* reads now (NaN when nothing in this process measures it)."""
    _check(name, "gauge", {})
    with _lock:
        function = _state.gauges.get(name)
    if function is None:
        return math.nan
    try:
        return float(function())
    except Exception:
        return math.nan


def registry() -> Any:
    """This process's :class:`prometheus_client.CollectorRegistry` (``None`` without it)."""
    return _state.registry


def reset() -> None:
    """Start over with zero counters and no gauge functions (tests)."""
    global _state
    with _lock:
        for batched in list(_batched):
            batched._drop()
        _state = _State()


def render_prometheus() -> str:
    """The Prometheus text exposition of every metric."""
    state = _state
    if state.registry is not None:
        assert _prom is not None
        text: str = _prom.generate_latest(state.registry).decode()
        return text
    lines: list[str] = []
    values: dict[str, float] = {**snapshot()}
    values.update({n: gauge(n) for n, m in CATALOGUE.items() if m.kind == "gauge"})
    for name, value in values.items():  # histograms need prometheus_client
        full = f"cachesync_{name}"
        lines += [f"# HELP {full} {CATALOGUE[name].help}", f"# TYPE {full} {CATALOGUE[name].kind}"]
        lines.append(f"{full} {value}")
    return "\n".join(lines) + "\n"
