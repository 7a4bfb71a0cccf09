"""Helpers for the operator's surface tests: free ports and a real mosquitto broker."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from conftest import missing
from waiting import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


class Broker:
    """A real mosquitto on 127.0.0.1 (stoppable and restartable on the same port)."""

    def __init__(self, tmp: Path):
        exe = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if Path(p).is_file()), None
        )
        if exe is None:
            missing("mosquitto not installed (apt-get install -y mosquitto)")
        self.exe = str(exe)
        self.port = free_port()
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_until(lambda: accepting(self.port) or self.proc.poll() is not None, 20, "mosquitto to listen")
        assert self.proc.poll() is None, self.proc.stderr.read().decode() if self.proc.stderr else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
