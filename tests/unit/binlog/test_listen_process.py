"""``cachesync listen`` runs its sidecar with a short GIL switch interval (see
:data:`cachesync.binlog.commands.LISTEN_SWITCH_INTERVAL` for the measurement)."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from cachesync import cli
from cachesync.binlog import commands, sidecar


class _Recorder:
    server_id = 1
    batches = rows = 0
    saved = None

    def __init__(self) -> None:
        self.interval: float | None = None

    def run(self) -> None:
        self.interval = sys.getswitchinterval()

    def stop(self) -> None:  # pragma: no cover - no signal arrives in the test
        pass


def test_listen_runs_the_sidecar_with_the_short_switch_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = _Recorder()

    def from_settings(_cls: Any, _settings: Any, **_kw: Any) -> _Recorder:
        return recorder

    monkeypatch.setattr(sidecar.Sidecar, "from_settings", classmethod(from_settings))
    previous = sys.getswitchinterval()
    try:
        code = cli.main(["listen", "--mysql-url", "mysql://u@127.0.0.1:1/db"])
    finally:
        sys.setswitchinterval(previous)
    assert code == 0
    assert recorder.interval == pytest.approx(commands.LISTEN_SWITCH_INTERVAL)
