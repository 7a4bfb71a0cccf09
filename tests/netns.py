"""Several hosts on one machine: network namespaces on a bridge, as the Kubernetes pods test
(tests/test_deploy.py) and the multi-host benchmark (benchmarks/bench_multihost.py) use them.

A switch namespace holds the bridge (10.77.0.1/24); each `host()` is a namespace with its own
loopback and one veth on that bridge (10.77.0.10+i). Nothing touches the machine's own namespace:
the switch namespace stands in for the network, and whatever must reach every host (a proxy, a
metrics scraper) runs inside it. Needs root (or CAP_NET_ADMIN) and iproute2's `ip`."""

from __future__ import annotations

import subprocess
from pathlib import Path


class PodNetwork:
    """A switch namespace with a bridge (and the Services' addresses on it), and a namespace per pod."""

    def __init__(self, tag: str):
        self.tag = tag
        self.switch = f"{tag}-sw"
        self.namespaces: list[str] = []
        self.add(self.switch)
        self.ip(self.switch, "link", "add", "br0", "type", "bridge")
        self.ip(self.switch, "link", "set", "br0", "up")
        self.ip(self.switch, "addr", "add", "10.77.0.1/24", "dev", "br0")

    @staticmethod
    def ip(ns: str, *args: str) -> None:
        subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, timeout=30)

    def add(self, ns: str) -> None:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=30)
        self.namespaces.append(ns)
        self.ip(ns, "link", "set", "lo", "up")

    def pod(self, index: int) -> tuple[str, str]:
        """A namespace (a pod, or a host) on the bridge: its name and its address."""
        ns, address = f"{self.tag}-p{index}", f"10.77.0.{10 + index}"
        self.add(ns)
        self.ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{index}", "netns", self.switch)
        self.ip(self.switch, "link", "set", f"p{index}", "master", "br0", "up")
        self.ip(ns, "addr", "add", f"{address}/24", "dev", "eth0")
        self.ip(ns, "link", "set", "eth0", "up")
        return ns, address

    host = pod  # the benchmark's word for it

    def service_address(self, index: int) -> str:
        address = f"10.77.0.{200 + index}"
        self.ip(self.switch, "addr", "add", f"{address}/24", "dev", "br0")
        return address

    def delay(self, ns: str, ms: float) -> None:
        """netem: every packet leaving `ns` through eth0 waits `ms` (a link between hosts).
        CalledProcessError where the kernel has no sch_netem."""
        self.ip(ns, "link", "show", "eth0")  # a pod's namespace, not the switch
        subprocess.run(
            ["tc", "-n", ns, "qdisc", "add", "dev", "eth0", "root", "netem", "delay", f"{ms}ms"],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def in_netns(ns: str, argv: list[str], hosts: Path | None = None) -> list[str]:
    """argv run in `ns`; with `hosts`, that file is its /etc/hosts (a bind mount inside ip's private
    mount namespace: the machine's own /etc/hosts is untouched)."""
    if hosts is None:
        return ["ip", "netns", "exec", ns, *argv]
    return [
        "ip",
        "netns",
        "exec",
        ns,
        "sh",
        "-c",
        'mount --bind "$0" /etc/hosts && exec "$@"',
        str(hosts),
        *argv,
    ]
