"""``scripts/services`` on a port another checkout holds: say who, and how to run beside it."""

from __future__ import annotations

import os
import socket

from tests.support.ports import port_holder, port_in_use_message


def test_a_held_port_names_its_holder_and_both_ways_out() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert port_holder(port) is not None
        assert f"pid {os.getpid()} " in str(port_holder(port))
        message = port_in_use_message(port, 0)
    assert f"port {port} is in use by a process this checkout did not start" in message
    assert f"pid {os.getpid()}" in message and os.getcwd() in message
    assert "export CACHESYNC_SERVICES_PORT_OFFSET=100" in message
    assert "mariadb 33161" in message
    assert "scripts/services stop" in message
    assert "OFFSET=1200" in port_in_use_message(port, 1100)
