"""The sidecar SIGKILLed in the middle of a TRUNCATE's purge: the restart redoes it.

The purge deletes keys, then documents; Elasticsearch is made unreachable
after the keys went, so the process is killed while the purge waits. Keys
cached after the kill can only go if the restarted sidecar reads the statement
again, which it does only if the checkpoint never moved past it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.integration.binlog.harness import (
    BinlogEnv,
    FreezableProxy,
    SidecarProcess,
    binlog_env,
)

__all__ = ["binlog_env"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.services, pytest.mark.chaos]


def test_sigkill_during_a_purge_redoes_it_on_restart(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    es_port = urlsplit(env.es_url).port
    assert es_port is not None
    proxy = FreezableProxy(es_port)
    first = SidecarProcess(
        env.settings_env(
            CACHESYNC_ES_URL=f"http://127.0.0.1:{proxy.port}", CACHESYNC_ES_TIMEOUT="2"
        ),
        env.tmp / "first.log",
    ).start()
    try:
        first.wait_for_log("streaming binlog from")
        env.sql(
            "INSERT INTO users VALUES "
            + ", ".join(f"({i}, 'u{i}', 'n{i}', NULL, 0)" for i in range(1, 501))
        )
        env.sync_point()
        cached = [k for i in range(1, 501) for k in env.keys(i, f"u{i}")]
        env.set_keys(cached)
        proxy.close()  # Elasticsearch unreachable from the first sidecar from now on
        env.sql("TRUNCATE TABLE users")
        env.sql("INSERT INTO users VALUES (0, 'sentinel', 'sentinel-0', NULL, 0)")
        first.wait_for_log("purge after 'TRUNCATE TABLE users' not done", timeout=60)
        assert env.existing(cached) == []  # the keys went before the documents failed
        first.kill()
    finally:
        first.kill()
    env.set_keys(cached)  # refilled by a reader meanwhile: only a redone purge removes them
    second = SidecarProcess(env.settings_env(), env.tmp / "second.log").start()
    try:
        second.wait_for_log("streaming binlog from")
        env.sync_point()
        assert env.existing(cached) == []
        env.assert_index_matches_table()
        assert set(env.documents()) == {"0"}
        assert "TRUNCATE of" in second.output() and "Traceback" not in second.output()
        assert second.terminate() == 0
    finally:
        second.kill()
