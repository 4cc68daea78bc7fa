"""The sidecar's status report: honest lag from what it has read and applied."""

from __future__ import annotations

from cachesync.binlog.status import SidecarReport


def test_round_trip_through_the_checkpoint_store_form() -> None:
    report = SidecarReport(("mysql-bin.000003", 1234), 1000.5, 999.0)
    back = SidecarReport.decode(report.encode(), 999.0)
    assert back == report
    assert SidecarReport.decode("binlog:mysql-bin.000001:4", None) is None
    assert SidecarReport.store_name("shop") == "shop#status"


def test_a_fresh_report_gives_the_lag_it_reported() -> None:
    report = SidecarReport(("f", 4), reported_at=1000.0, applied_through=999.6)
    lag = report.lag_seconds(now=1003.0)
    assert lag is not None and abs(lag - 0.4) < 1e-6


def test_a_stale_report_counts_up_from_the_last_applied_moment() -> None:
    report = SidecarReport(("f", 4), reported_at=1000.0, applied_through=999.6)
    stale = 1000.0 + SidecarReport.STALE + 1
    assert report.lag_seconds(now=stale) == stale - 999.6
    assert report.lag_seconds(now=stale + 10) == stale + 10 - 999.6


def test_nothing_applied_yet_is_unknown() -> None:
    assert SidecarReport(None, 1000.0, None).lag_seconds(now=1000.0) is None
