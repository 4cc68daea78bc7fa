"""A private Elasticsearch-API server (noida-db) for one test, which the test may freeze.

Freezing the shared server would stall every other test; a fault test that
SIGSTOPs Elasticsearch gets its own process on a free port, with its own data
directory, killed when the test ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support import services as svc


class SearchProcess:
    """``noida-db`` on a free loopback port; :meth:`freeze` is SIGSTOP, :meth:`thaw` SIGCONT."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = svc.free_port()
        self.url = f"http://{svc.HOST}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> SearchProcess:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "noida.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    svc.noida_binary(),
                    "start",
                    "--only",
                    "elasticsearch",
                    "--elasticsearch-port",
                    str(self.port),
                    "--data-dir",
                    str(data),
                    "--host",
                    svc.HOST,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        deadline = time.monotonic() + timeout
        try:
            while not _answers(self.port):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise svc.ServiceError(f"noida-db on port {self.port} did not start")
                time.sleep(0.1)
        except BaseException:  # never leave a server behind a failed start
            self.stop()
            raise
        return self

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.thaw()
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _answers(port: int) -> bool:
    try:
        return svc._es_info(port)
    except OSError:  # not listening yet
        return False


@contextlib.contextmanager
def search_process(directory: Path) -> Iterator[SearchProcess]:
    process = SearchProcess(directory).start()
    try:
        yield process
    finally:
        process.stop()
