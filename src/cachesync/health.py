"""``/metrics``, ``/healthz`` and ``/readyz`` of a long-running cachesync process.

One small stdlib HTTP server per process (``--metrics-port``), on a daemon
thread, so an orchestrator needs nothing but HTTP GETs and cachesync needs no
web framework:

* ``/metrics``: the Prometheus exposition of :mod:`cachesync.metrics`;
* ``/healthz`` (liveness): 200 while the process's loop is turning, that is
  its :class:`Heartbeat` is younger than a bound; 503 once it is stale, so a
  process wedged in a call that never returns gets restarted;
* ``/readyz`` (readiness): 200 when the process does its job (a sidecar: the
  leader streams with a lag under ``ready_max_lag``, or a standby waits for the
  lock with a live loop), 503 with the reason otherwise.

The answers come from a :class:`Probe`; the server does nothing but call it,
so a slow scrape can never hold up the loop it describes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import metrics
from .errors import ConfigurationError

__all__ = ["HEARTBEAT_STALE", "HealthServer", "Heartbeat", "Probe", "TurningEvent"]

log = logging.getLogger("cachesync.health")

#: Seconds without a heartbeat after which ``/healthz`` says the loop is stuck. Longer
#: than any wait the loops do on purpose (backoff caps are 30 s), so a loop that is
#: merely backing off is not restarted.
HEARTBEAT_STALE = 60.0


class Heartbeat:
    """The time a loop last went round, beaten from the loop itself (thread-safe, cheap)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        self._last = self._clock()

    def age(self) -> float:
        """Seconds since the last :meth:`beat` (or since creation)."""
        return self._clock() - self._last


class TurningEvent(threading.Event):
    """A stop event that beats a :class:`Heartbeat` whenever the loop looks at it.

    The retry consumer's and the relay's loops check their stop event every time
    round and wait on it between polls; handing them this event makes "the loop
    is turning" observable without a hook in each loop.
    """

    def __init__(self, heartbeat: Heartbeat) -> None:
        super().__init__()
        self.heartbeat = heartbeat

    def is_set(self) -> bool:
        self.heartbeat.beat()
        return super().is_set()

    def wait(self, timeout: float | None = None) -> bool:
        self.heartbeat.beat()
        try:
            return super().wait(timeout)
        finally:
            self.heartbeat.beat()


@dataclass
class Probe:
    """What the endpoints report: liveness from *heartbeat*, readiness from *ready*.

    *ready* returns ``(ready, reason)``; it is called on the server's thread and
    must only read state (no I/O that could block).
    """

    heartbeat: Heartbeat
    ready: Callable[[], tuple[bool, str]] | None = None
    stale_after: float = HEARTBEAT_STALE

    def alive(self) -> tuple[bool, str]:
        age = self.heartbeat.age()
        if age > self.stale_after:
            return False, f"loop stuck: no heartbeat for {age:.0f}s (bound {self.stale_after:g}s)"
        return True, f"loop turning (heartbeat {age:.1f}s ago)"

    def readiness(self) -> tuple[bool, str]:
        alive, reason = self.alive()
        if not alive or self.ready is None:
            return alive, reason
        return self.ready()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = metrics.render_prometheus().encode()
            self._answer(200, body, "text/plain; version=0.0.4; charset=utf-8")
        elif path in ("/healthz", "/readyz"):
            probe = self.server.probe
            ok, reason = probe.alive() if path == "/healthz" else probe.readiness()
            body = json.dumps({"ok": ok, "reason": reason}).encode() + b"\n"
            self._answer(200 if ok else 503, body, "application/json")
        else:
            self._answer(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("cachesync health: " + format, *args)  # probes every few seconds: not INFO


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    probe: Probe


class HealthServer:
    """The HTTP server of one process; :meth:`start` binds and serves on a daemon thread."""

    def __init__(self, probe: Probe, port: int, host: str = "0.0.0.0") -> None:
        self.probe = probe
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Any, probe: Probe) -> HealthServer | None:
        """A server for ``metrics_port`` (``None`` when it is not set), started."""
        port = settings.metrics_port
        if port is None:
            return None
        if not metrics.available():
            raise ConfigurationError(
                "setting metrics_port (--metrics-port / CACHESYNC_METRICS_PORT) needs "
                "prometheus_client: pip install 'cachesync[metrics]'",
                setting="metrics_port",
            )
        return cls(probe, port, settings.metrics_host).start()

    def start(self) -> HealthServer:
        try:
            server = _Server((self.host, self.port), _Handler)
        except OSError as exc:
            raise ConfigurationError(
                f"setting metrics_port (--metrics-port / CACHESYNC_METRICS_PORT): cannot "
                f"listen on {self.host}:{self.port}: {exc.strerror}",
                setting="metrics_port",
            ) from None
        server.probe = self.probe
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="cachesync-health", daemon=True
        )
        self._thread.start()
        log.info(
            "cachesync: serving /metrics, /healthz and /readyz on http://%s:%d",
            self.host,
            self.port,
        )
        return self

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
