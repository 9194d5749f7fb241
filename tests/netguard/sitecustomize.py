"""The tests' network guard, for the test process and for every Python process it starts.

conftest.py installs it in-process and puts this folder on PYTHONPATH with SELFGUIDE_NO_NETWORK=1,
so a child Python (the CLI, torchrun workers, the reliability harness) imports this file at start
and installs the same guard. Only loopback stays reachable: torchrun's rendezvous needs it, and
it is not the network.
"""

import ipaddress
import os
import socket

_MARK = "_selfguide_network_guard"


def _is_loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: reaching it means a DNS look-up, refused


def guard(real_connect):
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(self, address)

    setattr(connect, _MARK, True)
    return connect


def install() -> None:
    if not getattr(socket.socket.connect, _MARK, False):
        socket.socket.connect = guard(socket.socket.connect)


if os.environ.get("SELFGUIDE_NO_NETWORK") == "1":
    install()
