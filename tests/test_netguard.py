"""The network guard holds in the test process and in the Python processes tests start."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from conftest import netguard


def test_guard_refuses_non_loopback_without_connecting():
    calls = []
    connect = netguard.guard(lambda sock, address: calls.append(address))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        for address in [("192.0.2.1", 80), ("example.org", 443)]:
            with pytest.raises(AssertionError, match="network access attempted"):
                connect(sock, address)
        connect(sock, ("127.0.0.1", 9))
    finally:
        sock.close()
    assert calls == [("127.0.0.1", 9)]  # only loopback reached the real connect


def test_this_process_is_guarded():
    assert getattr(socket.socket.connect, "_selfguide_network_guard", False)


def test_child_processes_are_guarded():
    probe = "import socket, sys; sys.exit(0 if getattr(socket.socket.connect, '_selfguide_network_guard', False) else 3)"
    assert subprocess.run([sys.executable, "-c", probe], timeout=60).returncode == 0
