"""The metric catalogue behind prometheus_client: closed names and labels, own registry."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from cachesync import metrics


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    metrics.reset()
    yield
    metrics.reset()


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render_prometheus())
        for s in family.samples
    }


def test_every_catalogue_entry_is_exported_with_its_type() -> None:
    families = {f.name: f.type for f in text_string_to_metric_families(metrics.render_prometheus())}
    for name, metric in metrics.CATALOGUE.items():
        exported = f"cachesync_{name}".removesuffix("_total")
        assert families.get(exported) == metric.kind, name


def test_counters_with_labels_and_their_totals() -> None:
    metrics.inc("changes_total", 3, table="shop.users")
    metrics.inc("changes_total", 2, table="shop.orders")
    metrics.inc("actions_total", 5, sink="redis", result="applied")
    samples = _samples()
    assert samples[("cachesync_changes_total", (("table", "shop.users"),))] == 3
    assert samples[("cachesync_changes_total", (("table", "shop.orders"),))] == 2
    assert samples[("cachesync_actions_total", (("result", "applied"), ("sink", "redis")))] == 5
    assert metrics.snapshot()["changes_total"] == 5


def test_batched_counters_add_up_across_threads_and_every_reader_sees_them() -> None:
    """Counters.add takes no lock: the amounts wait in a deque until read, and none is lost."""
    series = metrics.counters(
        ("keys_deleted_total", {}), ("actions_total", {"sink": "redis", "result": "applied"})
    )
    metrics.inc("keys_deleted_total", 1)  # the locked path adds to the same series

    def work() -> None:
        for _ in range(5000):
            series.add(3)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = 4 * 5000 * 3
    assert metrics.snapshot()["keys_deleted_total"] == total + 1
    series.add(2)  # waits again; a scrape folds it as snapshot() does
    samples = _samples()
    assert samples[("cachesync_keys_deleted_total", ())] == total + 3
    assert samples[("cachesync_actions_total", (("result", "applied"), ("sink", "redis")))] == (
        total + 2
    )
    assert metrics.snapshot()["actions_total"] == total + 2


def test_batched_counters_bound_what_waits_and_reset_drops_it() -> None:
    series = metrics.counters(("keys_deleted_total", {}))
    for _ in range(10 * metrics.Counters.fold_every):
        series.add(1)
    assert len(series._pending) <= metrics.Counters.fold_every  # folded as it went
    series.add(5)
    metrics.reset()
    assert metrics.snapshot()["keys_deleted_total"] == 0  # what waited went with the old state
    series.add(4)  # the same Counters keeps counting into the new state
    assert metrics.snapshot()["keys_deleted_total"] == 4


def test_names_and_labels_are_a_closed_set() -> None:
    with pytest.raises(KeyError, match="not in cachesync.metrics.CATALOGUE"):
        metrics.inc("changes")
    with pytest.raises(ValueError, match="takes labels"):
        metrics.inc("changes_total", 1)  # the table label is missing
    with pytest.raises(TypeError, match="is a histogram"):
        metrics.inc("batch_rows")


def test_histograms_and_gauges_read_at_scrape_time() -> None:
    metrics.observe("invalidation_latency_seconds", 0.02, sink="redis")
    metrics.observe("invalidation_latency_seconds", 0.7, sink="redis")
    metrics.observe("batch_rows", 12)
    lag = [0.5]
    metrics.gauge_function("source_lag_seconds", lambda: lag[0])
    samples = _samples()
    key = (("sink", "redis"),)
    assert samples[("cachesync_invalidation_latency_seconds_count", key)] == 2
    assert samples[("cachesync_invalidation_latency_seconds_sum", key)] == pytest.approx(0.72)
    assert samples[("cachesync_invalidation_latency_seconds_bucket", (("le", "0.025"), *key))] == 1
    assert samples[("cachesync_batch_rows_sum", ())] == 12
    assert samples[("cachesync_source_lag_seconds", ())] == 0.5
    lag[0] = 7.0  # the gauge is read when scraped, not when set
    assert _samples()[("cachesync_source_lag_seconds", ())] == 7.0


def test_weighted_observations_count_each_row() -> None:
    metrics.observe("invalidation_latency_seconds", 0.3, 1000, sink="elasticsearch")
    metrics.observe("invalidation_latency_seconds", 0.0, 0, sink="elasticsearch")  # nothing
    samples = _samples()
    key = (("sink", "elasticsearch"),)
    assert samples[("cachesync_invalidation_latency_seconds_count", key)] == 1000
    assert samples[("cachesync_invalidation_latency_seconds_sum", key)] == pytest.approx(300.0)
    assert samples[("cachesync_invalidation_latency_seconds_bucket", (("le", "0.25"), *key))] == 0
    assert samples[("cachesync_invalidation_latency_seconds_bucket", (("le", "0.5"), *key))] == 1000
    assert (
        samples[("cachesync_invalidation_latency_seconds_bucket", (("le", "+Inf"), *key))] == 1000
    )


def test_an_unobserved_histogram_reads_zero_and_nan_is_dropped() -> None:
    assert _samples()[("cachesync_batch_rows_count", ())] == 0
    metrics.observe("batch_rows", math.nan)
    assert _samples()[("cachesync_batch_rows_sum", ())] == 0


def test_a_gauge_nobody_measures_or_that_fails_reads_nan() -> None:
    assert math.isnan(_samples()[("cachesync_retry_backlog", ())])

    def broken() -> float:
        raise RuntimeError("database gone")

    metrics.gauge_function("outbox_backlog", broken)
    assert math.isnan(_samples()[("cachesync_outbox_backlog", ())])
    assert math.isnan(metrics.gauge("outbox_backlog"))


def test_the_registry_is_our_own_and_reset_clears_it() -> None:
    metrics.inc("batches_total")
    assert metrics.registry() is not REGISTRY
    assert REGISTRY.get_sample_value("cachesync_batches_total") is None
    before = metrics.registry()
    metrics.reset()
    assert metrics.registry() is not before
    assert _samples()[("cachesync_batches_total", ())] == 0
