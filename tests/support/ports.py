"""Who holds a loopback port, and what to tell a developer whose services collide with it.

``scripts/services`` refuses to start a service on a port held by a process
it did not start (most often another checkout's services on the default
ports). The message names the holder when ``/proc`` says who it is, and the
two ways out: shift this checkout's ports, or stop the other services.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["port_holder", "port_in_use_message"]

#: The default ports, before ``CACHESYNC_SERVICES_PORT_OFFSET``.
BASE_PORTS = {"mariadb": 33061, "redis": 63791, "kafka": 19092, "es": 19200}


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(fields[9])
    return inodes


def port_holder(port: int) -> str | None:
    """``pid 123 (mariadbd, in /work/main)`` for the process listening on *port*, if visible."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    name = (entry / "comm").read_text().strip()
                    try:
                        where = f", in {os.readlink(entry / 'cwd')}"
                    except OSError:
                        where = ""
                    return f"pid {entry.name} ({name}{where})"
        except OSError:
            continue
    return None


def port_in_use_message(port: int, offset: int) -> str:
    """What ``scripts/services start`` says when *port* is taken by someone else."""
    holder = port_holder(port)
    by = f" ({holder})" if holder else ""
    other = offset + 100 if offset else 100
    shifted = ", ".join(f"{name} {base + other}" for name, base in BASE_PORTS.items())
    return (
        f"port {port} is in use by a process this checkout did not start{by}, probably another "
        f"checkout's services. To run beside it, give this checkout its own ports: "
        f"`export CACHESYNC_SERVICES_PORT_OFFSET={other}` ({shifted}) before scripts/services "
        "or scripts/test; or stop the other services with `scripts/services stop` in the "
        "checkout that started them"
    )
