"""tests/netns.py, the several-hosts-on-one-machine helper the Kubernetes pods test and
benchmarks/bench_multihost.py stand on: hosts reach each other over the bridge, and nothing is left
behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import missing
from netns import PodNetwork, in_netns

pytestmark = pytest.mark.e2e  # starts processes in the namespaces

ECHO = """
import socket, sys
s = socket.create_server((sys.argv[1], 7000))
print("listening", flush=True)
c, _ = s.accept()
c.sendall(c.recv(100).upper())
"""
CALL = """
import socket, sys
c = socket.create_connection((sys.argv[1], 7000), timeout=5)
c.sendall(b"frames")
print(c.recv(100).decode())
"""


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_hosts_talk_over_the_bridge_and_close_removes_every_namespace() -> None:
    if shutil.which("ip") is None:
        missing("iproute2's ip not installed")
    try:
        net = PodNetwork(f"fsnt{os.getpid() % 100000}")
    except subprocess.CalledProcessError as e:
        missing(f"cannot make network namespaces here: {e.stderr.decode().strip()}")
    made = set()
    try:
        (a, addr_a), (b, addr_b) = net.host(0), net.host(1)
        made = {net.switch, a, b}
        assert made <= namespaces()
        server = subprocess.Popen(
            in_netns(a, [sys.executable, "-c", ECHO, addr_a]), stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "listening"
            reply = subprocess.run(
                in_netns(b, [sys.executable, "-c", CALL, addr_a]), capture_output=True, text=True, timeout=30
            )
            assert reply.stdout.strip() == "FRAMES", reply.stderr
        finally:
            server.kill()
            server.wait()
        assert addr_a != addr_b
    finally:
        net.close()
    assert not made & namespaces()
