"""A private three-node Redis Cluster on loopback ports, for the cluster tests.

Standard library only, like :mod:`tests.support.services` (which offers it as
``scripts/services cluster-start|cluster-stop|cluster-status``). The verified
recipe (SERVICES.md): three ``redis-server --cluster-enabled yes`` nodes, then
``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes``; ready in
about 2 s. Ports are ``46381..46383`` plus ``CACHESYNC_SERVICES_PORT_OFFSET``,
so checkouts that shift their ports get their own cluster (each node also
listens on its port + 10000 for the cluster bus, hence ports below 55535).

Nodes keep an append-only file (``appendfsync always``): a node restarted
mid-stream comes back with the keys it held, so a test can check that the
stale ones among them are deleted after it returns, not just lost.

The tests start it themselves (:func:`start_cluster`, children of the test
process stopped at exit); ``cluster-start`` leaves a detached one for
development, found again by its pid files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CLUSTER_PORTS", "ClusterError", "RedisClusterNodes", "start_cluster"]

HOST = "127.0.0.1"
_OFFSET = int(os.environ.get("CACHESYNC_SERVICES_PORT_OFFSET", "0") or 0)
#: The three nodes' ports.
CLUSTER_PORTS = tuple(46381 + i + _OFFSET for i in range(3))
READY_TIMEOUT = 60.0


class ClusterError(RuntimeError):
    """The cluster could not be started or did not become ready (with the nodes' log tails)."""


def command(port: int, *args: str, timeout: float = 2.0) -> bytes | None:
    """One Redis command over RESP; the reply's payload (``None`` on any failure)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
    )
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(payload)
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if data[:1] in (b"+", b"-", b":") and data.endswith(b"\r\n"):
                    break
                if data[:1] == b"$":
                    size = int(data[1 : data.index(b"\r\n")])
                    if size < 0 or len(data) >= data.index(b"\r\n") + 2 + size + 2:
                        break
    except OSError:
        return None
    if data[:1] == b"$":
        head = data.index(b"\r\n")
        size = int(data[1:head])
        return None if size < 0 else data[head + 2 : head + 2 + size]
    return data[1:].rstrip(b"\r\n") if data[:1] in (b"+", b":") else None


def _state(port: int) -> str | None:
    info = command(port, "CLUSTER", "INFO")
    if info is None:
        return None
    for line in info.decode().splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return None


class RedisClusterNodes:
    """Three cluster nodes in *dir*; :meth:`start` creates the cluster on first use."""

    def __init__(
        self,
        dir: Path,
        ports: Sequence[int] = CLUSTER_PORTS,
        *,
        redis_server: str | None = None,
        redis_cli: str | None = None,
        detached: bool = False,
    ) -> None:
        self.dir = Path(dir)
        self.ports = tuple(ports)
        self.redis_server = redis_server or shutil.which("redis-server") or "redis-server"
        self.redis_cli = redis_cli or shutil.which("redis-cli") or "redis-cli"
        self.detached = detached
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The URL cachesync takes (with ``redis_cluster = true``): any one node."""
        return f"redis://{HOST}:{self.ports[0]}/0"

    def node_dir(self, port: int) -> Path:
        return self.dir / str(port)

    def _pidfile(self, port: int) -> Path:
        return self.node_dir(port) / "pid"

    def _command(self, port: int) -> list[str]:
        d = self.node_dir(port)
        return [
            self.redis_server, "--port", str(port), "--bind", HOST,
            "--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf"),
            "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "yes",
            "--appendfsync", "always", "--dir", str(d), "--logfile", str(d / "log"),
            "--pidfile", str(d / "pid"), "--daemonize", "no",
        ]  # fmt: skip

    def pid(self, port: int) -> int | None:
        proc = self._procs.get(port)
        if proc is not None:
            return proc.pid if proc.poll() is None else None
        try:
            pid = int(self._pidfile(port).read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def start_node(self, port: int) -> None:
        """Start one node (again) with its own data and ``nodes.conf``."""
        if self.pid(port) is not None:
            return
        if command(port, "PING") is not None:
            raise ClusterError(
                f"redis cluster: port {port} is in use by a process we did not start"
            )
        d = self.node_dir(port)
        d.mkdir(parents=True, exist_ok=True)
        self._procs[port] = subprocess.Popen(
            self._command(port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        proc = self._procs[port]

        def up() -> bool:
            if proc.poll() is not None:
                raise ClusterError(f"redis cluster: node {port} exited\n{self._tails()}")
            return command(port, "PING") == b"PONG"

        self._wait(up, f"node {port} answering PING")

    def start(self) -> None:
        """Start the three nodes; create the cluster unless their ``nodes.conf`` has it."""
        for port in self.ports:
            self.start_node(port)
        if _state(self.ports[0]) != "ok" and not (self.dir / "created").exists():
            nodes = [f"{HOST}:{p}" for p in self.ports]
            created = subprocess.run(
                [self.redis_cli, "--cluster", "create", *nodes,
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, timeout=60, check=False,
            )  # fmt: skip
            if created.returncode != 0:
                raise ClusterError(f"redis-cli --cluster create failed: {created.stdout[-500:]!r}")
            (self.dir / "created").write_text("yes\n")
        self.wait_ok()

    def wait_ok(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every node says ``cluster_state:ok``."""
        self._wait(lambda: all(_state(p) == "ok" for p in self.ports), "cluster_state:ok", timeout)

    def kill_node(self, port: int) -> None:
        """SIGKILL one node (a crash: its append-only file keeps what it had acknowledged)."""
        pid = self.pid(port)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        proc = self._procs.pop(port, None)
        if proc is not None:
            proc.wait(10)
        else:
            self._wait(lambda: self.pid(port) is None, f"node {port} gone", 10)

    def restart_node(self, port: int) -> None:
        self.kill_node(port)
        self.start_node(port)

    def stop(self) -> None:
        for port in self.ports:
            pid = self.pid(port)
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            proc = self._procs.pop(port, None)
            try:
                if proc is not None:
                    proc.wait(15)
                else:
                    self._wait(lambda p=port: self.pid(p) is None, f"node {port} stopped", 15)
            except (subprocess.TimeoutExpired, ClusterError):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def status(self) -> dict[int, str]:
        return {p: (_state(p) or "down") if self.pid(p) else "down" for p in self.ports}

    def _wait(self, ready: object, what: str, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.1)
        raise ClusterError(f"redis cluster: no {what} after {timeout:.0f}s\n{self._tails()}")

    def _tails(self) -> str:
        tails = []
        for port in self.ports:
            log = self.node_dir(port) / "log"
            if log.exists():
                tails.append(f"--- {log}\n" + "\n".join(log.read_text().splitlines()[-10:]))
        return "\n".join(tails)


def start_cluster(dir: Path) -> tuple[RedisClusterNodes, bool]:
    """The cluster of *dir*, started unless ``cluster-start`` left it running.

    Returns the nodes and whether this call started any of them (then the caller
    stops them when done). Every node's keys are flushed: tests start clean.
    """
    nodes = RedisClusterNodes(dir)
    started = any(nodes.pid(p) is None for p in nodes.ports)
    if started and not any(nodes.pid(p) for p in nodes.ports):
        shutil.rmtree(dir, ignore_errors=True)  # no node left: begin a new cluster
    nodes.start()
    for port in nodes.ports:
        command(port, "FLUSHALL")
    return nodes, started
